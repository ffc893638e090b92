"""The identity gate in front of users' servers and the public proxy class: `<base>/user/<name>/...` reaches a server only when the caller is `<name>`.

Every user controls their own server completely, so anything it answers at
`<base>/user/<name>/...` is script on the commons' origin. The public proxy therefore gets no
route to users' servers (see `Gen3Proxy`); the hub forwards `<base>/user/<name>/...` only when
the caller *is* `<name>`. docs/architecture.md has the decision and its trade-offs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from jupyterhub import orm
from jupyterhub.proxy import ConfigurableHTTPProxy
from jupyterhub.utils import url_path_join
from tornado import httputil, web, websocket
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.routing import PathMatches

from gen3workspace.hub.identity import _Gen3Handler, hub_api_token
from gen3workspace.hub.launcher import Gen3Launcher
from gen3workspace.hub.pages import error_page

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


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


class _WebSocketPath(PathMatches):
    """A path rule that only matches WebSocket upgrade requests."""

    def match(self, request: httputil.HTTPServerRequest) -> dict[str, Any] | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return None
        return super().match(request)


def _server_for(user: Any, uri_path: str) -> Any:
    """The user's ready server whose base_url the request path is under (longest match)."""
    best = None
    for spawner in user.spawners.values():
        if spawner.ready and spawner.server and uri_path.startswith(spawner.server.base_url.rstrip("/")):
            if best is None or len(spawner.server.base_url) > len(best.server.base_url):
                best = spawner
    return best



