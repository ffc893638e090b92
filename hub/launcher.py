"""The data portal's launcher API (the `/lw-workspace/` calls hatchery answers today) and the identity gate that serves each user's server only to its owner, both inside the hub.

Why in the hub and not a JupyterHub service: `status` reports the real pod's conditions and
container states, which only the spawner (KubeSpawner's pod reflector, the local process)
knows, and `launch` must take exactly the flavor page's spawn path (`spawn_single_user`, the
spawner's flavor checks, the Fence API key). A service would see neither through the REST API.

Why a gate: every user controls their own server completely, so anything it answers at
`<base>/user/<name>/...` is script on the commons' origin. The public proxy therefore gets no
route to users' servers (see `Gen3Proxy`); the hub forwards `<base>/user/<name>/...` only when
the caller *is* `<name>`. docs/architecture.md has the decision and its trade-offs.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import time
from typing import Any
from urllib.parse import quote, urlparse

from jupyterhub import orm
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.proxy import ConfigurableHTTPProxy
from jupyterhub.utils import maybe_future, url_path_join
from tornado import httputil, web, websocket
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.routing import PathMatches, Rule
from traitlets import Bool, Integer, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from gen3workspace.spawner.flavors import Flavor

# JupyterLab's own idle shutdown (spawner/singleuser/jupyter_server_config.py) when a flavor
# does not set GEN3_IDLE_TIMEOUT_SECONDS; kept equal to that file's default.
DEFAULT_IDLE_TIMEOUT_SECONDS = 3600
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
STATUSES = ("Not Found", "Launching", "Running", "Terminating", "Stopped", "Errored")


class Gen3Launcher(LoggingConfigurable):
    """Settings of the portal launcher API and of the identity gate in front of users' servers."""

    prefix = Unicode(
        "/lw-workspace/",
        config=True,
        help="""URL prefix of the launcher API the data portal calls (`options`, `launch`,
        `status`, `proxy/`, `terminate`, pay models): the portal's WORKSPACE_URL, by default
        `/lw-workspace/`. It may equal the hub's base_url; the hub's own pages stay under
        `<base_url>hub/` and users' servers under `<base_url>user/`.""",
    )

    @validate("prefix")
    def _normalise_prefix(self, proposal: Any) -> str:
        value = "/" + str(proposal.value).strip("/") + "/"
        if value == "//":
            raise ValueError("Gen3Launcher.prefix cannot be '/': the portal's launcher needs a path of its own, e.g. /lw-workspace/")
        return value

    enabled = Bool(True, config=True, help="Serve the portal launcher API at `prefix`.")
    isolate_servers = Bool(
        True,
        config=True,
        help="""Serve users' servers only to their owners. The public proxy gets no route to
        any user's server; the hub forwards `<base_url>user/<name>/...` (HTTP and WebSocket)
        only to a caller identified as `<name>`, so one user's server can never run script in
        another user's browser on the commons' origin. Turning it off restores JupyterHub's
        shared-origin routing and its risks (see docs/architecture.md).""",
    )
    session_cookie_name = Unicode(
        "gen3ws-session",
        config=True,
        help="""Cookie that carries the hub login to the launcher API and the gate, which
        live outside `<base_url>hub/` where JupyterHub's own login cookie is not sent. Signed
        with the hub's cookie secret, HttpOnly, and subject to `JupyterHub.cookie_options`.""",
    )
    csrf_header = Unicode(
        "x-csrf-token",
        config=True,
        help="""Header a cookie-authenticated POST to the launcher API must carry (the Gen3
        portal sends it on every call). Calls authenticated by a bearer token need none.""",
    )
    csrf_cookie = Unicode(
        "csrftoken",
        config=True,
        help="The portal's CSRF cookie: when the browser sends it, the CSRF header must equal it.",
    )
    identity_cache_seconds = Integer(
        60,
        config=True,
        help="""How long a Fence access token, once verified with Fence's /user/user, is
        trusted without asking Fence again (never past the token's own expiry). The gate sees
        one bearer token per request of JupyterLab; without a cache each would call Fence.""",
    )
    idle_timeout_seconds = Integer(
        None,
        allow_none=True,
        config=True,
        help="""Idle time (seconds) after which a user's server shuts itself down, reported to
        the portal as `idle-time-limit`/`idleTimeLimit` (milliseconds) for its idle warning.
        None: the flavor's GEN3_IDLE_TIMEOUT_SECONDS, else the notebook's default (3600).
        0: no idle shutdown (reported as -1).""",
    )
    launch_wait_seconds = Integer(
        0,
        config=True,
        help="""How long `launch` waits for the server to come up before answering. 0: answer
        as soon as the flavor is checked and the spawn has begun, like hatchery, so the portal
        shows its launch steps from `status`; a spawn that fails later is `Errored` there.""",
    )
    stripped_cookies = List(
        Unicode(),
        ["access_token", "fence", "jupyterhub-hub-login"],
        config=True,
        help="""Cookies never forwarded to a user's server, besides `session_cookie_name`:
        the commons' Fence session and access token and the hub's login. The server gets its
        own hub-issued token; it has no use for the user's commons session.""",
    )

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._verified: dict[str, tuple[str, float]] = {}
        self._launch_locks: dict[str, asyncio.Lock] = {}

    # --- paths ---------------------------------------------------------------------------

    def handlers(self, base_url: str, hub_prefix: str) -> list[Any]:
        """Tornado rules, placed in front of all of JupyterHub's own."""
        rules: list[Any] = []
        if self.isolate_servers:
            user_path = rf"{base_url}user/(?P<name>[^/]+)(?P<rest>/.*)?"
            rules.append(Rule(_WebSocketPath(user_path), UserServerWebSocket, {"launcher": self}))
            rules.append((user_path, UserServerGate, {"launcher": self}))
        rules.append((url_path_join(hub_prefix, "gen3-session"), SessionHandler, {"launcher": self}))
        if self.enabled:
            p = self.prefix
            rules.append((rf"{p}proxy(?P<rest>/.*)?", PortalProxyHandler, {"launcher": self}))
            rules.append((rf"{p}(?P<call>options|launch|status|terminate|allpaymodels|paymodels|setpaymodel|resetpaymodels)", LauncherAPIHandler, {"launcher": self}))
            # Anything else under the prefix that is not the hub's or a user server's path.
            rules.append((rf"{p}(?!hub/|user/)(?P<call>.*)", LauncherAPIHandler, {"launcher": self}))
        return rules

    def launch_lock(self, username: str) -> asyncio.Lock:
        return self._launch_locks.setdefault(username, asyncio.Lock())

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

    # --- what the portal is shown --------------------------------------------------------

    def idle_limit_ms(self, flavor: Flavor | None) -> int:
        seconds = self.idle_timeout_seconds
        if seconds is None:
            raw = (flavor.env.get("GEN3_IDLE_TIMEOUT_SECONDS") if flavor else None) or ""
            seconds = int(raw) if raw.strip().isdigit() else DEFAULT_IDLE_TIMEOUT_SECONDS
        return seconds * 1000 if seconds > 0 else -1

    def option(self, flavor: Flavor) -> dict[str, Any]:
        """One flavor as hatchery's `options` entry; the id is the flavor's stable name."""
        return {
            "id": flavor.name,
            "name": flavor.display_name,
            "cpu-limit": f"{flavor.cpu_limit:g}",
            "memory-limit": flavor.mem_limit,
            "gpu": flavor.gpu > 0,
            "idle-time-limit": self.idle_limit_ms(flavor),
            "description": flavor.description,
        }

    async def status(self, user: Any) -> dict[str, Any]:
        """Hatchery's `status` answer for this user's default server."""
        spawner = user.spawners.get("") if user is not None else None
        kube = spawner is not None and hasattr(spawner, "pod_reflector")
        out: dict[str, Any] = {
            "status": "Not Found",
            "conditions": [],
            "containerStates": [],
            "idleTimeLimit": 0,
            "lastActivityTime": 0,
            "workspaceType": "Kubernetes" if kube else "Local",
        }
        if spawner is None:
            return out
        flavor = getattr(spawner, "flavor", None)
        if flavor:
            out["flavor"] = flavor.name
        pending = spawner.pending
        if pending == "stop":
            out["status"] = "Terminating"
            return out
        if pending == "spawn":
            out["status"] = "Launching"
            out.update(await self._launch_details(spawner))
            return out
        if spawner.ready:
            exit_status = await spawner.poll()
            pod = _pod(spawner)
            if pod and (pod.get("metadata") or {}).get("deletionTimestamp"):
                out["status"] = "Terminating"
                return out
            phase = ((pod or {}).get("status") or {}).get("phase")
            if exit_status is not None or phase in ("Failed", "Succeeded", "Unknown"):
                out["status"] = "Stopped"
                out.update(await self._launch_details(spawner, exit_status=exit_status))
                return out
            out["status"] = "Running"
            out["idleTimeLimit"] = self.idle_limit_ms(flavor)
            out["lastActivityTime"] = _epoch_ms(spawner.orm_spawner.last_activity or user.orm_user.last_activity)
            return out
        failure = _spawn_failure(spawner)
        if failure is not None:
            out["status"] = "Errored"
            out["message"] = getattr(failure, "jupyterhub_message", None) or getattr(failure, "log_message", None) or str(failure) or type(failure).__name__
        return out

    async def _launch_details(self, spawner: Any, exit_status: Any = None) -> dict[str, Any]:
        """`conditions` and `containerStates`: the pod's own (Kubernetes), or the process's (embedded)."""
        if hasattr(spawner, "pod_reflector"):
            pod = _pod(spawner) or {}
            status = pod.get("status") or {}
            conditions = [{"type": c.get("type"), "status": c.get("status")} for c in status.get("conditions") or []]
            states = [
                {"name": cs.get("name"), "state": cs.get("state") or {}, "ready": bool(cs.get("ready"))}
                for cs in status.get("containerStatuses") or []
            ]
            if not conditions:
                # Created but not yet seen by the scheduler: the portal's first step.
                conditions = [{"type": "PodScheduled", "status": "False"}]
            return {"conditions": conditions, "containerStates": states}
        pid = getattr(spawner, "pid", 0)
        if exit_status is not None:
            state: dict[str, Any] = {"terminated": {"exitCode": exit_status if isinstance(exit_status, int) else 1, "reason": "Exited"}}
        elif pid:
            state = {"running": {}}
        else:
            state = {"waiting": {"reason": "Starting"}}
        started = bool(pid) or exit_status is not None
        return {
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True" if started else "False"},
                {"type": "ContainersReady", "status": "False"},
                {"type": "Ready", "status": "False"},
            ],
            "containerStates": [{"name": "notebook", "state": state, "ready": False}],
        }


