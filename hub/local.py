"""Hub configuration of the embedded mode (`gen3-workspace up`): one machine, local servers, real proxy."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gen3workspace.hub.pages import configure_pages
from gen3workspace.spawner.grammar import check_csp_sources

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LocalSettings:
    """Everything `gen3-workspace up` decides; written to the data dir and read by the hub's config file."""

    data_dir: str
    ip: str = "127.0.0.1"
    port: int = 8000
    hub_port: int = 8081
    base_url: str = "/"
    commons_url: str = ""
    commons_name: str = ""
    client_id: str = ""
    flavor_file: str = ""
    frame_ancestors: list[str] = field(default_factory=list)
    portal_url: str = ""
    egress_proxy: str = ""
    no_proxy: list[str] = field(default_factory=list)
    issue_api_key: bool = True
    dev_groups: dict[str, list[str]] = field(default_factory=dict)
    engine_command: str = ""
    launcher_prefix: str = "/lw-workspace/"
    commons_logo: str = ""
    debug: bool = False

    @property
    def fence_login(self) -> bool:
        return bool(self.commons_url and self.client_id)

    @property
    def public_url(self) -> str:
        """Where the browser reaches the hub: the address the banner prints."""
        host = "127.0.0.1" if self.ip in ("", "0.0.0.0") else self.ip
        return f"http://{host}:{self.port}{self.base_url}"

    @property
    def oauth_callback_url(self) -> str:
        """The redirect URL the Fence client must have registered for this hub."""
        return f"{self.public_url}hub/oauth_callback"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "LocalSettings":
        return cls(**json.loads(Path(path).read_text()))


def find_engine_command() -> str:
    """nginx, the public proxy engine (Debian's, which scripts/setup.sh installs, else PATH's)."""
    for candidate in ("/usr/sbin/nginx",):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("nginx") or ""


def engine_pid(prefix: Path) -> int | None:
    """The pid of the nginx master whose pid file is in the engine folder `prefix`, if it runs.
    A stale pid file may name a recycled pid: only an nginx is ours."""
    try:
        pid = int((prefix / "engine.pid").read_text().strip())
        return pid if b"nginx" in Path(f"/proc/{pid}/cmdline").read_bytes() else None
    except (OSError, ValueError):
        return None


def engine_running(data_dir: Path) -> bool:
    """Whether this data dir's engine outlived its hub (JupyterHub.cleanup_proxy off): the
    port is then the engine's own, and the new hub reloads it."""
    return engine_pid(data_dir / "engine") is not None


def persistent_secret(path: Path, nbytes: int = 32) -> str:
    """A hex secret kept in the data dir (mode 0600), so restarts keep cookies and auth_state readable."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_hex(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def csp_header(frame_ancestors: list[str]) -> str:
    # Imported here: the CLI imports this module and must start without the schema validator.
    from gen3workspace.spawner.grammar import check_csp_sources

    # Checked again here: settings.json is a file someone could edit by hand.
    return "frame-ancestors " + " ".join(["'self'", *check_csp_sources(frame_ancestors, "frame_ancestors")])


def configure(c: Any, settings: LocalSettings) -> None:
    """Fill a JupyterHub config object for the embedded mode."""
    data = Path(settings.data_dir)
    c.JupyterHub.ip = settings.ip
    c.JupyterHub.port = settings.port
    c.JupyterHub.base_url = settings.base_url
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = settings.hub_port
    c.JupyterHub.db_url = f"sqlite:///{data / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(data / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(data / "jupyterhub.pid")
    c.JupyterHub.cleanup_servers = True
    c.JupyterHub.cleanup_proxy = True
    c.Gen3Proxy.prefix_dir = str(data / "engine")
    if settings.engine_command:
        c.Gen3Proxy.command = settings.engine_command
    if settings.debug:
        c.JupyterHub.log_level = "DEBUG"
        c.Spawner.debug = True

    csp = csp_header(settings.frame_ancestors)
    c.JupyterHub.tornado_settings = {"headers": {"Content-Security-Policy": csp}}
    # Imported here: the CLI loads this module and must start without importing JupyterHub.
    from gen3workspace.hub.launcher import configure_portal

    configure_portal(c, settings.launcher_prefix)

    c.JupyterHub.spawner_class = "gen3-local"
    c.Gen3LocalSpawner.data_dir = str(data)
    c.Gen3LocalSpawner.issue_api_key = settings.issue_api_key
    c.Gen3LocalSpawner.egress_proxy = settings.egress_proxy
    c.Gen3LocalSpawner.no_proxy = settings.no_proxy
    c.Gen3LocalSpawner.frame_ancestors = settings.frame_ancestors
    c.Gen3LocalSpawner.start_timeout = 120
    c.Gen3LocalSpawner.http_timeout = 120
    if settings.flavor_file:
        c.Gen3LocalSpawner.flavor_file = settings.flavor_file
    if settings.commons_url:
        c.Gen3LocalSpawner.commons_url = settings.commons_url

    template_vars: dict[str, Any] = {}
    if settings.fence_login:
        from gen3workspace.hub.auth import add_fence_admin_role

        c.JupyterHub.authenticator_class = "gen3"
        add_fence_admin_role(c)
        c.Gen3OAuthenticator.commons_url = settings.commons_url
        c.Gen3OAuthenticator.client_id = settings.client_id
        # The secret comes from the environment only, never from a file on disk or argv.
        c.Gen3OAuthenticator.client_secret = os.environ.get("GEN3_CLIENT_SECRET", "")
        c.Gen3OAuthenticator.oauth_callback_url = settings.oauth_callback_url
        if settings.commons_name:
            c.Gen3OAuthenticator.commons_name = settings.commons_name
        if settings.portal_url:
            c.Gen3OAuthenticator.post_logout_url = settings.portal_url
    else:
        # Imported here: it pulls in JupyterHub, which `gen3-workspace up` itself never needs.
        from gen3workspace.hub.devauth import BANNER

        c.JupyterHub.authenticator_class = "gen3-dev"
        c.DevAuthenticator.dev_groups = settings.dev_groups
        template_vars.update(gen3_dev_login=True, gen3_dev_banner=BANNER)
        if settings.portal_url:
            c.DevAuthenticator.logout_redirect_url = settings.portal_url
    configure_pages(c, settings.commons_name, logo_url=settings.commons_logo, portal_url=settings.portal_url, **template_vars)
