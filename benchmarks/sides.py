"""The two workspaces the data-path benchmark compares — ours (`gen3-workspace up`) and stock JupyterHub + configurable-http-proxy — and what it reads of their processes (CPU, RSS from /proc)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from benchmarks.stats import REPO, chp_command
from gen3workspace.hub.cli import free_port
from gen3workspace.hub.local import persistent_secret
from tests.support.hub import Hub

VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# The same on both sides: INFO logs (the test hub's --debug would make every server log every
# request), the hub's default auth refresh, no cap on concurrent spawns, and servers that outlive
# the hub (as the chart and Zero to JupyterHub run them) so a hub restart can be measured.
COMMON_CONFIG = """
c.JupyterHub.log_level = "INFO"
c.Spawner.debug = False
c.Authenticator.auth_refresh_age = 300
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
c.JupyterHub.cleanup_servers = False
c.JupyterHub.hub_port = {hub_port}
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 300
# Jupyter Server caps kernel output at 1 MB/s by default (the same on both sides); lifted so the
# output figure measures the path, not the cap.
import os as _os
c.Spawner.args = (["--allow-root"] if _os.geteuid() == 0 else []) + [
    "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0",
    "--ZMQChannelsWebsocketConnection.iopub_msg_rate_limit=0",
]
"""

STOCK_CONFIG = """\
import os
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.db_url = "sqlite:///{data}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{data}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{data}/jupyterhub.pid"
# Zero to JupyterHub's layout: the proxy runs on its own and outlives hub restarts.
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = {args!r}
c.Spawner.default_url = "/lab"
c.SimpleLocalProcessSpawner.home_dir_template = "{data}/home/{{username}}"
c.JupyterHub.services = [{{"name": "bench-admin", "api_token": os.environ["BENCH_ADMIN_TOKEN"]}}]
c.JupyterHub.load_roles = [{{"name": "bench-admin", "services": ["bench-admin"],
    "scopes": ["admin:users", "admin:servers", "tokens", "read:users", "servers", "access:servers", "read:hub"]}}]
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_proxy(cmd: str) -> bool:
    """The public proxy engine's processes: configurable-http-proxy (node) or nginx (master and workers)."""
    return "configurable-http-proxy" in cmd or "nginx" in cmd.split(" ", 1)[0] or cmd.startswith("nginx:")


