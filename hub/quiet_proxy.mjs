// Runs configurable-http-proxy (argv[2]) with its own arguments, minus one kind of noise.
//
// When a browser goes away (a closed tab, JupyterLab's WebSockets) its connection is reset, and
// configurable-http-proxy reports the reset on a socket it leaves without an error listener as
// "Uncaught Exception: read ECONNRESET" with a stack: nothing is wrong and there is nothing to
// act on, but the operator reads a crash. Every other uncaught exception is still logged by
// configurable-http-proxy's own handler. (The embedded mode starts the proxy through this until
// the proxy engine replaces configurable-http-proxy.)
import { pathToFileURL } from "node:url";

const bin = process.argv[2];
process.argv.splice(2, 1);
const on = process.on.bind(process);
process.on = (event, listener) => {
  if (event !== "uncaughtException") return on(event, listener);
  return on(event, (error, ...rest) => (error && error.code === "ECONNRESET" ? undefined : listener(error, ...rest)));
};
await import(pathToFileURL(bin).href);
