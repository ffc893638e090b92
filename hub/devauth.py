"""DevAuthenticator: the embedded mode's loud, localhost-only login for trying the workspace without Fence."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Any

from jupyterhub.auth import Authenticator
from jupyterhub.handlers import LoginHandler, LogoutHandler
from tornado import web
from traitlets import Dict, List, Unicode, default

from gen3workspace.hub.identity import WorkspaceLoginMixin, WorkspaceLogoutMixin
from gen3workspace.hub.pages import leave_frame

BANNER = "DEV LOGIN — no Fence, no password, localhost only. Never expose this hub."


USERNAME_RULE = "letters of any language, digits and . _ @ + -, up to 64 characters"


def dev_username(typed: str) -> str:
    """The typed name as the dev login's username (Unicode NFC, so one name typed two ways is one user).

    Letters of every script are accepted: JupyterHub lowercases names, and the spawners make
    folder and Kubernetes names from any name. A name outside the rule is refused with the rule,
    shown on the login form (JupyterHub puts a login's HTTP error there).
    """
    name = unicodedata.normalize("NFC", typed or "").strip()
    if not re.fullmatch(r"[\w.@+-]{1,64}", name) or set(name) == {"."}:
        shown = f"“{name[:40]}” is not" if name else "An empty name is not"
        raise web.HTTPError(400, f"{shown} a dev login username: use {USERNAME_RULE} (no spaces, no slashes).")
    return name


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip()).is_loopback
    except ValueError:
        return False


def _client_addresses(request: Any) -> list[str]:
    """The socket peer and the hop the proxy vouches for, ignoring headers a client can forge.

    Tornado (xheaders on in JupyterHub) lets a client's X-Real-Ip override remote_ip; the
    proxy appends the real peer as the last X-Forwarded-For entry, which a client cannot.
    """
    peer = getattr(request, "_orig_remote_ip", None) or request.remote_ip or ""
    forwarded = [h for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    return [peer, forwarded[-1]] if forwarded else [peer]


class DevLoginHandler(WorkspaceLoginMixin, LoginHandler):
    """JupyterHub's login form; the workspace session starts with the login."""


class DevLogoutHandler(WorkspaceLogoutMixin, LogoutHandler):
    """Logout (of the workspace session too) that can send the user back to the portal, like the Fence logout does."""

    async def render_logout_page(self) -> None:
        if self.authenticator.logout_redirect_url:
            if not leave_frame(self, self.authenticator.logout_redirect_url):
                self.redirect(self.authenticator.logout_redirect_url)
            return
        await super().render_logout_page()


class DevAuthenticator(Authenticator):
    """Logs in any username typed on the login page, and only from this machine."""

    dev_groups = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        config=True,
        help="Groups given to dev-login users, by username (e.g. {'alice': ['gpu-users']}); '*' applies to everyone.",
    )

    logout_redirect_url = Unicode(
        "",
        config=True,
        help="Where the browser goes after logout (e.g. the data portal); empty: JupyterHub's logout page.",
    )

    @default("allow_all")
    def _allow_all_default(self) -> bool:
        return True

    @default("manage_groups")
    def _manage_groups_default(self) -> bool:
        return True

    @default("enable_auth_state")
    def _enable_auth_state_default(self) -> bool:
        return False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.log.warning(BANNER)

    async def authenticate(self, handler: web.RequestHandler, data: dict[str, str]) -> dict[str, Any] | None:
        if not all(_loopback(a) for a in _client_addresses(handler.request)):
            remote = handler.request.remote_ip
            self.log.warning("Dev login refused for a request from %s", remote)
            raise web.HTTPError(403, "The dev login only accepts logins from this machine.")
        name = dev_username((data or {}).get("username", ""))
        groups = set(self.dev_groups.get("*", [])) | set(self.dev_groups.get(name, []))
        return {"name": name, "groups": sorted(groups)}

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [(r"/login", DevLoginHandler), (r"/logout", DevLogoutHandler)]
