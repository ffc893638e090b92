"""What every Gen3 Workspace spawner shares: flavor choice and checks, Gen3 and proxy env, and the user's Fence API key."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import weakref
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urlparse

from jinja2 import Environment, FileSystemLoader, select_autoescape
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Bool, Integer, List, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from gen3workspace.hub.fenceanswers import FenceAnswerError, api_key_answer, jwt_claims

from .flavors import Catalogue, CatalogueError, Flavor, default_catalogue_path, format_memory, group_warnings, shared_watcher, user_may_launch
from .grammar import GrammarError, check_csp_sources, check_no_proxy, check_url_base, short

_templates = Environment(
    loader=FileSystemLoader(str(Path(__file__).with_name("templates"))),
    autoescape=select_autoescape(["html"]),
)

ALWAYS_NO_PROXY = ["localhost", "127.0.0.1", "::1", ".svc", ".cluster.local"]
# What a server with no commons is told. GEN3_API_KEY is the first place the Gen3 SDK looks:
# without it Gen3Auth() calls the cluster's workspace-token-service, which fails with a
# connection error naming a host the researcher has never heard of. Pointed at this file it
# fails at once, naming the file, which says what is missing and how to connect a commons.
NO_COMMONS_NOTE = Path(__file__).with_name("singleuser") / "no-gen3-commons-connected.txt"
NO_COMMONS_MESSAGE = (
    "No Gen3 commons is connected to this workspace (dev login): there is no Fence API key for "
    "the Gen3 SDK or gen3-client. To connect one, start it with --commons-url and --client-id; "
    f"see {NO_COMMONS_NOTE.name} (GEN3_API_KEY)."
)

# Tornado's shared client runs 10 requests at a time and queues the rest, so a storm of spawns
# would wait on each other's Fence calls; Fence gets its own client per event loop instead.
FENCE_MAX_CLIENTS = 200
_fence_clients: dict[asyncio.AbstractEventLoop, AsyncHTTPClient] = {}


def fence_http_client() -> AsyncHTTPClient:
    """The event loop's HTTP client for Fence calls, with room for a storm of concurrent spawns."""
    loop = asyncio.get_running_loop()
    client = _fence_clients.get(loop)
    if client is None:
        for closed in [old for old in _fence_clients if old.is_closed()]:
            del _fence_clients[closed]
        client = _fence_clients[loop] = AsyncHTTPClient(force_instance=True, max_clients=FENCE_MAX_CLIENTS)
    return client


def jwt_scope(token: str) -> list[str] | None:
    """The `scope` claim of a Fence JWT (not verified: only to explain a refusal early), or None if unreadable."""
    claims = jwt_claims(token)
    scope = claims.get("scope") if isinstance(claims, dict) else None
    if isinstance(scope, str):
        return scope.split()
    return [str(s) for s in scope] if isinstance(scope, list) else None


def fence_group_warnings(authenticator: Any, catalogue: Catalogue) -> list[str]:
    """allowed_groups with Fence login: Fence fills no groups for policy access (flavors.group_warnings)."""
    # Fence login is the authenticator with authz_groups (Gen3OAuthenticator); the dev login
    # and other authenticators fill groups themselves.
    if authenticator is None or not hasattr(authenticator, "authz_groups"):
        return []
    known = set(getattr(authenticator, "authz_groups", {}).values()) | set(getattr(authenticator, "admin_groups", ()) or ())
    return group_warnings(catalogue, known)

class FlavorError(web.HTTPError):
    """A flavor request the user cannot have: a 4xx with a message the user can act on.

    `logged`: the raiser has already written the line an operator needs; JupyterHub's own
    reports of the same error are then dropped (see `QuietRefusals`).
    """

    def __init__(self, status: int, message: str, logged: bool = False):
        super().__init__(status, message)
        # JupyterHub's error page and API show this text instead of the bare status line.
        self.jupyterhub_message = message
        self.reported = logged
        _LIVE_ERRORS.add(self)


_LIVE_ERRORS: "weakref.WeakSet[FlavorError]" = weakref.WeakSet()


