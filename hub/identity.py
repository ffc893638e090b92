"""Who is calling: the identification shared by the portal launcher API and the gate in front of users' servers (a bearer Fence token, a JupyterHub API token, or the workspace session cookie)."""

from __future__ import annotations

import hashlib
import time
from typing import Any
from urllib.parse import quote, urlparse

from jupyterhub import orm
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.utils import maybe_future, url_path_join
from tornado import httputil, web
from tornado.httpclient import HTTPClientError
from traitlets import Integer, Unicode
from traitlets.config import LoggingConfigurable


class Gen3Identity(LoggingConfigurable):
    """How callers outside `<base_url>hub/` are identified; `Gen3Launcher` inherits these settings."""

    session_cookie_name = Unicode(
        "gen3ws-session",
        config=True,
        help="""Cookie that carries the hub login to the launcher API and the gate, which
        live outside `<base_url>hub/` where JupyterHub's own login cookie is not sent. Signed
        with the hub's cookie secret, HttpOnly, and subject to `JupyterHub.cookie_options`.""",
    )
    identity_cache_seconds = Integer(
        60,
        config=True,
        help="""How long a Fence access token, once verified with Fence's /user/user, is
        trusted without asking Fence again (never past the token's own expiry). The gate sees
        one bearer token per request of JupyterLab; without a cache each would call Fence.""",
    )

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._verified: dict[str, tuple[str, float]] = {}

    # --- who is calling ------------------------------------------------------------------

    async def identify(self, handler: BaseHandler | web.RequestHandler) -> tuple[Any, str]:
        """The calling hub user and how they were identified ('bearer', 'cookie' or '').

        A bearer token, when present, is authoritative: a bad one is a 401, never a fall-back
        to the cookie. Fence verifies it (`/user/user`), the workspace permission is checked as
        at login, and the user is created or updated with it as their auth_state, so their
        server's API key is minted from it.
        """
        token = bearer_token(handler.request)
        if token:
            return await self._user_for_bearer(handler, token), "bearer"
        user = user_for_session_cookie(handler, self.session_cookie_name)
        return user, ("cookie" if user else "")

    async def _user_for_bearer(self, handler: Any, token: str) -> Any:
        settings = handler.settings
        users = settings["users"]
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._verified.get(digest)
        if cached and cached[1] > time.time():
            orm_user = orm.User.find(settings["db"], cached[0])
            if orm_user is not None:
                return users[orm_user]
        authenticator = settings["authenticator"]
        if not hasattr(authenticator, "_token_to_auth_model"):
            raise web.HTTPError(401, "This workspace does not log in through Fence, so it cannot accept a Fence access token.")
        try:
            model = await authenticator._token_to_auth_model({"access_token": token, "token_type": "Bearer"})
        except HTTPClientError as e:
            if e.code == 599 or e.code >= 500:
                self.log.error("Fence unreachable while checking a portal caller's token: HTTP %s", e.code)
                raise web.HTTPError(503, "The commons' login service (Fence) is not answering; try again in a few minutes.") from None
            self.log.info("Fence refused a portal caller's access token: HTTP %s", e.code)
            raise web.HTTPError(401, "Your access token was not accepted by the commons (expired, revoked or not issued by it). Log in to the portal again.") from None
        except OSError:
            raise web.HTTPError(503, "The commons' login service (Fence) is not answering; try again in a few minutes.") from None
        except web.HTTPError:
            raise
        except Exception as e:  # a malformed userinfo must not become a 500 with a trace
            self.log.warning("Could not use Fence's answer for a portal caller's token: %s", type(e).__name__)
            raise web.HTTPError(401, "The commons' login service did not confirm who you are. Log in to the portal again.") from None
        if not model or not model.get("name"):
            raise web.HTTPError(401, "The commons' login service did not confirm who you are. Log in to the portal again.")
        name = model["name"]
        # The same admission as a login (Authenticator.get_authenticated_user): blocked users,
        # then the workspace permission, whose 403 names what is missing.
        if not await maybe_future(authenticator.check_blocked_users(name, model)):
            raise web.HTTPError(403, f"Your account {name} is blocked from the Workspace.")
        if not await authenticator.check_allowed(name, model):
            raise web.HTTPError(403, f"Your account {name} is not allowed to use the Workspace.")
        model = await maybe_future(authenticator.run_post_auth_hook(handler, model))
        orm_user = orm.User.find(settings["db"], name)
        if orm_user is not None:
            # Keep the hub login's refresh token: the portal's token comes without one.
            previous = await users[orm_user].get_auth_state() or {}
            state = model.get("auth_state")
            if isinstance(state, dict) and previous.get("refresh_token") and not state.get("refresh_token"):
                state["refresh_token"] = previous["refresh_token"]
        if isinstance(handler, BaseHandler):
            user = await handler.auth_to_user(model)
        else:
            user = await _auth_to_user(handler, model)
        exp = _token_expiry(token)
        until = time.time() + self.identity_cache_seconds
        self._verified[digest] = (user.name, min(until, exp) if exp else until)
        if len(self._verified) > 10_000:
            now = time.time()
            self._verified = {k: v for k, v in self._verified.items() if v[1] > now}
        return user


