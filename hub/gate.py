"""Who may reach `<base>/user/<name>/...`: the decision the public proxy engine asks the hub for (`<hub>/gen3-route`), and the hub's page when the answer is no.

Every user controls their own server completely, so anything it answers at
`<base>/user/<name>/...` is script on the commons' origin: a browser is served a server only
when the caller *is* `<name>`. The engine (nginx, `gen3workspace.hub.engine`) asks
`RouteDecisionHandler` before every request it has not seen allowed in the last few seconds
and then streams the bytes itself; the hub never carries them. docs/architecture.md has the
decision and its trade-offs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from jupyterhub.scopes import identify_scopes
from jupyterhub.utils import url_path_join
from tornado import web

from gen3workspace.hub.identity import _Gen3Handler, api_token_user
from gen3workspace.hub.pages import error_page


def forwardable_cookies(header: str, drop: set[str]) -> str:
    """The Cookie header without the named cookies, every other pair byte for byte.

    Not http.cookies: it stops at the first value it finds illegal and would silently drop
    the rest, among them the server's own login cookie.
    """
    kept = []
    for pair in header.split(";"):
        name = pair.split("=", 1)[0].strip()
        if name and name not in drop:
            kept.append(pair.strip())
    return "; ".join(kept)


def target_of(uri: str, base_url: str) -> tuple[str, str] | None:
    """(user segment, next segment) of `<base>user/<user>/<next>...` exactly as the client wrote them.

    The same split as the engine's `$gen3_target` map (hub/engine.conf),
    which is part of its cache key: an allowed answer is reused only for the same two segments.
    """
    path = uri.split("?", 1)[0]
    prefix = base_url + "user/"
    if not path.startswith(prefix):
        return None
    name, _, rest = path[len(prefix):].partition("/")
    return name, rest.split("/", 1)[0]


@dataclass
class Decision:
    """The answer for one request: allowed with where to and what to forward, or a status and why."""

    status: int
    message: str = ""
    upstream: str = ""
    cookie: str = ""
    authorization: str = ""
    owner: str = ""
    not_running: bool = False


class _DecidingHandler(_Gen3Handler):
    """The one decision, shared by the engine's endpoint and the hub's refusal page."""

    def original_uri(self) -> str:
        return self.request.uri or "/"

    def original_query_token(self) -> str:
        return (parse_qs(urlparse(self.original_uri()).query).get("token") or [""])[0]

    def get_auth_token(self) -> str | None:
        # JupyterHub API tokens only (`token` scheme or `?token=`); `bearer` is a Fence token,
        # which identify() checks with Fence.
        scheme, _, token = self.request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "token" and token.strip():
            return token.strip()
        return self.original_query_token() or None

    async def prepare(self) -> None:
        self.expanded_scopes = set()
        self.parsed_scopes = {}
        self._jupyterhub_user = None
        self.identify_error: web.HTTPError | None = None
        if self.get_auth_token():
            # A JupyterHub API token, as scripts and extensions send to their own server:
            # JupyterHub names its owner, the same on HTTP and WebSockets.
            self.auth_kind = "hub-token"
            # identify()'s rules for API tokens (valid, no session row, login re-checked).
            self._jupyterhub_user = await api_token_user(self)
        else:
            try:
                self._jupyterhub_user, self.auth_kind = await self.launcher.identify(self)
            except web.HTTPError as e:
                # A bad bearer token is a refusal, never a fall-back to the cookie.
                self.identify_error = e
        self._resolve_roles_and_scopes()

    def decide(self, method: str, origin: str, upgrade: str) -> Decision:
        target = target_of(self.original_uri(), self.base_url)
        if target is None:
            return Decision(403, "This address is not a workspace server's.")
        if self.identify_error is not None:
            return Decision(401 if self.identify_error.status_code == 401 else 403, self.identify_error.log_message or "")
        caller = self.current_user
        if caller is None:
            if self.auth_kind == "hub-token":
                return Decision(403, "This JupyterHub API token is not valid (expired or revoked).")
            return Decision(401, "Log in to the workspace first.")
        name = unquote(target[0])
        is_owner = getattr(caller, "kind", "user") == "user" and caller.name == name
        owner = self.find_user(name)
        spawner = _server_for(owner, self.base_url, target) if owner else None
        if not is_owner and not self._token_grants(spawner):
            # No browser is ever served another user's server, whatever the caller's role:
            # that server's script would run with the caller's hub and Fence session.
            return Decision(403, "This address belongs to another user's workspace. You can only open your own.")
        if upgrade.lower() == "websocket" and origin and urlparse(origin).netloc != self.request.host:
            # Checked here, before the engine ever dials the server.
            return Decision(403, "This WebSocket comes from another site.")
        if spawner is None:
            return Decision(401, "Your workspace is not running.", owner=name, not_running=True)
        authorization = ""
        if self.auth_kind == "hub-token":
            if not is_owner and not self._only_server_access():
                return Decision(403, "A token that opens another user's server may carry only access:servers; create one with just that scope.")
            authorization = "token " + (self.get_auth_token() or "")
        drop = {self.launcher.session_cookie_name, *self.launcher.stripped_cookies}
        cookie = forwardable_cookies("; ".join(self.request.headers.get_list("Cookie")), drop)
        return Decision(200, upstream=spawner.server.host, cookie=cookie, authorization=authorization, owner=name)

    def _token_grants(self, spawner: Any) -> bool:
        """An API token with `access:servers` on this server (an admin's script, e.g. with
        `Gen3OAuthenticator.fence_admin_server_access`): no browser, so no script of the server
        runs with the caller's session; the server checks the token's scopes again itself."""
        if self.auth_kind != "hub-token" or spawner is None:
            return False
        return bool(self.get_scope_filter("access:servers")(spawner.orm_spawner, kind="server"))

    def _only_server_access(self) -> bool:
        """The token carries nothing beyond access:servers (and the identity every token has),
        so the user's server, which sees it, cannot replay it for anything else."""
        token = self.get_token()
        if token is None:
            return False
        extra = set(self.expanded_scopes) - identify_scopes(token.user or token.service)
        return all(s == "access:servers" or s.startswith("access:servers!") for s in extra)