class QuietRefusals(logging.Filter):
    """One line per refused spawn, not JupyterHub's four (two of them full tracebacks).

    JupyterHub logs a spawn hook's HTTPError with a traceback where it applies user options
    and again in the spawn form's handler, plus two "Error starting" lines. A FlavorError is
    an answer to the user, not a fault: its first report is kept as one line (without the
    traceback), later ones are dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        error = exc if isinstance(exc, FlavorError) else None
        if error is None and record.levelno >= logging.ERROR:
            try:
                message = record.getMessage()
            except Exception:
                return True
            error = next((e for e in list(_LIVE_ERRORS) if e.jupyterhub_message in message), None)
        if error is None:
            return True
        if error.reported:
            return False
        error.reported = True
        text = record.getMessage()
        if error.jupyterhub_message not in text:
            text = f"{text}: {error.jupyterhub_message}"
        record.msg, record.args, record.exc_info, record.exc_text = text, (), None, None
        return True


def quiet_refusals(logger: logging.Logger) -> None:
    """Put one QuietRefusals filter on `logger` (idempotent)."""
    if not any(isinstance(f, QuietRefusals) for f in logger.filters):
        logger.addFilter(QuietRefusals())


class Gen3SpawnerMixin(LoggingConfigurable):
    """Flavors, env and credentials for a JupyterHub Spawner subclass (Kubernetes or local)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # JupyterHub's User logs spawn errors on Tornado's application logger.
        quiet_refusals(self.log)
        quiet_refusals(logging.getLogger("tornado.application"))

    flavor_file = Unicode(
        config=True,
        help="""Path of the flavor catalogue (YAML). Edits are picked up without a hub restart;
        a broken edit keeps the last good catalogue. Default: the example catalogue in the package.""",
    )

    @default("flavor_file")
    def _flavor_file_default(self) -> str:
        return str(default_catalogue_path())

    commons_url = Unicode(
        config=True,
        help="Base URL of the Gen3 commons (GEN3_ENDPOINT in the user's server). Default: the authenticator's `commons_url`.",
    )

    @default("commons_url")
    def _commons_url_default(self) -> str:
        return getattr(self.authenticator, "commons_url", "") if self.authenticator else ""

    @validate("commons_url")
    def _strip(self, proposal: Any) -> str:
        try:
            return check_url_base(proposal.value.rstrip("/"), f"{type(self).__name__}.commons_url")
        except GrammarError as e:
            raise TraitError(str(e)) from None

    egress_proxy = Unicode(
        "",
        config=True,
        help="""URL of the whitelisting egress proxy, e.g. http://egress-proxy.gen3.svc.cluster.local:3128.
        Sets HTTP_PROXY, HTTPS_PROXY (and lowercase twins) in every server; empty: no proxy env.""",
    )
    no_proxy = List(
        Unicode(),
        config=True,
        help="""Extra hosts or domains (e.g. internal commons services) that bypass the egress proxy.
        NO_PROXY always also covers the hub, localhost, .svc and .cluster.local.""",
    )
    issue_api_key = Bool(
        True,
        config=True,
        help="""Mint a Fence API key for the user at spawn, hand it to the server as a
        credentials.json (GEN3_API_KEY points at it) and revoke it at stop. False: no key and no env.""",
    )
    api_key_scopes = List(
        Unicode(),
        ["data", "user"],
        config=True,
        help="Scopes of the API key minted for the user's server.",
    )
    api_key_lifetime = Integer(
        7 * 24 * 3600 + 3600,
        config=True,
        help="""Seconds a minted API key lives (Fence's `expires_in`, capped by its MAX_API_KEY_TTL).

        The key is revoked when the server stops; when that fails (Fence down, the user's login
        gone) it is retried at the next start or stop, and this is the bound on how long a key
        can outlive its server. Fence only exchanges a key for an access token that expires
        before the key does (the Gen3 SDK and gen3-client ask for 3600 s), so make it the
        servers' maximum age (the culler's `--max-age`) plus at least one hour; a server older
        than `api_key_lifetime - 3600` s loses its Gen3 credentials.
        """,
    )

    @validate("api_key_lifetime")
    def _check_api_key_lifetime(self, proposal: Any) -> int:
        if proposal.value < 3600 + 60:
            raise TraitError(
                f"Gen3SpawnerMixin.api_key_lifetime={proposal.value} is too short: Fence refuses to exchange a key "
                "for the SDK's 3600 s access token once the key has less than an hour left. Use at least 3660."
            )
        return proposal.value

    credentials_mount_path = Unicode(
        "/etc/gen3",
        config=True,
        help="Folder in the user's server where credentials.json is mounted read-only.",
    )
    frame_ancestors = List(
        Unicode(),
        config=True,
        help="""Origins (e.g. the data portal, https://data.example.org) allowed to embed the user's
        server in a frame; passed as GEN3_FRAME_ANCESTORS to the server's Content-Security-Policy.""",
    )
    @validate("no_proxy")
    def _check_no_proxy(self, proposal: Any) -> list[str]:
        try:
            return check_no_proxy(proposal.value, f"{type(self).__name__}.no_proxy")
        except GrammarError as e:
            raise TraitError(str(e)) from None

    @validate("frame_ancestors")
    def _check_frame_ancestors(self, proposal: Any) -> list[str]:
        try:
            return check_csp_sources(proposal.value, f"{type(self).__name__}.frame_ancestors")
        except GrammarError as e:
            raise TraitError(str(e)) from None

    export_to_workspace = Bool(
        True,
        config=True,
        help="""Copy the files of the user's newest portal exports (manifestservice manifests) into
        their server, each checked against indexd's size and md5 (docs/architecture.md, "Export to
        Workspace"). Runs inside the user's server with the user's API key; False: GEN3_EXPORT=off.""",
    )
    export_keep = Integer(
        5,
        config=True,
        help="How many of the user's newest manifests are kept in the server (GEN3_EXPORT_KEEP); older ones' exported files are removed.",
    )
    export_folder = Unicode(
        "data",
        config=True,
        help="""Folder of the exports in the user's server (GEN3_EXPORT_DIR), relative to the server's
        root folder (the drive); files go to <folder>/<commons host>/<manifest>/<file name>.""",
    )
    manifest_service_url = Unicode(
        "",
        config=True,
        help="""URL of manifestservice as the user's server reaches it (GEN3_MANIFEST_SERVICE_URL), e.g.
        http://manifestservice-service.default.svc.cluster.local. Empty: <commons_url>/manifests, as revproxy routes it.""",
    )
    indexd_url = Unicode(
        "",
        config=True,
        help="""URL of indexd as the user's server reaches it (GEN3_INDEXD_URL), e.g.
        http://indexd-service.default.svc.cluster.local. Empty: <commons_url>/index, as revproxy routes it.""",
    )

    @validate("export_keep")
    def _check_export_keep(self, proposal: Any) -> int:
        if proposal.value < 1:
            raise TraitError(f"Gen3SpawnerMixin.export_keep={proposal.value}: keep at least 1 manifest, or set export_to_workspace = False.")
        return proposal.value

    @validate("manifest_service_url", "indexd_url")
    def _check_data_service_url(self, proposal: Any) -> str:
        value = proposal.value.strip().rstrip("/")
        parts = urlparse(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or any(c.isspace() for c in value)):
            raise TraitError(f"{type(self).__name__}.{proposal.trait.name}: {short(value, 80)} is not an http(s) URL such as http://{proposal.trait.name.removesuffix('_url').replace('_', '')}-service")
        return value

    @validate("export_folder")
    def _check_export_folder(self, proposal: Any) -> str:
        value = proposal.value.strip()
        if not value or value.startswith("/") or ".." in value.split("/") or any(ord(c) < 32 for c in value):
            raise TraitError(f"{type(self).__name__}.export_folder: {short(value, 80)!r} must be a folder inside the server's root folder, such as data")
        return value

    workspace_namespace = Unicode(
        config=True,
        help="Value of NAMESPACE in the user's server (the commons' namespace, used by the Gen3 SDK). Default: the spawner's namespace or 'default'.",
    )

    @default("workspace_namespace")
    def _workspace_namespace_default(self) -> str:
        return getattr(self, "namespace", "") or "default"

    flavor: Flavor | None = None
    _api_key_id: str | None = None
    # The user's auth state for the spawn in progress: JupyterHub decrypts it on every read, and
    # a spawn needs it for the flavor checks and the key. Set by the first read, dropped at the end.
    _spawn_auth_state: dict[str, Any] | None = None
    # Ids of keys whose revocation failed; the keys themselves are never kept.
    _pending_revocations: tuple[str, ...] = ()

    # --- the catalogue and who may launch what ----------------------------------------

    def catalogue(self) -> Catalogue:
        watcher = shared_watcher(self.flavor_file, self.log)
        if watcher.warnings is None:
            # The authenticator, not this spawner: the watcher outlives every user's spawner.
            watcher.warnings = functools.partial(fence_group_warnings, self.authenticator)
        try:
            return watcher.current()
        except CatalogueError as e:
            self.log.error("%s", e)
            raise web.HTTPError(503, "The flavor catalogue could not be loaded; the workspace administrators have been told in the hub log.") from None

    _in_start = False

    def _spawning(self) -> bool:
        # JupyterHub marks the whole spawn (options hook, pre-spawn hook, start) pending and
        # clears the mark when it ends, also when it fails before start() runs.
        return bool(getattr(self, "_start_pending", False) or self._in_start)

    async def auth_state(self) -> dict[str, Any] | None:
        """The user's auth state, read once per spawn (outside a spawn: every time)."""
        if self._spawn_auth_state is not None and self._spawning():
            return self._spawn_auth_state
        state = await self.user.get_auth_state()
        self._spawn_auth_state = state if self._spawning() else None
        return state

    @contextlib.asynccontextmanager
    async def spawn_scope(self) -> AsyncIterator[None]:
        """Around start(): reuse the auth state the options hook read, forget it at the end."""
        if not getattr(self, "_start_pending", False):
            self._spawn_auth_state = None  # start() called directly: nothing read yet is ours
        self._in_start = True
        try:
            yield
        finally:
            self._in_start = False
            self._spawn_auth_state = None

    async def user_context(self) -> tuple[list[str], dict[str, Any]]:
        """The user's JupyterHub groups (synced from Fence) and Fence authz."""
        groups = [g.name for g in getattr(self.user, "groups", []) or []]
        authz: dict[str, Any] = {}
        try:
            state = await self.auth_state()
        except Exception:  # no auth_state (dev login, or encryption unavailable)
            state = None
        if state:
            info = state.get(getattr(self.authenticator, "user_auth_state_key", "oauth_user")) or {}
            authz = info.get("authz") or {}
        return groups, authz

    def _perm(self) -> tuple[str, str]:
        a = self.authenticator
        return getattr(a, "workspace_service", "jupyterhub"), getattr(a, "workspace_method", "access")

    async def allowed_flavors(self) -> list[Flavor]:
        groups, authz = await self.user_context()
        service, method = self._perm()
        return [f for f in self.catalogue().flavors if user_may_launch(f, groups, authz, service, method)]

    async def choose_flavor(self, options: dict[str, Any] | None) -> Flavor:
        """The flavor `options` asks for, checked again server-side; 4xx if unknown or forbidden."""
        catalogue = self.catalogue()
        options = options or {}
        requested = options.get("flavor", options.get("profile"))
        if isinstance(requested, list):  # raw form data
            requested = requested[0] if requested else None
        if requested in (None, ""):
            allowed = await self.allowed_flavors()
            if not allowed:
                raise FlavorError(403, "There is no flavor you are allowed to launch. Ask the commons administrators for access.")
            default = catalogue.get(catalogue.default)
            return default if default in allowed else allowed[0]
        if not isinstance(requested, str):
            raise FlavorError(400, "The flavor must be given by name, e.g. {\"flavor\": \"python-small\"}.")
        flavor = catalogue.get(requested)
        if flavor is None:
            names = ", ".join(f.name for f in await self.allowed_flavors())
            # Cut: the name is whatever the request carried, possibly a megabyte of it.
            raise FlavorError(400, f"There is no flavor called {short(requested, 80)}. Flavors you can launch: {names or 'none'}.")
        groups, authz = await self.user_context()
        service, method = self._perm()
        if not user_may_launch(flavor, groups, authz, service, method):
            self.log.warning("%s asked for flavor %s, which they may not launch", self.user.name, flavor.name)
            who = f" (members of {', '.join(flavor.allowed_groups)})" if flavor.allowed_groups else ""
            raise FlavorError(403, f"You are not allowed to launch the flavor {flavor.name!r}{who}.", logged=True)
        return flavor

    # --- the flavor page --------------------------------------------------------------

    local_mode_note: str = ""

    async def get_options_form(self) -> str:
        flavors = await self.allowed_flavors()
        catalogue = self.catalogue()
        previous = (getattr(self, "user_options", None) or {}).get("flavor")
        selected = previous if any(f.name == previous for f in flavors) else catalogue.default
        if not any(f.name == selected for f in flavors) and flavors:
            selected = flavors[0].name
        return _templates.get_template("flavor_form.html").render(
            flavors=flavors, selected=selected, format_memory=format_memory, local_note=self.local_mode_note
        )

    @default("options_form")
    def _options_form_default(self) -> Any:
        # Callable, so JupyterHub shows the form; the content comes from get_options_form.
        return lambda spawner: spawner.get_options_form()

    @default("apply_user_options")
    def _apply_user_options_default(self) -> Any:
        # JupyterHub's earliest per-spawn hook: a forged flavor is refused before the
        # pre-spawn hook, key minting or any Kubernetes call; start() checks again.
        async def apply(spawner: "Gen3SpawnerMixin", user_options: dict[str, Any]) -> None:
            spawner._spawn_auth_state = None  # a new spawn reads the auth state afresh
            spawner.flavor = await spawner.choose_flavor(user_options)

        return apply

    @default("options_from_form")
    def _options_from_form_default(self) -> Any:
        return lambda formdata: {"flavor": (formdata.get("flavor") or [""])[0]}

    # --- env ----------------------------------------------------------------------------

    def no_proxy_hosts(self) -> list[str]:
        hosts: list[str] = []
        for url in (getattr(self.hub, "api_url", ""), getattr(self.hub, "url", "")):
            host = urlparse(url).hostname if url and "://" in url else None
            if host:
                hosts.append(host)
        hosts += ALWAYS_NO_PROXY + list(self.no_proxy)
        return list(dict.fromkeys(h for h in hosts if h))

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.update(self.gen3_env())
        return env

    def gen3_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.flavor:
            env.update(self.flavor.env)
            env["WORKSPACE_FLAVOR"] = self.flavor.name
        if self.commons_url:
            env["GEN3_ENDPOINT"] = self.commons_url
        else:
            env["GEN3_API_KEY"] = str(NO_COMMONS_NOTE)
            # Read by the image's gen3-client profile hook, and by anyone reading `env`.
            env["GEN3_NO_COMMONS"] = NO_COMMONS_MESSAGE
        env["NAMESPACE"] = self.workspace_namespace
        if self.egress_proxy:
            for name in ("HTTP_PROXY", "HTTPS_PROXY"):
                env[name] = env[name.lower()] = self.egress_proxy
        no_proxy = ",".join(self.no_proxy_hosts())
        env["NO_PROXY"] = env["no_proxy"] = no_proxy
        if self.frame_ancestors:
            env["GEN3_FRAME_ANCESTORS"] = " ".join(self.frame_ancestors)
        if self._api_key_id:
            env["GEN3_API_KEY"] = f"{self.credentials_mount_path.rstrip('/')}/credentials.json"
        # Read by the Export to Workspace extension in the server (spawner/singleuser/gen3ws_export.py).
        env["GEN3_EXPORT"] = "on" if self.export_to_workspace else "off"
        env["GEN3_EXPORT_KEEP"] = str(self.export_keep)
        env["GEN3_EXPORT_DIR"] = self.export_folder
        if self.manifest_service_url:
            env["GEN3_MANIFEST_SERVICE_URL"] = self.manifest_service_url
        if self.indexd_url:
            env["GEN3_INDEXD_URL"] = self.indexd_url
        return env

    # --- the Fence API key ---------------------------------------------------------------

    @property
    def fence_url(self) -> str:
        return getattr(self.authenticator, "fence_url", "") or (f"{self.commons_url}/user" if self.commons_url else "")

    def _wants_api_key(self) -> bool:
        return self.issue_api_key and bool(self.fence_url) and hasattr(self.authenticator, "refresh_user")

    async def _access_token(self) -> str | None:
        """The user's current Fence access token, refreshed first if it is about to expire."""
        state = await self.auth_state()
        if not state:
            return None
        authenticator = self.authenticator
        expires_soon = getattr(authenticator, "_expires_soon", None)
        if expires_soon and expires_soon(state):
            refreshed = await authenticator.refresh_user(self.user)
            if isinstance(refreshed, dict) and refreshed.get("auth_state"):
                state = refreshed["auth_state"]
                await self.user.save_auth_state(state)
                if self._spawn_auth_state is not None:
                    self._spawn_auth_state = state
        return state.get("access_token")

    async def _fence(self, method: str, path: str, token: str | None, body: Any = None) -> Any:
        """A JSON call to Fence, as the user when `token` is given (the API-key exchange needs none)."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = HTTPRequest(
            f"{self.fence_url}{path}",
            method=method,
            headers=headers,
            body=json.dumps(body) if body is not None else None,
            request_timeout=20,
            allow_nonstandard_methods=True,
        )
        resp = await fence_http_client().fetch(req)
        try:
            return json.loads(resp.body) if resp.body else None
        except ValueError:
            # A maintenance page with status 200 is not an answer.
            raise HTTPClientError(502, "Fence answered with something that is not JSON") from None

    MISSING_CREDENTIALS_SCOPE = (
        "Fence will not issue Gen3 credentials for your workspace: the hub's login does not carry the "
        "'credentials' scope, which Fence requires for API keys. This is a set-up problem of the "
        "workspace, not of your account: the commons administrators must add 'credentials' to Fence's "
        "CLIENT_ALLOWED_SCOPES, give the hub's client that scope (fence-create client-modify --client <name> "
        "--append --allowed-scopes credentials) and keep it in Gen3OAuthenticator.scope "
        "(see docs/authentication.md). After that, log out and in again."
    )

    async def mint_api_key(self) -> dict[str, str] | None:
        """A new Fence API key for this server, bounded by `api_key_lifetime`; None when keys are disabled."""
        if not self._wants_api_key():
            return None
        if self._pending_revocations:
            await self.revoke_api_key()
        token = await self._access_token()
        if not token:
            raise web.HTTPError(403, "Your login has no Fence access token; log out and in again to get Gen3 credentials.")
        scope = jwt_scope(token)
        if scope is not None and "credentials" not in scope:
            self.log.error("Cannot mint an API key for %s: the access token lacks the 'credentials' scope (token scopes: %s)", self.user.name, " ".join(scope))
            raise FlavorError(403, self.MISSING_CREDENTIALS_SCOPE, logged=True)
        request = asyncio.ensure_future(
            self._fence("POST", f"/credentials/api/?expires_in={int(self.api_key_lifetime)}", token, {"scope": list(self.api_key_scopes)})
        )
        try:
            # Shielded: when the spawn is cancelled (start timeout) while Fence mints, the
            # request still completes and the key it brings is revoked, never left behind.
            key = await asyncio.shield(request)
        except asyncio.CancelledError:
            request.add_done_callback(self._revoke_late_key)
            raise
        except HTTPClientError as e:
            self.log.error("Fence refused an API key for %s: HTTP %s", self.user.name, e.code)
            raise web.HTTPError(
                502 if e.code >= 500 or e.code == 599 else 403,
                f"Fence did not issue Gen3 credentials for your workspace (HTTP {e.code}). Try again, or log out and in again.",
            ) from None
        except OSError as e:
            self.log.error("Fence unreachable while minting an API key for %s: %s", self.user.name, e)
            raise web.HTTPError(503, "The commons' Fence service is not answering, so your workspace cannot get Gen3 credentials. Try again in a few minutes.") from None
        try:
            key = api_key_answer(key)
        except FenceAnswerError as e:
            self.log.error("Unusable API key answer from Fence for %s: %s", self.user.name, e)
            raise web.HTTPError(502, f"{e}, so your workspace cannot get Gen3 credentials. Try again in a few minutes.") from None
        self._api_key_id = key["key_id"]
        self.log.info("Issued Fence API key %s for %s", key["key_id"], self.user.name)
        return {"key_id": key["key_id"], "api_key": key["api_key"]}

    _late_revocations: set[asyncio.Task[None]] = set()

    def _revoke_late_key(self, request: asyncio.Future[Any]) -> None:
        """A key that arrived after its spawn was cancelled: revoke it with itself."""
        if request.cancelled() or request.exception() is not None:
            return
        try:
            key = api_key_answer(request.result())
        except FenceAnswerError:
            return
        self.log.warning("Fence API key %s of %s arrived after its spawn was cancelled; revoking it", key["key_id"], self.user.name)

        async def revoke() -> None:
            try:
                await self._delete_key(key["key_id"])
                self.log.info("Revoked Fence API key %s of %s", key["key_id"], self.user.name)
            except Exception as e:
                detail = f"HTTP {e.code}" if isinstance(e, HTTPClientError) else type(e).__name__
                self.log.warning("Could not revoke the late Fence API key %s of %s (%s); will retry at the next start or stop.", key["key_id"], self.user.name, detail)
                self._pending_revocations = (*self._pending_revocations, key["key_id"])

        # Kept referenced until done: the event loop holds tasks only weakly.
        task = asyncio.ensure_future(revoke())
        self._late_revocations.add(task)
        task.add_done_callback(self._late_revocations.discard)

    async def revoke_api_key(self) -> None:
        """Revoke this server's key and any earlier ones whose revocation failed.

        Only the user's own login can revoke (Fence wants the `credentials` scope, which a token
        made from the key itself never has). When that is gone (refresh token expired) or Fence
        is down, the key id is kept in the spawner's state and retried at the next start or stop;
        the key expires by itself after `api_key_lifetime` at the latest. A failure never blocks
        the stop.
        """
        current, self._api_key_id = self._api_key_id, None
        failed: list[str] = []
        for key_id in dict.fromkeys([*self._pending_revocations, *([current] if current else [])]):
            try:
                await self._delete_key(key_id)
                self.log.info("Revoked Fence API key %s of %s", key_id, self.user.name)
            except Exception as e:
                detail = f"HTTP {e.code}" if isinstance(e, HTTPClientError) else (str(e) if isinstance(e, web.HTTPError) else type(e).__name__)
                self.log.warning(
                    "Could not revoke Fence API key %s of %s (%s); will retry at the next start or stop. "
                    "It expires by itself at most %s s after it was minted (api_key_lifetime).",
                    key_id, self.user.name, detail, self.api_key_lifetime,
                )
                failed.append(key_id)
        self._pending_revocations = tuple(failed)

    async def _delete_key(self, key_id: str) -> None:
        token = await self._access_token()
        if not token:
            raise web.HTTPError(401, "the user's Fence login is gone")
        try:
            await self._fence("DELETE", f"/credentials/api/{key_id}", token)
        except HTTPClientError as e:
            # 404: Fence no longer lists the key (already revoked): nothing left to do.
            if e.code != 404:
                raise

    @staticmethod
    def credentials_json(key: dict[str, str]) -> str:
        """The credentials.json the Gen3 portal hands out; the Gen3 SDK and gen3-client read it."""
        return json.dumps({"key_id": key["key_id"], "api_key": key["api_key"]})

    # --- state: the key id must survive a hub restart so the key can still be revoked ---

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self._api_key_id:
            state["gen3_api_key_id"] = self._api_key_id
        if self._pending_revocations:
            state["gen3_pending_revocations"] = sorted(self._pending_revocations)
        if self.flavor:
            state["gen3_flavor"] = self.flavor.name
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._api_key_id = state.get("gen3_api_key_id") or self._api_key_id
        self._pending_revocations = tuple(state.get("gen3_pending_revocations") or ()) or self._pending_revocations
        name = state.get("gen3_flavor")
        if name:
            try:
                self.flavor = self.catalogue().get(name) or self.flavor
            except web.HTTPError:
                pass

    async def _cleanup_credentials(self) -> None:
        """Revoke the key and remove where it was stored; each spawner says where that is."""
        await self.revoke_api_key()

    async def run_post_stop_hook(self) -> None:
        # JupyterHub runs this after every stop, also when the server died by itself and
        # stop() was never called; the key id deliberately survives clear_state() for it.
        try:
            await self._cleanup_credentials()
        finally:
            result = super().run_post_stop_hook()
            if inspect.isawaitable(result):
                await result

    def progress_intro(self) -> dict[str, Any]:
        f = self.flavor
        if not f:
            return {"progress": 2, "message": "Preparing your workspace"}
        gpu = f", {f.gpu} GPU" if f.gpu else ""
        return {
            "progress": 2,
            "message": f"Launching flavor {f.display_name} ({f.cpu_limit:g} CPU, {format_memory(f.memory_limit_bytes)}{gpu})",
        }

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        # The flavor's name first, then the spawner's own events.
        yield self.progress_intro()
        async for event in super().progress():
            yield event