# --- helpers shared by the handlers -------------------------------------------------------


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


def _epoch_ms(when: datetime.datetime | None) -> int:
    if when is None:
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp() * 1000)


def _pod(spawner: Any) -> dict[str, Any] | None:
    reflector = getattr(spawner, "pod_reflector", None)
    if not reflector:
        return None
    return reflector.pods.get(f"{spawner.namespace}/{spawner.pod_name}")


def _spawn_failure(spawner: Any) -> BaseException | None:
    future = getattr(spawner, "_spawn_future", None)
    if future is None or not future.done() or future.cancelled():
        return None
    return future.exception()


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


# --- handlers -------------------------------------------------------------------------------


class _Gen3Handler(BaseHandler):
    """Identification by bearer token or the gen3ws session cookie instead of JupyterHub's own cookie."""

    def initialize(self, launcher: Gen3Launcher) -> None:
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


class LauncherAPIHandler(_Gen3Handler):
    """options, launch, status, terminate and the pay-model calls, as hatchery answers them."""

    @property
    def slow_spawn_timeout(self) -> int:
        return self.launcher.launch_wait_seconds

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "jupyterhub_message", None) or getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message, "status": status_code}))

    def send(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))

    def require_user(self) -> Any:
        user = self.current_user
        if user is None:
            raise web.HTTPError(401, "Log in first: no Fence access token (Authorization: bearer) and no workspace session.")
        return user

    def check_csrf(self) -> None:
        # A bearer token that is also the browser's access_token cookie came from revproxy's
        # cookie-to-header conversion: a browser call, so it needs the header as well.
        from_cookie = self.get_cookie("access_token") == bearer_token(self.request)
        if self.auth_kind == "bearer" and not from_cookie:
            return
        sent = self.request.headers.get(self.launcher.csrf_header, "")
        cookie = self.get_cookie(self.launcher.csrf_cookie)
        if not sent or (cookie and sent != cookie):
            self.log.warning("Refused a %s to %s without a valid %s header", self.request.method, self.request.path, self.launcher.csrf_header)
            raise web.HTTPError(403, f"This request needs the portal's {self.launcher.csrf_header} header.")

    async def get(self, call: str) -> None:
        if call == "options":
            await self._options()
        elif call == "status":
            self.send(await self.launcher.status(self.require_user()))
        elif call in ("allpaymodels", "paymodels"):
            self.require_user()
            # Hatchery's answer for a commons without pay models; the portal hides the panel.
            self.send({"error": "No paymodel set"}, 404)
        elif call in ("launch", "terminate", "setpaymodel", "resetpaymodels"):
            raise web.HTTPError(405, f"{call} must be called with POST.")
        else:
            raise web.HTTPError(404, f"The workspace launcher has no call {call!r}.")

    async def post(self, call: str) -> None:
        if call not in ("launch", "terminate", "setpaymodel", "resetpaymodels"):
            raise web.HTTPError(405 if call in ("options", "status", "allpaymodels", "paymodels") else 404, f"The workspace launcher has no POST {call!r}.")
        user = self.require_user()
        self.check_csrf()
        if call == "launch":
            await self._launch(user)
        elif call == "terminate":
            await self._terminate(user)
        else:
            self.send({"error": "This workspace has no pay models."}, 404)

    async def _options(self) -> None:
        user = self.require_user()
        spawner = user.get_spawner("", replace_failed=True)
        flavors = await spawner.allowed_flavors()
        wanted = self.get_argument("id", "")
        if wanted:
            match = next((f for f in flavors if f.name == wanted), None)
            if match is None:
                # As hatchery: an id the user may not launch looks like an unknown one.
                raise web.HTTPError(400, f"Invalid 'id' parameter {wanted!r}: no such flavor you can launch.")
            self.send(self.launcher.option(match))
            return
        self.send([self.launcher.option(f) for f in flavors])

    async def _launch(self, user: Any) -> None:
        flavor_id = self.get_argument("id", "")
        if not flavor_id:
            raise web.HTTPError(400, "Missing 'id' parameter: say which flavor to launch (an id from options).")
        async with self.launcher.launch_lock(user.name):
            spawner = user.get_spawner("", replace_failed=True)
            if spawner.pending or spawner.ready:
                what = {"spawn": "is already launching", "stop": "is still terminating"}.get(spawner.pending or "", "is already running")
                raise web.HTTPError(409, f"Your workspace {what}; terminate it before launching another flavor.")
            # The same checks as the flavor page, before anything is created or minted.
            await spawner.choose_flavor({"flavor": flavor_id})
            self.log.info("Portal launch of flavor %s for %s", flavor_id, user.name)
            await self.spawn_single_user(user, "", options={"flavor": flavor_id})
        self.set_header("Content-Type", "text/plain")
        self.finish("Success")

    async def _terminate(self, user: Any) -> None:
        spawner = user.spawners.get("")
        if spawner is None or not (spawner.active or _spawn_failure(spawner)):
            raise web.HTTPError(404, "You have no workspace to terminate.")
        if spawner.active:
            if spawner.pending == "stop":
                self.finish("Terminating workspace")
                return
            self.log.info("Portal terminate for %s", user.name)
            await self.stop_single_user(user, "")
        else:
            # A failed launch: forget it, so status goes back to Not Found.
            spawner._spawn_future = None
        self.set_header("Content-Type", "text/plain")
        self.finish("Terminated workspace")


