"""Gen3OAuthenticator: JupyterHub login through a Gen3 commons' Fence (OAuth2/OIDC)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthCallbackHandler, OAuthLogoutHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Bool, Dict, Integer, TraitError, Unicode, default, validate

from gen3workspace.hub import fenceanswers, logscrub
from gen3workspace.hub.fenceanswers import FenceAnswerError, jwt_claims
from gen3workspace.hub.identity import FenceBearer, WorkspaceLoginMixin, WorkspaceLogoutMixin
from gen3workspace.hub.pages import WorkspaceRefused, leave_frame
from gen3workspace.spawner.common import FENCE_MAX_CLIENTS
from gen3workspace.spawner.flavors import has_permission
from gen3workspace.spawner.grammar import GrammarError, check_url_base

# What a Fence admin may do in the hub (admin_from_fence): the admin page, who is using the
# workspace, and starting and stopping servers. Not JupyterHub's "admin" role, which also opens
# every user's server (access:servers, shares), mints tokens as them (tokens) and reads their
# auth_state (admin:users), each of which hands over the user's Fence API key or tokens.
FENCE_ADMIN_ROLE = "gen3-fence-admin"
# Membership comes only from Fence's is_admin (get_user_groups), never from a Fence group.
FENCE_ADMIN_GROUP = "gen3-fence-admins"
FENCE_ADMIN_SCOPES = ("admin-ui", "list:users", "read:users", "servers", "list:groups", "read:groups", "read:hub")


def add_fence_admin_role(c: Any) -> None:
    """Define the Fence admins' role in JupyterHub config `c` (`load_roles`), replacing an older copy."""
    roles = [r for r in (c.JupyterHub.load_roles if "load_roles" in c.JupyterHub else []) if r.get("name") != FENCE_ADMIN_ROLE]
    c.JupyterHub.load_roles = [
        *roles,
        {
            "name": FENCE_ADMIN_ROLE,
            "description": "Fence admins: the admin page, users' server status, start and stop servers; not users' servers",
            "scopes": list(FENCE_ADMIN_SCOPES),
            "groups": [FENCE_ADMIN_GROUP],
        },
    ]


def _fence_unreachable(e: BaseException) -> bool:
    """Connection failures, timeouts and 5xx: Fence is down, not the user's fault."""
    if isinstance(e, HTTPClientError):
        return e.code == 599 or e.code >= 500
    # An answer of the wrong shape is Fence misbehaving: like an outage, not the user's fault.
    return isinstance(e, (OSError, TimeoutError, FenceAnswerError))


class Gen3LogoutHandler(WorkspaceLogoutMixin, OAuthLogoutHandler):
    """Logs out of the hub (and the workspace session), then sends the browser through Fence's logout to end that session too."""

    async def render_logout_page(self) -> None:
        target = self.authenticator.fence_logout_redirect()
        if target:
            if not leave_frame(self, target):
                self.redirect(target)
            return
        await super().render_logout_page()


class Gen3CallbackHandler(WorkspaceLoginMixin, OAuthCallbackHandler):
    """Fence's redirect back to the hub: the login, and the workspace session with it."""


