"""The data portal's launcher API: the `/lw-workspace/` calls hatchery answers today (`options`, `launch`, `status`, `proxy/`, `terminate`, pay models), served by the hub.

Why in the hub and not a JupyterHub service: `status` reports the real pod's conditions and
container states, which only the spawner (KubeSpawner's pod reflector, the local process)
knows, and `launch` must take exactly the flavor page's spawn path (`spawn_single_user`, the
spawner's flavor checks, the Fence API key). A service would see neither through the REST API.
Who the caller is comes from `gen3workspace.hub.identity`; who may reach a user's server is
decided in `gen3workspace.hub.gate` and carried by the engine, `gen3workspace.hub.engine`.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
from pathlib import Path
from typing import Any

from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.routing import Rule
from traitlets import Bool, Integer, List, Unicode, validate

from gen3workspace.hub.gate import RouteDecisionHandler, UserServerPage
from gen3workspace.hub.identity import BadAddress, BadAddressHandler, Gen3Identity, SessionHandler, TokenPage, _Gen3Handler, bearer_token
from gen3workspace.spawner.flavors import Flavor

# JupyterLab's own idle shutdown (spawner/singleuser/jupyter_server_config.py) when a flavor
# does not set GEN3_IDLE_TIMEOUT_SECONDS; kept equal to that file's default.
DEFAULT_IDLE_TIMEOUT_SECONDS = 3600
STATUSES = ("Not Found", "Launching", "Running", "Terminating", "Stopped", "Errored")


class Gen3Launcher(Gen3Identity):
    """Settings of the portal launcher API and of the decision in front of users' servers."""

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
        self._launch_locks: dict[str, asyncio.Lock] = {}

    # --- paths ---------------------------------------------------------------------------

    def handlers(self, base_url: str, hub_prefix: str) -> list[Any]:
        """Tornado rules, placed in front of all of JupyterHub's own."""
        rules: list[Any] = [
            # A control character in a path or next= is a 400 wherever it is sent, JupyterHub's pages included.
            Rule(BadAddress(), BadAddressHandler),
            # The engine's auth_request (never reachable through the engine itself).
            (url_path_join(hub_prefix, "gen3-route"), RouteDecisionHandler, {"launcher": self}),
            # What the engine hands back when the decision is no: the page, never the server.
            (rf"{base_url}user/(?P<name>[^/]+)(?P<rest>/.*)?", UserServerPage, {"launcher": self}),
        ]
        rules.append((url_path_join(hub_prefix, "gen3-session"), SessionHandler, {"launcher": self}))
        rules.append((url_path_join(hub_prefix, "token"), TokenPage))
        if self.enabled:
            p = self.prefix
            rules.append((rf"{p}proxy(?P<rest>/.*)?", PortalProxyHandler, {"launcher": self}))
            rules.append((rf"{p}(?P<call>options|launch|status|terminate|allpaymodels|paymodels|setpaymodel|resetpaymodels)", LauncherAPIHandler, {"launcher": self}))
            # Anything else under the prefix that is not the hub's or a user server's path.
            rules.append((rf"{p}(?!hub/|user/)(?P<call>.*)", LauncherAPIHandler, {"launcher": self}))
        return rules

    def launch_lock(self, username: str) -> asyncio.Lock:
        return self._launch_locks.setdefault(username, asyncio.Lock())

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
            # Hatchery leaves them empty once Running; clients other than the portal (and an
            # operator with curl) want the pod's real state then too.
            out.update(await self._launch_details(spawner, running=True))
            return out
        failure = _spawn_failure(spawner)
        if failure is not None:
            out["status"] = "Errored"
            out["message"] = getattr(failure, "jupyterhub_message", None) or getattr(failure, "log_message", None) or str(failure) or type(failure).__name__
        return out

    async def _launch_details(self, spawner: Any, exit_status: Any = None, running: bool = False) -> dict[str, Any]:
        """`conditions` and `containerStates`: the pod's own (Kubernetes), or the process's (embedded).

        `running`: the hub has seen the server answer, so a local process is Ready like a pod
        whose readiness probe passed.
        """
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
        ready = running and exit_status is None and bool(pid)
        if exit_status is not None:
            state: dict[str, Any] = {"terminated": {"exitCode": exit_status if isinstance(exit_status, int) else 1, "reason": "Exited"}}
        elif pid:
            started_at = _process_started_at(pid)
            state = {"running": {"startedAt": started_at} if started_at else {}}
        else:
            state = {"waiting": {"reason": "Starting"}}
        started = bool(pid) or exit_status is not None
        flag = "True" if ready else "False"
        return {
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True" if started else "False"},
                {"type": "ContainersReady", "status": flag},
                {"type": "Ready", "status": flag},
            ],
            "containerStates": [{"name": "notebook", "state": state, "ready": ready}],
        }


def _epoch_ms(when: datetime.datetime | None) -> int:
    if when is None:
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp() * 1000)


def _process_started_at(pid: int) -> str:
    """When a local server's process started, as Kubernetes writes `startedAt`; '' if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return ""
    when = datetime.datetime.fromtimestamp(boot + since_boot, datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


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



# --- handlers -------------------------------------------------------------------------------


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
        if self.auth_kind == "hub-token":
            # A JupyterHub API token acts with its own scopes: reading needs read:servers,
            # launching and terminating servers, each on the token owner's servers.
            needed = "read:servers" if self.request.method in ("GET", "HEAD") else "servers"
            if not self.has_scope(f"{needed}!user={user.name}"):
                raise web.HTTPError(403, f"This JupyterHub API token lacks the {needed} permission on your servers.")
        return user

    def check_csrf(self) -> None:
        # A bearer token that is also the browser's access_token cookie came from revproxy's
        # cookie-to-header conversion: a browser call, so it needs the header as well.
        from_cookie = self.get_cookie("access_token") == bearer_token(self.request)
        if self.auth_kind == "bearer" and not from_cookie:
            return
        if self.auth_kind == "hub-token":
            # A JupyterHub API token is sent by a script, never by a browser on its own.
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
        elif call == "":
            # The prefix itself is no call but a place a person opens (the hub's base URL, when
            # the launcher shares it): send them to the hub, which logs them in.
            self.redirect(self.hub.base_url)
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



def configure_portal(c: Any, prefix: str = "", public_url: str = "", samesite: str = "Lax") -> None:
    """Hub config shared by the chart and the embedded mode: the Gen3 proxy (the nginx engine,
    the launcher API and the decision in front of users' servers), and cookies that are Secure behind TLS and SameSite so a cross-site page cannot
    ride on them, while the portal's same-site iframe still can."""
    c.JupyterHub.proxy_class = "gen3workspace.hub.engine.Gen3Proxy"
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
