"""Runs a real JupyterHub (behind its real proxy engine, nginx) through `gen3-workspace up` for tests."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

import requests

from .fence import FenceStandIn, free_port

if TYPE_CHECKING:
    from .realfence import RegisteredClient

REPO = Path(__file__).resolve().parents[2]

TEST_CONFIG = """\
# Test-only additions: an admin service token for the REST API, and fast auth refresh.
import os
_services = list(c.JupyterHub.services) if "services" in c.JupyterHub else []
_roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
c.JupyterHub.services = _services + [{"name": "test-admin", "api_token": os.environ["GEN3WS_TEST_ADMIN_TOKEN"]}]
c.JupyterHub.load_roles = _roles + [{
    "name": "test-admin",
    "scopes": ["admin:users", "admin:auth_state", "admin:servers", "admin:groups", "admin:server_state", "read:users", "tokens", "servers", "access:servers", "read:hub"],
    "services": ["test-admin"],
}]
# load_subconfig merges this file's own config over the main one, and a list is replaced, not
# extended: the main config's roles are gone from `_roles` here, so define the Fence admins'
# again (tests/unit/test_local_and_dev.py checks that `gen3-workspace up` defines it).
from gen3workspace.hub.auth import add_fence_admin_role
add_fence_admin_role(c)
c.Authenticator.auth_refresh_age = 1
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
"""


# Every hub log of the session, for the session-wide check that no secret was logged (tests/conftest.py).
HUB_LOGS: list[Path] = []


class Hub:
    """A `gen3-workspace up` process, its log, and helpers to log users in and call the REST API."""

    def __init__(self, tmp: Path, fence: "FenceStandIn | RegisteredClient | None" = None, extra_args: list[str] | None = None, extra_config: str = ""):
        self.tmp = tmp
        self.fence = fence
        self.port = free_port()
        self.data_dir = tmp / "data"
        self.log_path = tmp / "hub.log"
        self.admin_token = secrets.token_hex(16)
        self.extra_args = extra_args or []
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = "/"
        for i, a in enumerate(self.extra_args):
            if a == "--base-url":
                self.base_url = "/" + self.extra_args[i + 1].strip("/") + "/"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_url}"

    ready_marker = "Gen3 Workspace is running"

    def command(self, test_config: Path, env: dict[str, str]) -> list[str]:
        """`gen3-workspace up`, as a newcomer runs it, plus the test-only config."""
        args = [sys.executable, "-m", "gen3workspace.hub.cli", "up", "--data-dir", str(self.data_dir), "--port", str(self.port), "--extra-config", str(test_config), "--debug"]
        if self.fence:
            args += ["--commons-url", self.fence.url, "--client-id", self.fence.client_id]
            env["GEN3_CLIENT_SECRET"] = self.fence.client_secret
        return args + self.extra_args

    def start(self, timeout: float = 90) -> "Hub":
        cfg = self.tmp / "test_config.py"
        cfg.write_text(TEST_CONFIG + textwrap.dedent(self.extra_config))
        env = dict(os.environ, GEN3WS_TEST_ADMIN_TOKEN=self.admin_token, PYTHONUNBUFFERED="1")
        args = self.command(cfg, env)
        # The log is appended to across restarts: wait for this start's marker, not an old one.
        seen = self.log().count(self.ready_marker)
        self._log = open(self.log_path, "ab")
        HUB_LOGS.append(self.log_path)
        # Own session so a test can signal the whole group like a terminal's Ctrl-C would.
        self.proc = subprocess.Popen(args, cwd=str(REPO), env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if self.log().count(self.ready_marker) > seen:
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"hub did not start in {timeout}s:\n{self.log()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- REST API as the admin service ------------------------------------------------

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        headers["Authorization"] = f"token {self.admin_token}"
        return requests.request(method, f"{self.url}hub/api/{path.lstrip('/')}", headers=headers, timeout=60, **kw)

    def user_model(self, name: str) -> dict[str, Any]:
        r = self.api("GET", f"users/{name}")
        r.raise_for_status()
        return r.json()

    def wait_for_server(self, name: str, ready: bool = True, timeout: float = 120) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            model = self.user_model(name)
            server = model.get("servers", {}).get("")
            if ready and server and server.get("ready"):
                return model
            if not ready and not server:
                return model
            time.sleep(0.5)
        raise TimeoutError(f"server of {name} not {'ready' if ready else 'stopped'} in {timeout}s")

    # --- browser-less login through Fence ---------------------------------------------

    def login(self, username: str, session: requests.Session | None = None) -> tuple[requests.Session, requests.Response]:
        """Full OAuth round trip: hub → Fence authorize → hub callback; returns the last response."""
        assert self.fence is not None
        s = session or requests.Session()
        # Real Fence's mocked identity provider (and the stand-in) log in whom this cookie names.
        s.cookies.set("dev_login", username, domain="127.0.0.1", path="/user")
        self.fence.auto_login = username
        try:
            r = s.get(f"{self.url}hub/oauth_login", timeout=60)
        finally:
            self.fence.auto_login = None
        return s, r

    def authorize_only(self, username: str) -> tuple[requests.Session, str]:
        """Stop halfway: the callback URL (with code and state) the browser would be sent to."""
        assert self.fence is not None
        s = requests.Session()
        r = s.get(f"{self.url}hub/oauth_login", allow_redirects=False, timeout=30)
        assert r.status_code == 302, r.text
        self.fence.auto_login = username
        try:
            r = s.get(r.headers["Location"], allow_redirects=False, timeout=30)
        finally:
            self.fence.auto_login = None
        assert r.status_code == 302, r.text
        return s, r.headers["Location"]


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}


def path_of(url: str) -> str:
    return urlparse(url).path