class Gen3OAuthenticator(GenericOAuthenticator):
    """Authenticate Gen3 commons users with Fence and admit those allowed to use the Workspace."""

    logout_handler = Gen3LogoutHandler
    callback_handler = Gen3CallbackHandler

    commons_url = Unicode(
        "",
        config=True,
        help="""Base URL of the Gen3 commons, e.g. https://data.example.org.

        Every Fence URL (authorize, token, userinfo, logout, API keys) is derived from it as
        `<commons_url>/user/...`; each can still be overridden on its own.
        """,
    )

    @validate("commons_url")
    def _strip_commons_url(self, proposal: Any) -> str:
        try:
            return check_url_base(proposal.value.rstrip("/"), "Gen3OAuthenticator.commons_url")
        except GrammarError as e:
            raise TraitError(str(e)) from None

    fence_url = Unicode(
        config=True,
        help="Base URL of Fence. Default: `<commons_url>/user`.",
    )

    @default("fence_url")
    def _fence_url_default(self) -> str:
        return f"{self.commons_url}/user" if self.commons_url else ""

    commons_name = Unicode(
        "the Gen3 commons",
        config=True,
        help="Name of the commons shown on the login button ('Sign in with <commons_name>').",
    )

    workspace_resource = Unicode(
        "/workspace",
        config=True,
        help="Fence/arborist resource path a user needs a permission on to use the Workspace at all.",
    )
    workspace_service = Unicode(
        "jupyterhub",
        config=True,
        help="Service part of the permission required on `workspace_resource`.",
    )
    workspace_method = Unicode(
        "access",
        config=True,
        help="Method part of the permission required on `workspace_resource`.",
    )
    require_workspace_permission = Bool(
        True,
        config=True,
        help="""Admit only users whose Fence `authz` grants `workspace_method` for
        `workspace_service` on `workspace_resource`.

        Set False for a commons without such a policy; then the usual OAuthenticator allow
        settings decide (`allow_all`, `allowed_users`, `allowed_groups`).
        """,
    ).tag(allow_config=True)  # it gates every login: JupyterHub's "No allow config" warning is wrong then
    admin_from_fence = Bool(
        True,
        config=True,
        help="""Give users whose Fence userinfo says `is_admin: true` the hub role `gen3-fence-admin`
        (group `gen3-fence-admins`): the admin page, users' server status, starting and stopping
        servers, but not opening users' servers, tokens or auth_state. The role itself is defined
        by `add_fence_admin_role(c)`, which the chart and `gen3-workspace up` call.
        """,
    )
    fence_admin_server_access = Bool(
        False,
        config=True,
        help="""Make Fence admins full JupyterHub admins instead (with `admin_from_fence`), who can
        reach every user's server and so use that user's Fence API key. `admin_users` and
        `admin_groups` always make full admins. With the launcher's server isolation on, they
        reach other users' servers by JupyterHub API token only, never in their browser.
        """,
    )
    authz_groups = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""Map Fence authz resource paths to JupyterHub group names, e.g.
        `{"/workspace-flavors/gpu": "gpu-users"}` (not under /workspace, whose subresources arborist
        grants to everyone holding it). A user holding any permission on the resource is put
        in the group, alongside the groups Fence lists in userinfo `groups`. Flavors restrict
        access by group.
        """,
    )
    refresh_margin_seconds = Integer(
        300,
        config=True,
        help="""Refresh the Fence access token when it expires within this many seconds, so a
        spawn never starts with a token that dies while the API key is minted.

        Capped at half the token's own lifetime (its `exp` minus `iat`), so a commons with short
        tokens does not get a token that already counts as expiring: a spawn refreshes at most once.
        """,
    )
    end_fence_session = Bool(
        True,
        config=True,
        help="On hub logout, also send the browser through Fence's logout so the commons session ends.",
    )
    post_logout_url = Unicode(
        config=True,
        help="Where Fence sends the browser after logout. Default: the commons portal (`commons_url`).",
    )

    @default("post_logout_url")
    def _post_logout_url_default(self) -> str:
        return self.commons_url + "/" if self.commons_url else ""

    fence_logout_url = Unicode(
        config=True,
        help="Fence's logout endpoint. Default: `<fence_url>/logout`.",
    )

    @default("fence_logout_url")
    def _fence_logout_url_default(self) -> str:
        return f"{self.fence_url}/logout" if self.fence_url else ""

    # --- OAuthenticator settings derived from the commons -----------------------------

    @default("authorize_url")
    def _authorize_url_default(self) -> str:
        return f"{self.fence_url}/oauth2/authorize" if self.fence_url else ""

    @default("token_url")
    def _token_url_default(self) -> str:
        return f"{self.fence_url}/oauth2/token" if self.fence_url else ""

    @default("userdata_url")
    def _userdata_url_default(self) -> str:
        return f"{self.fence_url}/user" if self.fence_url else ""

    @default("scope")
    def _scope_default(self) -> list[str]:
        # Fence mints, lists and deletes API keys only for tokens with `credentials`.
        return ["openid", "user", "data", "credentials"]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Here, because the hub creates its authenticator after its log handlers and before
        # the first request: from then on no hub line carries a code, state, token or key.
        logscrub.install(self.log)
        if "credentials" not in self.scope:
            self.log.warning(
                "Gen3OAuthenticator.scope %s lacks 'credentials': Fence will refuse to mint the users' API keys, "
                "so every spawn that issues Gen3 credentials will fail. Add it (and register the Fence client "
                "with --allowed-scopes ... credentials), or turn keys off with issue_api_key = False.",
                self.scope,
            )

    @default("basic_auth")
    def _basic_auth_default(self) -> bool:
        # Fence registers clients with token_endpoint_auth_method client_secret_basic.
        return True

    @default("username_claim")
    def _username_claim_default(self) -> str:
        return "username"

    @default("login_service")
    def _login_service_default(self) -> str:
        return self.commons_name

    @default("http_client")
    def _http_client_default(self) -> AsyncHTTPClient:
        # OAuthenticator's client runs 10 requests at a time: in a storm of logins and token
        # refreshes the rest queue and time out ("Timeout in request queue").
        return AsyncHTTPClient(force_instance=True, max_clients=FENCE_MAX_CLIENTS, defaults=dict(validate_cert=self.validate_server_cert))

    @default("refresh_pre_spawn")
    def _refresh_pre_spawn_default(self) -> bool:
        return False

    @validate("refresh_pre_spawn")
    def _no_refresh_pre_spawn(self, proposal: Any) -> bool:
        # JupyterHub runs that refresh before it marks the spawn pending, so a slow Fence would
        # show "Server not running" on the spawn-pending page. The spawner refreshes the token
        # itself, inside start() (pending), right before it mints the API key.
        if proposal.value:
            self.log.warning("Gen3OAuthenticator.refresh_pre_spawn is ignored: the spawner refreshes the Fence token itself while the spawn is pending.")
        return False

    @default("enable_auth_state")
    def _enable_auth_state_default(self) -> bool:
        # The spawner needs the access token to mint the user's API key.
        return True

    @default("manage_groups")
    def _manage_groups_default(self) -> bool:
        return True

    @default("auth_state_groups_key")
    def _auth_state_groups_key_default(self) -> Any:
        return self.fence_groups

    # --- who gets in -----------------------------------------------------------------

    def required_permission(self) -> str:
        return (
            f"method '{self.workspace_method}' for service '{self.workspace_service}' "
            f"on resource '{self.workspace_resource}'"
        )

    def userinfo(self, auth_state: dict[str, Any] | None) -> dict[str, Any]:
        return (auth_state or {}).get(self.user_auth_state_key) or {}

    def has_workspace_permission(self, auth_state: dict[str, Any] | None) -> bool:
        authz = self.userinfo(auth_state).get("authz") or {}
        return has_permission(authz, self.workspace_resource, self.workspace_service, self.workspace_method)

    def fence_groups(self, auth_state: dict[str, Any]) -> list[str]:
        """Fence's `groups` plus the groups `authz_groups` maps the user's resources to."""
        info = self.userinfo(auth_state)
        groups = {str(g) for g in info.get("groups") or () if g}
        authz = info.get("authz") or {}
        groups.update(group for resource, group in self.authz_groups.items() if authz.get(resource))
        return sorted(groups)

    async def update_auth_model(self, auth_model: dict[str, Any]) -> dict[str, Any]:
        if self.admin_from_fence:
            # Explicit False, not None: None would leave a revoked Fence admin a hub admin.
            full = self.fence_admin_server_access and self.is_fence_admin(auth_model.get("auth_state"))
            auth_model["admin"] = bool(auth_model.get("admin") or full)
        return auth_model

    def is_fence_admin(self, auth_state: dict[str, Any] | None) -> bool:
        return self.userinfo(auth_state).get("is_admin") is True

    async def get_user_groups(self, auth_state: dict[str, Any]) -> set[str]:
        groups = set(await super().get_user_groups(auth_state))
        groups.discard(FENCE_ADMIN_GROUP)
        if self.admin_from_fence and self.is_fence_admin(auth_state):
            groups.add(FENCE_ADMIN_GROUP)
        return groups

    async def check_allowed(self, username: str, auth_model: dict[str, Any] | None) -> bool:
        if auth_model is None:
            return True
        if not self.require_workspace_permission:
            return await super().check_allowed(username, auth_model)
        if self.has_workspace_permission(auth_model.get("auth_state")):
            return True
        self.log.warning("Refusing %s: no %s in Fence authz", username, self.required_permission())
        # Raised rather than returned so the 403 page names what is missing.
        raise WorkspaceRefused(
            username,
            f"Your account {username} is not allowed to use the Workspace: it needs the "
            f"{self.required_permission()} in the commons' authorization policy. "
            "Ask the commons administrators to grant it, then log in again.",
        )

    # --- talking to Fence ------------------------------------------------------------

    async def fetch(self, req: Any, label: str = "fetching", parse_json: bool = True, **kwargs: Any) -> Any:
        """One request to Fence: failures logged by status only (an answer can hold tokens), JSON checked to be JSON."""
        try:
            resp = await self.http_client.fetch(req, **kwargs)
        except HTTPClientError as e:
            self.log.error("Fence answered HTTP %s to %s %s (%s)", e.code, req.method, req.url.split("?")[0], label)
            raise
        if not parse_json:
            return resp
        return fenceanswers.decode_json(resp.body, label)

    async def get_token_info(self, handler: Any, params: dict[str, Any]) -> dict[str, Any]:
        # Not upstream's: it puts the whole token answer in its error message and takes any shape.
        answer = await self.httpfetch(
            self.token_url,
            label="token",
            method="POST",
            headers=self.build_token_info_request_headers(),
            body=urlencode(params).encode("utf-8"),
            validate_cert=self.validate_server_cert,
        )
        if isinstance(answer, dict) and answer.get("error"):
            self.log.warning("Fence refused the token request: %s", str(answer.get("error"))[:80])
            raise web.HTTPError(403, "Fence did not return a usable access token.")
        return fenceanswers.token_answer(answer)

    async def token_to_user(self, token_info: dict[str, Any]) -> dict[str, Any]:
        return fenceanswers.userinfo_answer(await super().token_to_user(token_info), str(self.username_claim))

    async def authenticate(self, handler: Any, data: Any = None, **kwargs: Any) -> dict[str, Any] | None:
        if isinstance(data, FenceBearer):
            # A login with a Fence access token the caller already holds (the portal's, see
            # Gen3Identity.identify): Fence's /user/user instead of the code exchange; the rest
            # of get_authenticated_user is the same as for the OAuth login. Errors go to the
            # caller, which answers them as a bearer call (401/503), not as a login page.
            return await self._token_to_auth_model({"access_token": data.token, "token_type": "Bearer"})
        try:
            return await super().authenticate(handler, data, **kwargs)
        except FenceAnswerError as e:
            self.log.error("Fence gave an unusable answer during login: %s", e)
            raise web.HTTPError(
                502,
                f"The commons' login service (Fence) gave an answer the workspace cannot use: {e}. "
                "Please try again in a few minutes; if it keeps happening, tell the commons administrators.",
            ) from None
        except Exception as e:
            if _fence_unreachable(e):
                self.log.error("Fence at %s unreachable during login: %s", self.fence_url, e)
                raise web.HTTPError(
                    503,
                    f"The commons' login service (Fence at {self.fence_url}) is not answering right "
                    "now, so you cannot be logged in. Please try again in a few minutes.",
                ) from None
            if isinstance(e, HTTPClientError):
                self.log.warning("Fence refused the login code exchange: HTTP %s", e.code)
                raise web.HTTPError(
                    403, "Fence refused this login (the code may have expired). Please log in again."
                ) from None
            raise

    def refresh_margin(self, claims: dict[str, Any]) -> float:
        """`refresh_margin_seconds`, capped at half the token's lifetime so a fresh token never counts as expiring."""
        exp, iat = claims.get("exp"), claims.get("iat")
        if isinstance(exp, (int, float)) and isinstance(iat, (int, float)) and exp > iat:
            return min(self.refresh_margin_seconds, (exp - iat) / 2)
        return self.refresh_margin_seconds

    def _expires_soon(self, auth_state: dict[str, Any]) -> bool:
        claims = jwt_claims(auth_state.get("access_token"))
        exp = claims.get("exp")
        return isinstance(exp, (int, float)) and exp - time.time() < self.refresh_margin(claims)

    async def _refresh_grant(self, user: Any, auth_state: dict[str, Any], handler: Any) -> dict[str, Any] | bool:
        refresh_token = auth_state.get("refresh_token")
        if not refresh_token:
            self.log.info("No refresh token for %s; a new login is needed", user.name)
            return False
        try:
            token_info = await self.get_token_info(handler, self.build_refresh_token_request_params(refresh_token))
        except Exception as e:
            if _fence_unreachable(e):
                raise
            self.log.info("Fence rejected the refresh token of %s; a new login is needed", user.name)
            return False
        token_info.setdefault("refresh_token", refresh_token)
        self.log.info("Refreshed the Fence access token of %s", user.name)
        return await self._token_to_auth_model(token_info)

    async def refresh_user(self, user: Any, handler: Any = None, **kwargs: Any) -> dict[str, Any] | bool:
        if not self.enable_auth_state:
            return True
        auth_state = await user.get_auth_state()
        if not auth_state:
            return False
        try:
            if self._expires_soon(auth_state):
                model = await self._refresh_grant(user, auth_state, handler)
            elif not isinstance(auth_state.get("token_response"), dict):
                model = await self._recheck_token(user, auth_state, handler)
            else:
                model = await super().refresh_user(user, handler, **kwargs)
        except Exception as e:
            if not _fence_unreachable(e):
                raise
            # A Fence outage must not log everyone out; the next refresh tries again.
            self.log.warning("Fence unreachable while refreshing %s (%s); keeping the current session", user.name, e)
            return True
        if isinstance(model, dict) and self.require_workspace_permission:
            if not self.has_workspace_permission(model.get("auth_state")):
                self.log.warning("%s lost the workspace permission; a new login is needed", user.name)
                return False
        return model

    async def _recheck_token(self, user: Any, auth_state: dict[str, Any], handler: Any) -> dict[str, Any] | bool:
        """Refresh for an auth_state our login did not write (no `token_response`: set through
        the REST API, or by an older hub). Upstream would fail on it with a 500; here its access
        token is checked with Fence, and the refresh grant takes over when Fence refuses it."""
        token = auth_state.get("access_token")
        if not isinstance(token, str) or not token:
            self.log.info("No usable access token in the auth state of %s; a new login is needed", user.name)
            return False
        try:
            return await self._token_to_auth_model({"access_token": token, "token_type": "Bearer", "refresh_token": auth_state.get("refresh_token")})
        except HTTPClientError as e:
            if _fence_unreachable(e):
                raise
        return await self._refresh_grant(user, auth_state, handler)

    def fence_logout_redirect(self) -> str:
        """Where logout sends the browser: through Fence's logout (back to `post_logout_url`, else
        `logout_redirect_url`) when `end_fence_session` is on, so the commons session ends too."""
        if not (self.end_fence_session and self.fence_logout_url):
            return self.logout_redirect_url
        nxt = self.post_logout_url or self.logout_redirect_url
        return f"{self.fence_logout_url}?{urlencode({'next': nxt})}" if nxt else self.fence_logout_url