class PortalProxyHandler(_Gen3Handler):
    """`proxy/`: the caller's own running server, whoever calls; the path never names a user."""

    async def get(self, rest: str | None = None) -> None:
        user = self.current_user
        if user is None:
            self.login_redirect()
            return
        if self.auth_kind == "bearer":
            # The portal's token is a login: the server's OAuth with the hub then needs no
            # second Fence round trip inside the frame.
            self.set_login_cookie(user)
            self.set_session_cookie_for(user)
        spawner = user.spawners.get("")
        if spawner is None or not spawner.ready:
            self.set_status(404)
            self.set_header("Content-Type", "text/plain")
            self.finish("You have no running workspace. Launch one from the portal's Workspace page.")
            return
        target = spawner.server.base_url.rstrip("/") + (rest or "/")
        if self.request.query:
            target += "?" + self.request.query
        if self.request.headers.get("Sec-Fetch-Mode", "navigate") != "navigate" and (rest or "/") == "/":
            # The portal's readiness probe is a fetch(), not a navigation. JupyterHub's servers
            # refuse cookie logins to non-navigation requests without an XSRF token (since
            # 4.1), so following the redirect would loop; answer whether the server answers.
            try:
                await AsyncHTTPClient().fetch(spawner.server.host + url_path_join(spawner.server.base_url, "api"), request_timeout=10)
            except Exception as e:
                self.log.info("proxy/ probe: %s's server is not answering yet (%s)", user.name, type(e).__name__)
                self.set_status(503)
                self.finish({"status": "Launching", "message": "Your workspace is starting; its server is not answering yet."})
                return
            self.finish({"status": "Running", "url": target})
            return
        self.redirect(target)


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
        self.finish(
            "<!doctype html><meta charset=utf-8><title>Workspace</title>"
            f"<p id='gen3-gate-error'>{_html(message)}</p>"
        )

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