def _server_for(user: Any, base_url: str, target: tuple[str, str]) -> Any:
    """The user's ready server the two path segments name: a named server, else the default one."""
    segment, next_segment = target
    named = f"{base_url}user/{segment}/{next_segment}/"
    default = f"{base_url}user/{segment}/"
    fallback = None
    for spawner in user.spawners.values():
        if not (spawner.ready and spawner.server):
            continue
        if spawner.name and spawner.server.base_url == named:
            return spawner
        if not spawner.name and spawner.server.base_url == default:
            fallback = spawner
    return fallback


class RouteDecisionHandler(_DecidingHandler):
    """`<hub>/gen3-route`: the engine's auth_request. 200 with where to and what to forward, else 401/403.

    Reads only what the engine sends and keys its cache on (engine.conf): the original URI's
    user and server segments, Host, Authorization, `?token=` (as X-Gen3-Token), Cookie,
    Origin and Upgrade.
    """

    def original_uri(self) -> str:
        return self.request.headers.get("X-Original-URI", "")

    def original_query_token(self) -> str:
        return self.request.headers.get("X-Gen3-Token", "")

    async def get(self) -> None:
        h = self.request.headers
        decision = self.decide(h.get("X-Original-Method", "GET"), h.get("Origin", ""), h.get("Upgrade", ""))
        self.clear_header("Set-Cookie")
        self.set_header("Cache-Control", "private")
        if decision.status == 200:
            self.set_header("X-Gen3-Upstream", decision.upstream)
            self.set_header("X-Gen3-Cookie", decision.cookie)
            self.set_header("X-Gen3-Authorization", decision.authorization)
        else:
            user = self.current_user
            self.log.info(
                "Engine: %s refused for %s to %s's server: %s",
                h.get("X-Original-Method", "GET"),
                getattr(user, "name", None) or "an anonymous caller",
                (target_of(self.original_uri(), self.base_url) or ("?",))[0],
                decision.message,
            )
        self.set_status(decision.status)
        self.finish()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # An error inside the decision is a refusal, answered without a body.
        self.finish()


class UserServerPage(_DecidingHandler):
    """`<base>/user/<name>/...` when the engine's answer was no: the page, never the server's bytes."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    async def _handle(self, name: str, rest: str | None = None) -> None:
        h = self.request.headers
        decision = self.decide(self.request.method or "GET", h.get("Origin", ""), h.get("Upgrade", ""))
        safe = self.request.method in ("GET", "HEAD") and h.get("Upgrade", "").lower() != "websocket"
        if decision.not_running:
            if safe:
                # JupyterHub's own pages say "not running" / "starting" and offer to start it.
                hub_url = url_path_join(self.hub.base_url, "user", decision.owner, (rest or "/").lstrip("/"))
                self.redirect(hub_url + ("?" + self.request.query if self.request.query else ""))
                return
            raise web.HTTPError(503, "Your workspace is not running.")
        if decision.status == 401 and self.current_user is None and self.auth_kind != "hub-token" and self.identify_error is None:
            if safe:
                self.login_redirect()
                return
            raise web.HTTPError(403, "Log in to the workspace first.")
        if decision.status == 200:
            # The engine could not ask (the hub was restarting) or the server just came up.
            self.set_header("Retry-After", "2")
            raise web.HTTPError(503, "Your workspace is reachable again in a moment; reload the page.")
        self.log.warning("Gate: %s asked for %s's server path; refused: %s", getattr(self.current_user, "name", "an anonymous caller"), name, decision.message)
        raise web.HTTPError(decision.status if decision.status in (401, 403) else 403, decision.message)

    get = head = post = delete = patch = put = options = _handle  # type: ignore[assignment]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(error_page(self, status_code, message, exc))