def bearer_token(request: httputil.HTTPServerRequest) -> str:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def user_for_session_cookie(handler: web.RequestHandler, name: str) -> Any:
    cookie_id = handler.get_secure_cookie(name, max_age_days=handler.settings.get("cookie_max_age_days") or 14)
    if not cookie_id:
        return None
    db = handler.settings["db"]
    orm_user = db.query(orm.User).filter(orm.User.cookie_id == cookie_id.decode("utf8", "replace")).first()
    return handler.settings["users"][orm_user] if orm_user else None


async def _auth_to_user(handler: Any, model: dict[str, Any]) -> Any:
    """BaseHandler.auth_to_user for handlers that are not JupyterHub BaseHandlers (WebSockets)."""
    users = handler.settings["users"]
    db = handler.settings["db"]
    orm_user = orm.User.find(db, model["name"])
    if orm_user is None:
        raise web.HTTPError(403, "Open the workspace page of the portal first.")
    user = users[orm_user]
    if model.get("auth_state") is not None:
        await user.save_auth_state(model["auth_state"])
    return user


def _token_expiry(token: str) -> float | None:
    from gen3workspace.hub.auth import jwt_claims

    exp = jwt_claims(token).get("exp")
    return float(exp) if isinstance(exp, (int, float)) else None



def safe_next(next_url: str, allowed_prefixes: list[str]) -> str | None:
    """A redirect target only if it is a path on this origin under one of our prefixes."""
    if not next_url or not next_url.startswith("/") or next_url.startswith("//") or "\\" in next_url:
        return None
    parsed = urlparse(next_url)
    if parsed.scheme or parsed.netloc:
        return None
    return next_url if any(parsed.path.startswith(p) for p in allowed_prefixes) else None


def cookie_path(base_url: str, prefix: str) -> str:
    """The longest path both the launcher prefix and users' servers live under."""
    common = []
    for a, b in zip(base_url.strip("/").split("/"), prefix.strip("/").split("/")):
        if a != b:
            break
        common.append(a)
    return "/" + "/".join(c for c in common if c) + ("/" if any(common) else "")



def hub_api_token(request: httputil.HTTPServerRequest) -> bool:
    """Whether the request carries a JupyterHub API token (scheme `token`; `bearer` is the portal's Fence token)."""
    return request.headers.get("Authorization", "").strip().lower().startswith("token ")



class _Gen3Handler(BaseHandler):
    """Identification by bearer token or the gen3ws session cookie instead of JupyterHub's own cookie."""

    def initialize(self, launcher: Any) -> None:
        self.launcher = launcher
        self.auth_kind = ""

    async def prepare(self) -> None:
        self.expanded_scopes = set()
        self.parsed_scopes = {}
        self._jupyterhub_user = None
        user, self.auth_kind = await self.launcher.identify(self)
        self._jupyterhub_user = user
        self._resolve_roles_and_scopes()

    def check_xsrf_cookie(self) -> None:
        # The launcher checks the portal's CSRF header itself; a user's server checks its own.
        return None

    def login_redirect(self) -> None:
        """Send a browser without identity through the hub login (inside a frame too) and back."""
        hub_prefix = self.hub.base_url
        target = url_path_join(hub_prefix, "gen3-session") + "?next=" + quote(self.request.uri or "/", safe="")
        self.redirect(target)

    def set_session_cookie_for(self, user: Any) -> None:
        path = cookie_path(self.base_url, self.launcher.prefix)
        self._set_cookie(self.launcher.session_cookie_name, user.cookie_id, encrypted=True, path=path)


class SessionHandler(_Gen3Handler):
    """Hands the hub login to the launcher and the gate (which live outside <base>/hub/), then goes back."""

    async def prepare(self) -> None:
        # Under <base>/hub/: JupyterHub's own login cookie identifies the user here.
        await BaseHandler.prepare(self)

    @web.authenticated
    def get(self) -> None:
        self.set_session_cookie_for(self.current_user)
        allowed = [self.launcher.prefix, self.base_url]
        target = safe_next(self.get_argument("next", ""), allowed) or self.launcher.prefix + "proxy/"
        self.redirect(target)

