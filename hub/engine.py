"""The public proxy engine: nginx with auth_request carries every byte, the hub only decides (`Gen3Proxy`, `JupyterHub.proxy_class`).

Routes are not pushed anywhere: nginx sends everything under `<base>/user/` through the hub's
decision (`gen3workspace.hub.gate.RouteDecisionHandler`), which names the upstream, and
everything else to the hub. So `add_route`/`delete_route` only keep JupyterHub's view of the
table. In the embedded mode (`should_start`) this class renders the config and runs nginx;
in the chart nginx is a Deployment of its own, rendered from the same file
(hub/engine.conf, which the chart reads through its link files/engine.conf).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jupyterhub.proxy import Proxy
from traitlets import Integer, Unicode, default, validate

from gen3workspace.hub.launcher import Gen3Launcher

TEMPLATE = Path(__file__).resolve().parent / "engine.conf"
PLACEHOLDERS = (
    "USER_DIRECTIVE",
    "ACCESS_LOG",
    "BASE_URL",
    "HUB_PREFIX",
    "HUB",
    "LISTEN",
    "FORWARDED_PROTO",
    "FORWARDED_HOST",
    "DECISION_CACHE_SECONDS",
    "GENERATION",
)


def render(
    *,
    listen: str,
    hub: str,
    base_url: str,
    hub_prefix: str,
    public_url: str = "",
    decision_cache_seconds: int = 2,
    access_log: bool = False,
    user: str = "",
    generation: str = "chart",
) -> str:
    """The engine's nginx.conf from the one template. `public_url`: the commons' address users see
    (X-Forwarded-Proto/Host come from it, so servers' cookies are Secure behind TLS)."""
    public = urlparse(public_url) if public_url else None
    values = {
        "USER_DIRECTIVE": f"user {user};" if user else "",
        "ACCESS_LOG": "/dev/stdout gen3" if access_log else "off",
        "BASE_URL": base_url,
        "HUB_PREFIX": hub_prefix,
        "HUB": hub,
        "LISTEN": listen,
        "FORWARDED_PROTO": public.scheme if public and public.scheme else "$scheme",
        "FORWARDED_HOST": public.netloc if public and public.netloc else "$http_host",
        "DECISION_CACHE_SECONDS": str(int(decision_cache_seconds)),
        "GENERATION": generation,
    }
    text = TEMPLATE.read_text()
    for name in PLACEHOLDERS:
        text = text.replace(f"@{name}@", values[name])
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise ValueError(f"engine.conf has placeholders render() does not fill: {sorted(set(left))}")
    return text


class Gen3Proxy(Proxy):
    """nginx in front of the hub and users' servers; the hub decides, nginx streams.

    It also installs the launcher's and the decision's handlers in the hub's web application:
    JupyterHub serves extra handlers only under `<base>/hub/`, and the portal calls
    `/lw-workspace/...`. That happens the first time the hub asks for its routes, which it
    does before it starts listening.
    """

    decision_cache_seconds = Integer(
        2,
        config=True,
        help="""How long the engine reuses the hub's "allowed" answer (caller credentials,
        target server, Origin and Upgrade the same; denials are never reused) without asking
        again. The answer names the server's address, which changes when the server restarts
        and may then belong to another user's new server: keep this short. While the hub
        cannot answer (a restart), allowed answers up to 10 minutes old keep serving, since
        no server can start or move without the hub. The embedded engine's; in the chart it
        is `proxy.decisionCacheSeconds`.""",
    )

    @validate("decision_cache_seconds")
    def _check_cache_seconds(self, proposal: Any) -> int:
        value = int(proposal.value)
        if not 1 <= value <= 60:
            raise ValueError(f"Gen3Proxy.decision_cache_seconds must be between 1 and 60 seconds, not {value}")
        return value

    command = Unicode(
        config=True,
        help="nginx binary for the embedded engine (with http_auth_request_module). Default: Debian's /usr/sbin/nginx, else nginx on PATH.",
    )

    @default("command")
    def _default_command(self) -> str:
        from gen3workspace.hub.local import find_engine_command

        return find_engine_command()

    prefix_dir = Unicode(
        config=True,
        help="""Folder of the embedded engine: its nginx.conf, pid file, temp and decision
        cache (which holds callers' cookies, so it is created 0700). Default: engine/ in the
        hub's working directory.""",
    )

    @default("prefix_dir")
    def _default_prefix_dir(self) -> str:
        return str(Path.cwd() / "engine")

    _installed = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._routes: dict[str, dict[str, Any]] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._generation = 0

    # --- the hub's handlers -----------------------------------------------------------

    @property
    def launcher(self) -> Gen3Launcher:
        if not hasattr(self, "_launcher"):
            self._launcher = Gen3Launcher(parent=self.app, config=self.app.config if self.app else None, log=self.log)
        return self._launcher

    def install_handlers(self) -> None:
        app = self.app
        if self._installed or app is None or getattr(app, "tornado_application", None) is None:
            return
        rules = self.launcher.handlers(app.base_url, app.hub.base_url)
        app.tornado_application.add_handlers(".*$", rules)
        self._installed = True
        self.log.info(
            "Gen3 launcher API at %s; users' servers reach only their owners through the engine's decision at %sgen3-route",
            self.launcher.prefix if self.launcher.enabled else "(off)",
            app.hub.base_url,
        )

    # --- JupyterHub's route table (nginx needs none) ---------------------------------

    async def add_route(self, routespec: str, target: str, data: dict[str, Any]) -> None:
        known = self._routes.get(routespec)
        self._routes[routespec] = {"routespec": routespec, "target": target, "data": dict(data)}
        if known is None or known["target"] != target:
            self._forget_decisions()

    async def delete_route(self, routespec: str) -> None:
        if self._routes.pop(routespec, None) is not None:
            self._forget_decisions()

    def _forget_decisions(self) -> None:
        """A server started, moved or stopped: its old address may soon be another user's
        server, so the embedded engine stops reusing any answer from before (a new cache-key
        generation, loaded by a graceful reload; open connections are kept). JupyterHub removes
        a route before it stops the server, so this happens before the address is freed."""
        self._generation += 1
        pid = self._running_pid() if self.should_start else None
        if pid:
            self._paths()[1].write_text(self.config_text())
            os.kill(pid, signal.SIGHUP)

    async def get_all_routes(self) -> dict[str, Any]:
        self.install_handlers()
        return {k: dict(v) for k, v in self._routes.items()}

    # --- the embedded engine ----------------------------------------------------------

    def config_text(self) -> str:
        app = self.app
        bind = urlparse(self.public_url)
        host = bind.hostname or "0.0.0.0"
        listen = f"{'[' + host + ']' if ':' in host else host}:{bind.port or 80}"
        hub = urlparse(self.hub.host)
        return render(
            listen=listen,
            hub=f"{hub.hostname}:{hub.port}",
            base_url=app.base_url,
            hub_prefix=self.hub.base_url,
            public_url=getattr(app, "public_url", "") or "",
            decision_cache_seconds=self.decision_cache_seconds,
            access_log=app.log_level <= 10 if isinstance(app.log_level, int) else False,
            user=self._worker_user(),
            generation=f"{os.getpid()}-{self._generation}",
        )

    def _worker_user(self) -> str:
        """As root, nginx's workers drop to nobody, who must be able to reach the prefix to
        write temp files and the cache; where a parent folder is closed to others (a 0700
        home or data dir) they keep the hub's own user, which serves local servers anyway."""
        if os.geteuid() != 0:
            return ""
        for parent in Path(self.prefix_dir).resolve().parents:
            if not parent.stat().st_mode & 0o001:
                self.log.info("Engine workers run as root: %s is closed to other users", parent)
                return "root root"
        return "nobody nogroup"

    def _paths(self) -> tuple[Path, Path, Path]:
        prefix = Path(self.prefix_dir)
        return prefix, prefix / "nginx.conf", prefix / "engine.pid"

    def _prepare_dirs(self) -> None:
        prefix, conf, _ = self._paths()
        prefix.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(prefix, 0o700)
        conf.write_text(self.config_text())
        for sub in ("temp", "cache"):
            (prefix / sub).mkdir(mode=0o700, exist_ok=True)
        if self._worker_user().startswith("nobody"):
            # nginx's workers run as nobody when the master is root: they write the temp
            # files and the decision cache, and need to pass through the prefix to reach them.
            import grp
            import pwd

            uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
            os.chmod(prefix, 0o711)
            for sub in ("temp", "cache"):
                for root, dirs, files in os.walk(prefix / sub):
                    for p in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
                        os.chown(p, uid, gid)

    def _running_pid(self) -> int | None:
        from gen3workspace.hub.local import engine_pid

        return engine_pid(Path(self.prefix_dir))

    def _nginx(self, *args: str) -> list[str]:
        prefix, conf, _ = self._paths()
        return [self.command, "-p", str(prefix) + "/", "-c", str(conf), "-e", "stderr", *args]

    async def start(self) -> None:
        if not self.command:
            raise RuntimeError("nginx not found: run the set-up (scripts/setup.sh) or set Gen3Proxy.command")
        self._prepare_dirs()
        check = subprocess.run(self._nginx("-t", "-q"), capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"the engine's nginx config does not load: {check.stderr.strip()}")
        pid = self._running_pid()
        if pid:
            # The engine outlived a hub restart (as configurable-http-proxy may): keep its
            # connections, open WebSockets included, and load the new config.
            self.log.info("Engine (nginx) still running at pid %s: reloading its config", pid)
            os.kill(pid, signal.SIGHUP)
            return
        self.log.info("Starting the engine (nginx) at %s", self.public_url)
        # Its own session: a Ctrl-C to the hub must not cut users' connections before the
        # hub decides to stop it.
        self._process = subprocess.Popen(self._nginx(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._relay_log, args=(self._process.stdout,), daemon=True, name="engine-log").start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the engine (nginx) exited at start with {self._process.returncode}; see the log above")
            if self._running_pid():
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("the engine (nginx) did not write its pid file in 20 s")

    def _relay_log(self, stream: Any) -> None:
        """nginx's error (and, with --debug, access) log into the hub's log, scrubbed: its error
        lines quote the request line, `?token=` included. If the hub goes first, nginx's
        writes fail quietly (it ignores SIGPIPE) and it keeps serving."""
        from gen3workspace.hub.logscrub import scrub

        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.log.info("engine: %s", scrub(line))

    async def stop(self) -> None:
        pid = self._running_pid()
        if not pid:
            return
        # QUIT: finish open requests; TERM if that takes too long.
        for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGTERM, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self._process is not None:
                    if self._process.poll() is not None:
                        return
                else:
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        return
                await asyncio.sleep(0.1)
        self.log.warning("The engine (nginx, pid %s) did not stop", pid)