def _html(text: str) -> str:
    import html

    return html.escape(str(text))


def hub_api_token(request: httputil.HTTPServerRequest) -> bool:
    """Whether the request carries a JupyterHub API token (scheme `token`; `bearer` is the portal's Fence token)."""
    return request.headers.get("Authorization", "").strip().lower().startswith("token ")


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


def configure_portal(c: Any, prefix: str = "", public_url: str = "", samesite: str = "Lax") -> None:
    """Hub config shared by the chart and the embedded mode: the Gen3 proxy (launcher API,
    gate), and cookies that are Secure behind TLS and SameSite so a cross-site page cannot
    ride on them, while the portal's same-site iframe still can."""
    c.JupyterHub.proxy_class = "gen3workspace.hub.launcher.Gen3Proxy"
    if prefix:
        c.Gen3Launcher.prefix = prefix
    if public_url:
        # Secure cookies and correct redirects even when TLS ends at the commons' revproxy.
        c.JupyterHub.public_url = public_url
    # The hub reads its cookie options from the tornado settings (there is no trait).
    settings = dict(c.JupyterHub.tornado_settings) if "tornado_settings" in c.JupyterHub else {}
    cookie_options = dict(settings.get("cookie_options") or {})
    cookie_options.setdefault("samesite", samesite)
    settings["cookie_options"] = cookie_options
    c.JupyterHub.tornado_settings = settings
    # The portal shows proxy/ in a same-origin frame: servers must allow 'self' as an
    # ancestor (JupyterHub's default is 'none'); the spawners' frame_ancestors add to it.
    environment = dict(c.Spawner.environment) if "environment" in c.Spawner else {}
    environment.setdefault("GEN3_FRAME_ANCESTORS", "'self'")
    c.Spawner.environment = environment
    # Users' servers get the same cookie options from the hub (JUPYTERHUB_COOKIE_OPTIONS).