class Side:
    """One workspace: its public URL, an admin token for the REST API, users' drives and the hub's and proxy's process ids."""

    name = ""
    spawn_body: dict[str, Any] = {}

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.hub_port = free_port()
        self.tokens: dict[str, str] = {}
        self.known_pids: set[int] = set()

    url: str
    admin_token: str

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        headers["Authorization"] = f"token {self.admin_token}"
        return requests.request(method, f"{self.url}hub/api/{path.lstrip('/')}", headers=headers, timeout=120, **kw)

    def spawn(self, names: list[str], timeout: float = 600) -> float:
        """Start the users' servers at once; seconds until all are ready."""
        began = time.monotonic()
        for name in names:
            r = self.api("POST", f"users/{name}")
            assert r.status_code in (201, 409), r.text
            r = self.api("POST", f"users/{name}/server", json=self.spawn_body)
            assert r.status_code in (201, 202, 400), r.text  # 400: already running
        pending = set(names)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for u in self.api("GET", "users", params={"state": "ready"}).json():
                pending.discard(u["name"])
            time.sleep(0.5)
        # Kept so stop() can end them even when the hub is down (they outlive it by design here).
        self.known_pids.update(self.server_pids())
        if pending:
            raise TimeoutError(f"{self.name}: {len(pending)} servers not ready in {timeout:.0f} s")
        return time.monotonic() - began

    def stop_servers(self, names: list[str]) -> None:
        for name in names:
            self.api("DELETE", f"users/{name}/server")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not [u for u in self.api("GET", "users").json() if u.get("servers")]:
                return
            time.sleep(0.5)

    def token(self, name: str) -> str:
        """The user's own JupyterHub API token (what scripts and clients send as `Authorization: token`)."""
        if name not in self.tokens:
            r = self.api("POST", f"users/{name}/tokens", json={"note": "bench", "expires_in": 86400})
            assert r.status_code in (200, 201), r.text
            self.tokens[name] = r.json()["token"]
        return self.tokens[name]

    def server_pids(self) -> list[int]:
        out = []
        for u in self.api("GET", "users").json():
            for server in (self.api("GET", f"users/{u['name']}").json().get("servers") or {}).values():
                pid = (server.get("state") or {}).get("pid")
                if pid:
                    out.append(int(pid))
        return out

    def drive(self, name: str) -> Path:
        raise NotImplementedError

    def hub_pid(self) -> int:
        raise NotImplementedError

    def proxy_pids(self) -> list[int]:
        raise NotImplementedError

    def start(self) -> "Side":
        raise NotImplementedError

    def stop_hub(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop every server (they outlive the hub by design here), then the hub and the proxy."""
        pids = set(self.known_pids)
        try:
            pids.update(self.server_pids())
            self.stop_servers([u["name"] for u in self.api("GET", "users").json()])
        except requests.RequestException:
            pass
        self.stop_hub()
        for pid in pids:
            if "jupyterhub-singleuser" not in cmdline(pid):
                continue  # gone already (its pid may belong to someone else by now)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


class Ours(Side):
    """`gen3-workspace up` (dev login), exactly as a newcomer runs it, plus the benchmark's settings."""

    name = "ours"
    spawn_body = {"flavor": "python-small"}
    restarted: subprocess.Popen[bytes] | None = None

    def start(self) -> "Ours":
        # The proxy engine outlives the hub, as on Kubernetes where it is a Deployment of its own.
        self.hub = Hub(self.tmp, extra_config=COMMON_CONFIG.format(hub_port=self.hub_port) + "c.JupyterHub.cleanup_proxy = False\n")
        self.hub.start(timeout=180)
        self.url = self.hub.url
        self.admin_token = self.hub.admin_token
        return self

    def restart_hub(self) -> None:
        """Only the JupyterHub process restarts (a hub pod restart), from the config `gen3-workspace up` wrote, with its environment."""
        data = self.hub.data_dir
        pid = self.hub_pid()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and pid_running(pid):
            time.sleep(0.05)
        if self.restarted is not None:
            self.restarted.wait(10)
        env = dict(os.environ, JUPYTERHUB_CRYPT_KEY=persistent_secret(data / "crypt_key"), CONFIGPROXY_AUTH_TOKEN=persistent_secret(data / "proxy_token"),
                   GEN3WS_DATA_DIR=str(data), GEN3WS_TEST_ADMIN_TOKEN=self.admin_token, PYTHONUNBUFFERED="1")
        log = open(self.hub.log_path, "ab")
        self.restarted = subprocess.Popen([sys.executable, "-m", "jupyterhub", "--config", str(data / "jupyterhub_config.py")],
                                          cwd=str(data), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_healthy(self.url, self.restarted)

    def stop_hub(self) -> None:
        proxies = self.proxy_pids()
        if self.restarted is not None:
            stop_process(self.restarted)
        self.hub.stop()
        for pid in proxies:  # cleanup_proxy is off: the engine is ours to stop
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def drive(self, name: str) -> Path:
        return self.hub.data_dir / "drives" / name

    def hub_pid(self) -> int:
        return int((self.hub.data_dir / "jupyterhub.pid").read_text().strip())

    def proxy_pids(self) -> list[int]:
        engine = self.hub.data_dir / "engine" / "engine.pid"
        try:
            master = int(engine.read_text().strip())
        except (OSError, ValueError):
            master = 0
        if master and pid_running(master):
            return [master, *children(master)]
        chp = self.hub.data_dir / "proxy.pid"
        try:
            return [int(chp.read_text().strip())]
        except (OSError, ValueError):
            return []

    def log(self) -> str:
        return self.hub.log()


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    """Until the hub answers through the public port again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the hub exited with {proc.returncode}")
        try:
            if requests.get(f"{url}hub/api/", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError("the hub did not come back")


class Stock(Side):
    """Stock JupyterHub (same version, from the lock) + configurable-http-proxy (from node_modules) run on its own, SimpleLocalProcessSpawner, DummyAuthenticator."""

    name = "stock"
    spawn_body: dict[str, Any] = {}

    def start(self) -> "Stock":
        self.data = self.tmp / "data"
        (self.data / "home").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.admin_token = secrets.token_hex(16)
        self.proxy_token = secrets.token_hex(16)
        cfg = self.data / "jupyterhub_config.py"
        cfg.write_text(
            STOCK_CONFIG.format(
                port=self.port, api_port=self.api_port, data=self.data,
                singleuser=str(VENV_BIN / "jupyterhub-singleuser"), args=["--allow-root"] if os.geteuid() == 0 else [],
            )
            + COMMON_CONFIG.format(hub_port=self.hub_port)
        )
        self.cfg = cfg
        self.log_file = open(self.tmp / "stock.log", "ab")
        env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=self.proxy_token)
        self.proxy = subprocess.Popen(
            [chp_command(), "--ip", "127.0.0.1", "--port", str(self.port), "--api-ip", "127.0.0.1", "--api-port", str(self.api_port),
             "--default-target", f"http://127.0.0.1:{self.hub_port}", "--error-target", f"http://127.0.0.1:{self.hub_port}/hub/error"],
            env=env, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._start_hub()
        return self

    def _start_hub(self) -> None:
        env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=self.proxy_token, BENCH_ADMIN_TOKEN=self.admin_token)
        self.proc = subprocess.Popen([str(VENV_BIN / "jupyterhub"), "-f", str(self.cfg)], cwd=str(self.data), env=env,
                                     stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(self.url, self.proc)
        except (RuntimeError, TimeoutError) as e:
            raise RuntimeError(f"stock hub: {e}:\n{self.log()[-3000:]}") from None

    _stop_proc = staticmethod(stop_process)

    def restart_hub(self) -> None:
        self._stop_proc(self.proc)
        self._start_hub()

    def stop_hub(self) -> None:
        self._stop_proc(self.proc)
        self._stop_proc(self.proxy)
        self.log_file.close()

    def drive(self, name: str) -> Path:
        return self.data / "home" / name

    def hub_pid(self) -> int:
        return self.proc.pid

    def proxy_pids(self) -> list[int]:
        return [self.proxy.pid]

    def log(self) -> str:
        return (self.tmp / "stock.log").read_text(errors="replace")


class Meter:
    """CPU (cores, averaged over the window) and peak RSS above the start of the window, of the hub and of the proxy engine, sampled from /proc."""

    def __init__(self, side: Side, interval: float = 0.2):
        self.side = side
        self.interval = interval

    def __enter__(self) -> "Meter":
        self.hub = self.side.hub_pid()
        self.proxies = self.side.proxy_pids()
        self.t0 = time.monotonic()
        self.hub_cpu0 = cpu_seconds(self.hub)
        self.proxy_cpu0 = sum(cpu_seconds(p) for p in self.proxies)
        self.hub_rss0 = rss_bytes(self.hub)
        self.proxy_rss0 = sum(rss_bytes(p) for p in self.proxies)
        self.hub_rss_peak, self.proxy_rss_peak = self.hub_rss0, self.proxy_rss0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.hub_rss_peak = max(self.hub_rss_peak, rss_bytes(self.hub))
            self.proxy_rss_peak = max(self.proxy_rss_peak, sum(rss_bytes(p) for p in self.proxies))

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.monotonic() - self.t0
        self.result = {
            "seconds": self.seconds,
            "hub_cpu_cores": (cpu_seconds(self.hub) - self.hub_cpu0) / self.seconds,
            "proxy_cpu_cores": (sum(cpu_seconds(p) for p in self.proxies) - self.proxy_cpu0) / self.seconds,
            "hub_rss_start": self.hub_rss0,
            "hub_rss_growth": self.hub_rss_peak - self.hub_rss0,
            "proxy_rss_growth": self.proxy_rss_peak - self.proxy_rss0,
        }


__all__ = ["REPO", "Meter", "Ours", "Side", "Stock"]
