"""DevAuthenticator: the embedded mode's loud, localhost-only login for trying the workspace without Fence."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from jupyterhub.auth import Authenticator
from jupyterhub.handlers import LogoutHandler
from tornado import web
from traitlets import Dict, List, Unicode, default

BANNER = "DEV LOGIN — no Fence, no password, localhost only. Never expose this hub."


class DevLogoutHandler(LogoutHandler):
    """Logout that can send the user back to the portal, like the Fence logout does."""

    async def render_logout_page(self) -> None:
        if self.authenticator.logout_redirect_url:
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
        remote = handler.request.remote_ip or ""
        try:
            loopback = ipaddress.ip_address(remote).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            self.log.warning("Dev login refused for a request from %s", remote)
            raise web.HTTPError(403, "The dev login only accepts logins from this machine.")
        name = (data or {}).get("username", "").strip()
        if not name or not re.fullmatch(r"[\w.@+-]{1,64}", name):
            return None
        groups = set(self.dev_groups.get("*", [])) | set(self.dev_groups.get(name, []))
        return {"name": name, "groups": sorted(groups)}

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [*super().get_handlers(app), (r"/logout", DevLogoutHandler)]