class UserServerGate(_Gen3Handler):
    """`<base>/user/<name>/...`: forwarded to the server only when the caller is <name>."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    async def prepare(self) -> None:
        if hub_api_token(self.request):
            # A JupyterHub API token (`Authorization: token ...`), as scripts and extensions send
            # to their own server: JupyterHub names its owner, and the server checks its scopes.
            self.auth_kind = "hub-token"
            self._jupyterhub_user = self.get_current_user_token()
            self._resolve_roles_and_scopes()
            return
        await super().prepare()

    async def _handle(self, name: str, rest: str | None = None) -> None:
        user = self.current_user
        if user is None:
            if self.auth_kind == "hub-token":
                raise web.HTTPError(403, "This JupyterHub API token is not valid (expired or revoked).")
            if self.request.method in ("GET", "HEAD"):
                self.login_redirect()
                return
            raise web.HTTPError(403, "Log in to the workspace first.")
        owner = self.find_user(name)
        spawner = _server_for(owner, self.request.path) if owner else None
        is_owner = getattr(user, "kind", "user") == "user" and user.name == name
        if not is_owner and not self._token_grants(spawner):
            # No browser is ever served another user's server here, whatever the caller's role:
            # that server's script would run with the caller's hub and Fence session.
            self.log.warning("Gate: %s asked for %s's server path %s; refused", user.name, name, self.request.path)
            raise web.HTTPError(403, "This address belongs to another user's workspace. You can only open your own.")
        if spawner is None:
            if self.request.method in ("GET", "HEAD"):
                # JupyterHub's own pages say "not running" / "starting" and offer to start it.
                hub_url = url_path_join(self.hub.base_url, "user", name, (rest or "/").lstrip("/"))
                self.redirect(hub_url + ("?" + self.request.query if self.request.query else ""))
                return
            raise web.HTTPError(503, "Your workspace is not running.")
        await self._forward(spawner)

    get = head = post = delete = patch = put = options = _handle  # type: ignore[assignment]

    def _token_grants(self, spawner: Any) -> bool:
        """An API token with `access:servers` on this server (an admin's script, e.g. with
        `Gen3OAuthenticator.fence_admin_server_access`): no browser, so no script of the server
        runs with the caller's session; the server checks the token's scopes again itself."""
        if self.auth_kind != "hub-token" or spawner is None:
            return False
        return bool(self.get_scope_filter("access:servers")(spawner.orm_spawner, kind="server"))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(error_page(self, status_code, message, exc))

    async def _forward(self, spawner: Any) -> None:
        url = spawner.server.host + self.request.uri
        headers = forwarded_headers(self.request, self.launcher, keep_authorization=self.auth_kind == "hub-token")
        body = self.request.body if self.request.method in ("POST", "PUT", "PATCH", "DELETE") else None
        if self.request.method in ("POST", "PUT", "PATCH") and body is None:
            body = b""
        started = False

        def on_header(line: str) -> None:
            nonlocal started
            line = line.rstrip("\r\n")
            if not line:
                return
            if line.startswith("HTTP/"):
                parts = line.split(" ", 2)
                self.clear()
                for h in ("Content-Type", "Server"):
                    self.clear_header(h)
                self._status_line = (int(parts[1]), parts[2] if len(parts) > 2 else "")
                self.set_status(*self._status_line)
                return
            name, _, value = line.partition(":")
            if name.strip().lower() in HOP_BY_HOP:
                return
            self.add_header(name.strip(), value.strip())

        def on_chunk(chunk: bytes) -> None:
            nonlocal started
            started = True
            self.write(chunk)
            self.flush()

        request = HTTPRequest(
            url,
            method=self.request.method,
            headers=headers,
            body=body,
            follow_redirects=False,
            decompress_response=False,
            header_callback=on_header,
            streaming_callback=on_chunk,
            request_timeout=3600,
            connect_timeout=20,
            allow_nonstandard_methods=True,
        )
        try:
            await AsyncHTTPClient().fetch(request, raise_error=False)
        except OSError as e:
            if started:
                raise
            self.log.warning("Gate: %s's server at %s did not answer: %s", spawner.user.name, spawner.server.host, e)
            raise web.HTTPError(502, "Your workspace server is not answering right now. Wait a moment and reload.") from None
        self.finish()



def forwarded_headers(request: httputil.HTTPServerRequest, launcher: Gen3Launcher, keep_authorization: bool = False) -> dict[str, str]:
    """The browser's headers for the user's server, without its Fence token and commons session.

    `keep_authorization`: the caller sent its own JupyterHub API token, which the server needs.
    """
    out: dict[str, str] = {}
    for name, value in request.headers.get_all():
        lower = name.lower()
        if lower == "authorization" and keep_authorization:
            out[name] = value
            continue
        if lower in HOP_BY_HOP or lower in ("authorization", "cookie", "host") or lower.startswith("sec-websocket"):
            continue
        out[name] = value
    cookies = forwardable_cookies("; ".join(request.headers.get_list("Cookie")), {launcher.session_cookie_name, *launcher.stripped_cookies})
    if cookies:
        out["Cookie"] = cookies
    # The server checks Origin against Host for XSRF and WebSockets: it must see the public host.
    out["Host"] = request.host
    out["X-Forwarded-Proto"] = request.protocol
    out["X-Forwarded-Host"] = request.host
    prior = request.headers.get("X-Forwarded-For")
    out["X-Forwarded-For"] = f"{prior}, {request.remote_ip}" if prior else request.remote_ip
    return out


class UserServerWebSocket(websocket.WebSocketHandler):
    """The gate for WebSockets (kernels, terminals): relayed only for the server's owner."""

    def initialize(self, launcher: Gen3Launcher) -> None:
        self.launcher = launcher
        self.upstream: websocket.WebSocketClientConnection | None = None
        self._subprotocol: str | None = None

    async def get(self, name: str, rest: str | None = None) -> None:
        try:
            user, _ = await self.launcher.identify(self)
        except web.HTTPError as e:
            self.set_status(e.status_code)
            self.finish()
            return
        orm_user = orm.User.find(self.settings["db"], name)
        owner = self.settings["users"][orm_user] if orm_user else None
        if user is None or owner is None or user.name != name:
            self.launcher.log.warning("Gate: WebSocket to %s's server refused for %s", name, user.name if user else "an anonymous caller")
            self.set_status(403)
            self.finish()
            return
        spawner = _server_for(owner, self.request.path)
        if spawner is None:
            self.set_status(503)
            self.finish()
            return
        url = "ws" + spawner.server.host[len("http"):] + self.request.uri
        headers = forwarded_headers(self.request, self.launcher)
        if "Origin" in self.request.headers:
            headers["Origin"] = self.request.headers["Origin"]
        protocols = [p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        try:
            self.upstream = await websocket.websocket_connect(
                HTTPRequest(url, headers=headers, connect_timeout=20, request_timeout=3600),
                on_message_callback=self._from_upstream,
                subprotocols=protocols or None,
                max_message_size=1024**3,
            )
        except Exception as e:
            self.launcher.log.warning("Gate: WebSocket to %s's server failed: %s", name, type(e).__name__)
            self.set_status(502)
            self.finish()
            return
        self._subprotocol = self.upstream.selected_subprotocol
        await super().get(name, rest)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self._subprotocol if self._subprotocol in subprotocols else None

    def check_origin(self, origin: str) -> bool:
        # Same origin only; the user's server checks again.
        return urlparse(origin).netloc == self.request.host

    def _from_upstream(self, message: str | bytes | None) -> None:
        if message is None:
            if self.ws_connection:
                self.close()
            return
        if self.ws_connection:
            self.write_message(message, binary=isinstance(message, bytes))

    async def on_message(self, message: str | bytes) -> None:
        if self.upstream:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        if self.upstream:
            self.upstream.close()
            self.upstream = None


# --- the public proxy ------------------------------------------------------------------------


class Gen3Proxy(ConfigurableHTTPProxy):
    """configurable-http-proxy that routes only to the hub when users' servers are isolated.

    With `Gen3Launcher.isolate_servers` the public proxy holds no route to any user's server;
    the hub's gate forwards each request by the caller's identity. It also installs the
    launcher's handlers in the hub's web application: JupyterHub serves extra handlers only
    under `<base>/hub/`, and the portal calls `/lw-workspace/...`. That happens the first time
    the hub asks for its routes, which it does before it starts listening.
    """

    _installed = False

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
            "Gen3 launcher API at %s; users' servers %s",
            self.launcher.prefix if self.launcher.enabled else "(off)",
            "served only to their owners (no public route)" if self.launcher.isolate_servers else "routed by the public proxy",
        )

    async def get_all_routes(self) -> dict[str, Any]:
        self.install_handlers()
        prefix = self.launcher.prefix
        if self.launcher.enabled and self.app is not None and not prefix.startswith(self.app.base_url) and self.hub is not None:
            # A launcher prefix outside the hub's base URL (e.g. /lw-workspace/ next to
            # /workspace/) needs its own route to the hub; check_routes keeps it in place.
            self.extra_routes = {**self.extra_routes, prefix: self.hub.host}
        return await super().get_all_routes()

    async def add_user(self, user: Any, server_name: str = "") -> None:
        if self.launcher.isolate_servers:
            return
        await super().add_user(user, server_name)

    async def delete_user(self, user: Any, server_name: str = "") -> None:
        if self.launcher.isolate_servers:
            return
        await super().delete_user(user, server_name)

    async def check_routes(self, user_dict: Any, service_dict: Any, routes: Any = None) -> None:
        if self.launcher.isolate_servers:
            # No user is "missing" a route, and any user route left from before is stale.
            user_dict = {}
        await super().check_routes(user_dict, service_dict, routes)
