"""Who is calling: the identification shared by the portal launcher API and the gate in front of users' servers (a bearer Fence token, a JupyterHub API token, or the workspace session cookie)."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlparse

from jupyterhub import orm
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.handlers.pages import TokenPageHandler
from jupyterhub.utils import url_path_join
from tornado import httputil, web
from tornado.httpclient import HTTPClientError
from tornado.routing import Matcher
from traitlets import Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from gen3workspace.hub.fenceanswers import jwt_claims

# The note of the hub API token row behind each `gen3ws-session` cookie. The row carries the
# browser's JupyterHub session id, so JupyterHub's own logout (`clear_login_cookie` deletes the
# tokens of the session it ends) ends this cookie too, and a copy of it stops working; being a
# row in the hub database, the session survives a hub restart. It gets no scopes of its own
# (only the name-and-groups reading JupyterHub gives every token): the cookie names its user
# here, it is never a key to the hub's API.
SESSION_NOTE = "Workspace browser session (gen3ws-session cookie)"
MAX_SESSIONS = 50  # per user; beyond it the oldest session ends
# Query parameters that are credentials: never carried into a `next=` URL (where the access log,
# the browser history and the Referer header would keep them).
SECRET_PARAMS = frozenset({"token", "_xsrf", "access_token", "code", "state"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FenceBearer:
    """The `data` of a login made with a bearer Fence access token (see `Gen3Identity.identify`).

    A class, not a dict, so that no login form can pose as one: `Authenticator.authenticate`
    receives form fields as a dict of strings.
    """

    __slots__ = ("token",)

    def __init__(self, token: str):
        self.token = token

    def __repr__(self) -> str:
        return "FenceBearer([redacted])"


class Gen3Identity(LoggingConfigurable):
    """How callers outside `<base_url>hub/` are identified; `Gen3Launcher` inherits these settings."""

    session_cookie_name = Unicode(
        "gen3ws-session",
        config=True,
        help="""Cookie that carries the hub login to the launcher API and the gate, which
        live outside `<base_url>hub/` where JupyterHub's own login cookie is not sent. Set at
        login (and by `<base_url>hub/gen3-session`), signed with the hub's cookie secret,
        HttpOnly, subject to `JupyterHub.cookie_options`. It names a session row in the hub
        database bound to the browser's JupyterHub session: logging out ends it, copies
        included, and a hub restart keeps it.""",
    )
    identity_cache_seconds = Integer(
        60,
        config=True,
        help="""How long a Fence access token, once verified with Fence's /user/user, is
        trusted without asking Fence again (never past the token's own expiry). The gate sees
        one bearer token per request of JupyterLab; without a cache each would call Fence.""",
    )
    token_clients = List(
        Unicode(),
        [""],
        config=True,
        help="""Fence OAuth clients whose access tokens are accepted as a bearer login, by client
        id (the token's `azp` claim). This hub's own client (`Gen3OAuthenticator.client_id`) is
        always accepted. `""` stands for Fence's own login session: the token in the data portal's
        `access_token` cookie, which the commons' revproxy sends as `Authorization: bearer`, has
        an empty `azp` (as have tokens made from a user's API key). A token Fence issued to any
        other client of the commons is refused: the user gave it to that application, not to the
        workspace, and it must not become a workspace login.

        Example: also accept the tokens of a notebook-browser application registered in Fence
        as client `kq3Xr...`: `c.Gen3Launcher.token_clients = ["", "kq3Xr..."]`. Only this
        hub's own tokens: `c.Gen3Launcher.token_clients = []`.""",
    )
    token_required_scopes = List(
        Unicode(),
        ["user", "credentials"],
        config=True,
        help="""Scopes a bearer Fence access token must carry to be accepted: `user` lets the hub
        read who the caller is (Fence's /user/user), `credentials` lets the spawner mint the
        user's API key for the server. The portal's login token carries both; a token made from
        an API key lacks `credentials`. With the spawner's `issue_api_key = False`, `["user"]`
        is enough.""",
    )

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._verified: dict[str, tuple[str, float]] = {}

    # --- who is calling ------------------------------------------------------------------

    async def identify(self, handler: BaseHandler) -> tuple[Any, str]:
        """The calling hub user and how they were identified ('bearer', 'hub-token', 'cookie' or '').

        A bearer token, when present, is authoritative: a bad one is a 401, never a fall-back
        to the cookie. It must come from an accepted client (`token_clients`) with
        `token_required_scopes`; Fence verifies it (`/user/user`) and the authenticator's own
        login (`get_authenticated_user`: username rules, blocked and allowed users, the
        workspace permission, admin) admits it; the user is created or updated with it as their
        auth_state, so their server's API key is minted from it.

        A JupyterHub API token (`Authorization: token ...`) names its owner under
        `api_token_user`'s rules, which the gate applies to API tokens too. The session cookie names
        the user of its session row. For both, the login is re-checked with the authenticator
        (`refresh_user`) every `Authenticator.auth_refresh_age` as hub pages do; a login that no
        longer holds (e.g. the workspace permission was removed in Fence) identifies nobody.
        """
        scheme, _, value = handler.request.headers.get("Authorization", "").strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and value:
            return await self._user_for_bearer(handler, value), "bearer"
        if scheme == "token" and value:
            owner = await api_token_user(handler)
            # Services' tokens have no workspace of their own; the gate judges them by scope.
            return (owner if getattr(owner, "kind", "") == "user" else None), "hub-token"
        user = user_for_session_cookie(handler, self.session_cookie_name)
        if user is not None:
            user = await _refreshed(handler, user)
        return user, ("cookie" if user else "")

    def accepts_token_claims(self, claims: dict[str, Any], hub_client_id: str) -> None:
        """Raise the HTTP error a bearer token of these (not yet verified) claims gets, if any."""
        azp = claims.get("azp") or ""
        if not isinstance(azp, str) or (azp not in self.token_clients and azp != hub_client_id):
            self.log.info("Refused a bearer token issued to Fence client %r (not in Gen3Launcher.token_clients)", str(azp)[:80])
            raise web.HTTPError(
                401,
                "This access token was issued to another application of the commons, not to the data portal or the "
                "workspace, so it cannot be used here. Log in to the portal (or the workspace) instead.",
            )
        scope = claims.get("scope")
        scopes = set(scope.split() if isinstance(scope, str) else (scope or []))
        missing = [s for s in self.token_required_scopes if s not in scopes]
        if missing:
            self.log.info("Refused a bearer token without the scopes %s", missing)
            raise web.HTTPError(
                403,
                f"This access token lacks the permission(s) {', '.join(missing)} the workspace needs to start a server "
                "for you. Log in to the portal (or the workspace) again to get a full login.",
            )

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
        claims = jwt_claims(token)
        if not claims:
            raise web.HTTPError(401, "Your access token was not accepted by the commons (expired, revoked or not issued by it). Log in to the portal again.")
        self.accepts_token_claims(claims, str(getattr(authenticator, "client_id", "") or ""))
        try:
            # The hub's own login, whole: authenticate (Fence's /user/user), username rules,
            # blocked and allowed users, the workspace permission, admin, post_auth_hook.
            model = await authenticator.get_authenticated_user(handler, FenceBearer(token))
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
            raise web.HTTPError(403, "Your account is not allowed to use the Workspace.")
        name = model["name"]
        orm_user = orm.User.find(settings["db"], name)
        if orm_user is not None:
            # Keep the hub login's refresh token: the portal's token comes without one.
            previous = await users[orm_user].get_auth_state() or {}
            state = model.get("auth_state")
            if isinstance(state, dict) and previous.get("refresh_token") and not state.get("refresh_token"):
                state["refresh_token"] = previous["refresh_token"]
        user = await handler.auth_to_user(model)
        # A fresh login: the next auth_refresh_age starts now.
        user._auth_refreshed = time.monotonic()
        exp = claims.get("exp")
        until = time.time() + self.identity_cache_seconds
        self._verified[digest] = (user.name, min(until, float(exp)) if isinstance(exp, (int, float)) else until)
        if len(self._verified) > 10_000:
            now = time.time()
            self._verified = {k: v for k, v in self._verified.items() if v[1] > now}
        return user


def bearer_token(request: httputil.HTTPServerRequest) -> str:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


# --- the workspace session (the gen3ws-session cookie) ------------------------------------------


def _session_token(handler: web.RequestHandler, name: str) -> tuple[str, Any]:
    """The cookie's raw value and the session row it names (None when gone, expired or forged)."""
    raw = handler.get_secure_cookie(name, max_age_days=handler.settings.get("cookie_max_age_days") or 14)
    if not raw:
        return "", None
    value = raw.decode("utf8", "replace")
    orm_token = orm.APIToken.find(handler.settings["db"], value)
    if orm_token is None or orm_token.note != SESSION_NOTE or orm_token.user is None:
        return value, None
    return value, orm_token


def user_for_session_cookie(handler: web.RequestHandler, name: str) -> Any:
    _, orm_token = _session_token(handler, name)
    return handler.settings["users"][orm_token.user] if orm_token is not None else None


def workspace_settings(handler: web.RequestHandler) -> Any:
    """The launcher's settings (cookie name, prefix) from the hub's config, for handlers outside it."""
    launcher = getattr(handler, "launcher", None) or handler.settings.get("gen3_launcher")
    if launcher is None:
        from gen3workspace.hub.launcher import Gen3Launcher  # launcher imports this module

        launcher = handler.settings["gen3_launcher"] = Gen3Launcher(config=handler.settings.get("config"), log=getattr(handler, "log", None))
    return launcher


def start_workspace_session(handler: BaseHandler, user: Any) -> None:
    """Set the `gen3ws-session` cookie for `user`, bound to the browser's JupyterHub session.

    Called wherever the hub sets its login cookie (the Fence and dev logins, `gen3-session`,
    a bearer login at `proxy/`), so the launcher API knows the user right after a login.
    """
    launcher = workspace_settings(handler)
    session_id = handler.get_session_cookie() or handler.set_session_cookie()
    value, current = _session_token(handler, launcher.session_cookie_name)
    if current is None or current.user_id != user.orm_user.id or current.session_id != session_id:
        days = handler.settings.get("cookie_max_age_days") or 14
        value = orm.APIToken.new(user=user.orm_user, scopes=[], note=SESSION_NOTE, session_id=session_id, expires_in=int(days * 86400))
        # A client that drops cookies (a script calling proxy/ with a bearer) would add a row per
        # call: keep the newest few per user, the others' browsers log in again.
        db = handler.settings["db"]
        rows = db.query(orm.APIToken).filter_by(user_id=user.orm_user.id, note=SESSION_NOTE).order_by(orm.APIToken.created.desc(), orm.APIToken.id.desc()).offset(MAX_SESSIONS).all()
        for row in rows:
            db.delete(row)
        if rows:
            db.commit()
    handler._set_cookie(launcher.session_cookie_name, value, encrypted=True, path=cookie_path(handler.base_url, launcher.prefix))


def end_workspace_session(handler: BaseHandler) -> None:
    """Delete the session row the browser's cookie names, and the cookie (logout)."""
    launcher = workspace_settings(handler)
    _, current = _session_token(handler, launcher.session_cookie_name)
    if current is not None:
        db = handler.settings["db"]
        db.delete(current)
        db.commit()
    handler.clear_cookie(launcher.session_cookie_name, path=cookie_path(handler.base_url, launcher.prefix))


class WorkspaceLoginMixin:
    """For a login handler: where the hub sets its login cookie, the workspace session starts too."""

    def set_login_cookie(self, user: Any) -> None:
        super().set_login_cookie(user)  # type: ignore[misc]
        start_workspace_session(self, user)  # type: ignore[arg-type]


class WorkspaceLogoutMixin:
    """For a logout handler: JupyterHub's logout ends the workspace session too.

    JupyterHub's `clear_login_cookie` already deletes every token of the browser's session,
    among them the session row of `gen3ws-session`; this also deletes the row the cookie names
    when the hub's own cookie is gone, and clears the cookie itself.
    """

    def clear_login_cookie(self, name: str | None = None) -> None:
        super().clear_login_cookie(name)  # type: ignore[misc]
        end_workspace_session(self)  # type: ignore[arg-type]


# --- JupyterHub API tokens and the re-check of a login --------------------------------------


async def api_token_user(handler: BaseHandler) -> Any:
    """The owner (user or service) of the JupyterHub API token the request carries, or None.

    The rules every caller of API tokens shares (the launcher API through `identify`, the
    engine's decision in gate.py, HTTP and WebSocket alike): the hub finds the token
    (`handler.get_token()`, so expired and revoked ones are gone); a workspace session row is
    only good inside its cookie; and a user's login is re-checked like a session's.
    """
    orm_token = handler.get_token()
    if orm_token is None or orm_token.note == SESSION_NOTE:
        return None
    owner = handler.get_current_user_token()
    if getattr(owner, "kind", "") == "user":
        owner = await _refreshed(handler, owner, token=True)
    return owner


async def _refreshed(handler: BaseHandler, user: Any, token: bool = False) -> Any:
    """`user` once their login is re-checked as hub pages do (`BaseHandler.refresh_auth`), or None."""
    handler._jupyterhub_user = user
    # refresh_auth forces a new login only for cookie logins and keeps stale API access; here a
    # failed re-check refuses API tokens too, or a revoked user would keep their server by script.
    handler._token_authenticated = False
    try:
        return await handler.refresh_auth(user)
    finally:
        handler._token_authenticated = token


# --- addresses -------------------------------------------------------------------------------


def has_control_characters(value: str) -> bool:
    """Whether `value`, as sent or once percent-decoded (twice: a `next=` is encoded in a URL), has a control character."""
    once = unquote(value)
    return any(_CONTROL.search(v) for v in (value, once, unquote(once)))


def bad_address_message(what: str) -> str:
    return (
        f"This address has a control character (such as a line break) in its {what}, which no page of the "
        "workspace has. Check the link you followed, or start again from the workspace's home page."
    )


def without_secrets(url: str) -> str:
    """`url` without credential query parameters (`token`, `_xsrf`, ...); everything else kept in order."""
    path, sep, query = url.partition("?")
    if not sep:
        return url
    query, hash_sep, fragment = query.partition("#")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() not in SECRET_PARAMS]
    return path + ("?" + urlencode(kept) if kept else "") + (hash_sep + fragment)


class BadAddress(Matcher):
    """Matches a request whose path or `next=` carries a control character, before any other handler."""

    def match(self, request: httputil.HTTPServerRequest) -> dict[str, Any] | None:
        if has_control_characters(request.path or ""):
            return {"target_kwargs": {"what": "path"}}
        for raw in parse_qsl(request.query or "", keep_blank_values=True):
            if raw[0] == "next" and has_control_characters(raw[1]):
                return {"target_kwargs": {"what": "next= parameter"}}
        return None


class BadAddressHandler(web.RequestHandler):
    """A 400 with the reason, for every method: never a redirect, never a 500."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self, what: str = "address") -> None:
        self.what = what

    def check_xsrf_cookie(self) -> None:
        return None

    def prepare(self) -> None:
        raise web.HTTPError(400, bad_address_message(self.what))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {self._reason}: {bad_address_message(self.what)}\n")

def safe_next(next_url: str, allowed_prefixes: list[str]) -> str | None:
    """A redirect target only if it is a path on this origin under one of our prefixes, without credentials in its query.

    A control character anywhere in it is a 400 (a header-splitting attempt or a broken link),
    never a redirect.
    """
    if next_url and has_control_characters(next_url):
        raise web.HTTPError(400, bad_address_message("next= parameter"))
    if not next_url or not next_url.startswith("/") or next_url.startswith("//") or "\\" in next_url:
        return None
    parsed = urlparse(next_url)
    if parsed.scheme or parsed.netloc:
        return None
    return without_secrets(next_url) if any(parsed.path.startswith(p) for p in allowed_prefixes) else None


def cookie_path(base_url: str, prefix: str) -> str:
    """The longest path both the launcher prefix and users' servers live under."""
    common = []
    for a, b in zip(base_url.strip("/").split("/"), prefix.strip("/").split("/")):
        if a != b:
            break
        common.append(a)
    return "/" + "/".join(c for c in common if c) + ("/" if any(common) else "")


class _Gen3Handler(BaseHandler):
    """Identification by bearer token or the gen3ws session cookie instead of JupyterHub's own cookie."""

    def initialize(self, launcher: Any) -> None:
        self.launcher = launcher
        self.auth_kind = ""

    async def prepare(self) -> None:
        self.expanded_scopes = set()
        self.parsed_scopes = {}
        self._jupyterhub_user = None
        self._token_authenticated = False
        user, self.auth_kind = await self.launcher.identify(self)
        self._jupyterhub_user = user
        self._resolve_roles_and_scopes()

    def check_xsrf_cookie(self) -> None:
        # The launcher checks the portal's CSRF header itself; a user's server checks its own.
        return None

    def login_redirect(self) -> None:
        """Send a browser without identity through the hub login (inside a frame too) and back."""
        hub_prefix = self.hub.base_url
        back = without_secrets(self.request.uri or "/")
        target = url_path_join(hub_prefix, "gen3-session") + "?next=" + quote(back, safe="")
        self.redirect(target)

    def set_session_cookie_for(self, user: Any) -> None:
        start_workspace_session(self, user)


class TokenPage(TokenPageHandler):
    """JupyterHub's token page without the rows behind `gen3ws-session` cookies.

    Those rows are browser logins, not API tokens: listed, they read as a token with no scopes
    the person never made, and revoking one logs a browser out without saying so.
    """

    def render_template(self, name: str, sync: bool = False, **ns: Any) -> Any:
        if "api_tokens" in ns:
            ns["api_tokens"] = [t for t in ns["api_tokens"] if t.note != SESSION_NOTE]
        return super().render_template(name, sync=sync, **ns)


class SessionHandler(_Gen3Handler):
    """Hands the hub login to the launcher and the gate (which live outside <base>/hub/), then goes back."""

    async def prepare(self) -> None:
        # Under <base>/hub/: JupyterHub's own login cookie identifies the user here.
        await BaseHandler.prepare(self)

    @web.authenticated
    def get(self) -> None:
        allowed = [self.launcher.prefix, self.base_url]
        # Checked first: a next= that is a 400 must not start a session either.
        target = safe_next(self.get_argument("next", ""), allowed) or self.launcher.prefix + "proxy/"
        self.set_session_cookie_for(self.current_user)
        self.redirect(target)

