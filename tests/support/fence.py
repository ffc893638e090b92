"""A Fence stand-in for tests: the OAuth2/OIDC, API-key and token endpoints of Gen3's Fence on 127.0.0.1.

It speaks the real protocol (client_secret_basic, authorization-code and refresh-token grants,
RS256 JWTs that `gen3.auth` can decode, the API-key endpoints Gen3Auth, gen3-client and hatchery
use) the way real Fence 13 does, proven by tests/contract/test_fence_contract.py, which runs the
same cases against both: keys need the `credentials` scope, tokens made from keys lose it,
refresh returns the same refresh token, PKCE is accepted but not checked, logout redirects only
to allowed hosts. It has no data routes (indexd records, signed URLs, bytes): tests that fetch
data use the real data-plane bed (tests/support/realdata.py). It keeps its users, their authz and groups, and token lifetimes settable per
test, can be told to fail (the faults real Fence cannot be made to show), and records every call. It runs in a thread with its own event loop so synchronous tests
and a JupyterHub subprocess can both talk to it.
"""

from __future__ import annotations

import asyncio
import base64
import html
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlparse

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gen3workspace.hub.cli import free_port

# Typed per-request slots the middleware reads back to record who called and with which grant.
USERNAME = web.RequestKey("username", str)
GRANT_TYPE = web.RequestKey("grant_type", str)
CLAIMS = web.RequestKey("claims", dict)

WORKSPACE_AUTHZ = {"/workspace": [{"service": "jupyterhub", "method": "access"}]}
# Scopes of real Fence: what a client may be registered with by default (CLIENT_ALLOWED_SCOPES
# plus `credentials`, which docs/authentication.md tells commons to add), and what may go into
# an API key (USER_ALLOWED_SCOPES; never `credentials`).
CLIENT_SCOPES = ["openid", "user", "data", "credentials"]
USER_ALLOWED_SCOPES = {"fence", "openid", "user", "data", "admin", "google_credentials", "google_service_account", "google_link", "ga4gh_passport_v1"}
# Fence refuses to exchange a key for a token that would outlive the key (MAX_ACCESS_TOKEN_TTL).
MAX_ACCESS_TOKEN_TTL = 3600


@dataclass
class FenceUser:
    username: str
    authz: dict[str, list[dict[str, str]]] = field(default_factory=lambda: dict(WORKSPACE_AUTHZ))
    groups: list[str] = field(default_factory=list)
    is_admin: bool = False
    user_id: int = field(default_factory=lambda: secrets.randbelow(10**6))

    def userinfo(self) -> dict[str, Any]:
        # The fields real Fence 13 answers with (groups stay empty for policy-based access).
        return {
            "active": True,
            "username": self.username,
            "user_id": self.user_id,
            "sub": str(self.user_id),
            "name": self.username,
            "email": f"{self.username}@example.org",
            "display_name": "",
            "idp": "google",
            "is_admin": self.is_admin,
            "role": "admin" if self.is_admin else "user",
            "groups": list(self.groups),
            "authz": self.authz,
            "resources": sorted(self.authz),
            "resources_granted": [],
            "project_access": {},
            "azp": None,
            "certificates_uploaded": [],
            "message": "",
        }


@dataclass
class Fault:
    """What the stand-in does instead of (or before) answering one route: for fault tests.

    `delay` seconds first (a slow Fence); then, if `body` is None, the real answer, else this
    answer. `times` limits how many requests it hits (None: all until cleared).
    """

    status: int = 200
    body: str | None = None
    content_type: str = "application/json"
    delay: float = 0.0
    times: int | None = None


@dataclass
class Call:
    method: str
    path: str
    status: int
    grant_type: str | None = None
    username: str | None = None


# Every stand-in of the session: what they issued is what no log may contain (tests/conftest.py).
INSTANCES: list["FenceStandIn"] = []


class FenceStandIn:
    """The stand-in. `start()` serves it; mutate `users`, lifetimes and failure flags from tests."""

    def __init__(self, client_id: str = "workspace-client", client_secret: str | None = None, port: int | None = None):
        INSTANCES.append(self)
        self.client_id = client_id
        self.client_secret = client_secret or "cs-" + secrets.token_urlsafe(24)
        self.port = port or free_port()
        self.users: dict[str, FenceUser] = {}
        self.redirect_uris: list[str] = []  # empty: any redirect_uri accepted
        # Registered clients: id -> (secret, allowed scopes); the main one first.
        self.clients: dict[str, tuple[str, list[str]]] = {self.client_id: (self.client_secret, list(CLIENT_SCOPES))}
        # Hosts logout may send the browser to besides Fence's own and the redirect URIs' (LOGIN_REDIRECT_WHITELIST).
        self.login_redirect_whitelist: list[str] = []
        self.access_token_lifetime = 1200
        self.refresh_token_lifetime = 30 * 24 * 3600
        self.api_key_lifetime = 30 * 24 * 3600
        # Failure switches.
        self.fail_500 = False
        self.reject_refresh = False
        self.token_delay = 0.0  # seconds the token endpoint takes ("Fence is slow")
        # Non-interactive login: authorize redirects straight back as this user.
        self.auto_login: str | None = None
        # (method, path) -> Fault; a path ending in '*' matches every path it prefixes.
        self.faults: dict[tuple[str, str], Fault] = {}
        self.calls: list[Call] = []
        self.issued_codes: list[str] = []  # every OAuth code handed out, to look for leaks in logs
        self.api_keys: dict[str, dict[str, Any]] = {}  # key_id -> {username, revoked, api_key}
        self.issued_tokens: list[str] = []  # every token handed out, to look for leaks in logs
        self._codes: dict[str, dict[str, Any]] = {}
        self._refresh: dict[str, str] = {}  # refresh jti -> username
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = "fence-standin-" + secrets.token_hex(4)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # --- test-facing API ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The commons URL: Fence lives under `<url>/user`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/user"

    def add_client(self, client_id: str, scopes: list[str], client_secret: str | None = None) -> tuple[str, str]:
        """Register another client (`fence-create client-create --allowed-scopes ...`); (id, secret)."""
        secret = client_secret or "cs-" + secrets.token_urlsafe(24)
        self.clients[client_id] = (secret, list(scopes))
        return client_id, secret

    def add_user(self, username: str, **kw: Any) -> FenceUser:
        user = FenceUser(username, **kw)
        self.users[username] = user
        return user

    def calls_to(self, path_prefix: str, method: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.path.startswith(path_prefix) and (method is None or c.method == method)]

    def active_keys(self, username: str | None = None) -> list[str]:
        return [k for k, v in self.api_keys.items() if not v["revoked"] and (username is None or v["username"] == username)]

    def start(self) -> "FenceStandIn":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True, name="fence-standin")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("Fence stand-in did not start")
        return self

    def stop(self) -> None:
        """Stop listening ("Fence is down"); `start()` brings it back on the same port."""
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)
        self._loop = self._runner = self._thread = None

    def __enter__(self) -> "FenceStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def mint_access_token(self, username: str, lifetime: int | None = None, scopes: list[str] | None = None, azp: str | None = None) -> str:
        now = int(time.time())
        azp = self.client_id if azp is None else azp
        claims = {
            "iss": self.issuer,
            "sub": str(self.users[username].user_id),
            "aud": ["gen3", azp] if azp else ["gen3"],
            "iat": now,
            "exp": now + (self.access_token_lifetime if lifetime is None else lifetime),
            "jti": str(uuid.uuid4()),
            "scope": list(CLIENT_SCOPES) if scopes is None else list(scopes),
            "pur": "access",
            "azp": azp,
            "context": {"user": {"name": username, "is_admin": self.users[username].is_admin}},
        }
        return self._sign(claims)

    # --- internals ---------------------------------------------------------------------

    def _sign(self, claims: dict[str, Any]) -> str:
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid})
        self.issued_tokens.append(token)
        return token

    def _verify(self, token: str, purpose: str) -> dict[str, Any]:
        claims = jwt.decode(
            token,
            self._key.public_key(),
            algorithms=["RS256"],
            options={"verify_aud": False},
            issuer=self.issuer,
        )
        if claims.get("pur") != purpose:
            raise jwt.InvalidTokenError(f"not a {purpose} token")
        return claims

    def _jwk(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()

        def b64(n: int) -> str:
            return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

        return {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self._kid, "n": b64(numbers.n), "e": b64(numbers.e)}

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/user/.well-known/openid-configuration", self._discovery)
        r.add_get("/user/.well-known/jwks", self._jwks)
        r.add_get("/user/oauth2/authorize", self._authorize)
        r.add_post("/user/oauth2/authorize", self._authorize)
        r.add_post("/user/oauth2/token", self._token)
        r.add_get("/user/user", self._userinfo)
        r.add_get("/user/user/", self._userinfo)
        r.add_get("/user/logout", self._logout)
        r.add_post("/user/credentials/api/", self._create_key)
        r.add_post("/user/credentials/api", self._create_key)
        r.add_get("/user/credentials/api/", self._list_keys)
        r.add_get("/user/credentials/api", self._list_keys)
        r.add_delete("/user/credentials/api/{key_id}", self._delete_key)
        # gen3-client uses the first; the Gen3 SDK the deprecated second. Same handler in Fence.
        r.add_post("/user/credentials/api/access_token", self._key_to_token)
        r.add_post("/user/credentials/cdis/access_token", self._key_to_token)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        loop.run_until_complete(site.start())
        ready.set()
        loop.run_forever()
        loop.close()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        call = Call(request.method, request.path, 0)
        self.calls.append(call)
        if self.fail_500:
            call.status = 500
            return web.json_response({"error": "internal_error", "error_description": "stand-in told to fail"}, status=500)
        fault = self._fault_for(request.method, request.path)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.body is not None:
                call.status = fault.status
                return web.Response(status=fault.status, text=fault.body, content_type=fault.content_type)
        try:
            response = await handler(request)
        except web.HTTPException as e:
            call.status = e.status
            call.username = request.get(USERNAME)
            raise
        call.status = response.status
        call.username = request.get(USERNAME)
        call.grant_type = request.get(GRANT_TYPE)
        return response

    def _fault_for(self, method: str, path: str) -> Fault | None:
        for (m, p), fault in list(self.faults.items()):
            if m == method and (path == p or (p.endswith("*") and path.startswith(p[:-1]))):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.pop((m, p), None)
                return fault
        return None

    def _bearer_user(self, request: web.Request, scope: str | None = None) -> str:
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            raise web.HTTPUnauthorized(text='{"error": "missing bearer token"}', content_type="application/json")
        try:
            claims = self._verify(auth[7:].strip(), "access")
        except jwt.ExpiredSignatureError:
            raise web.HTTPUnauthorized(text='{"error": "access token expired"}', content_type="application/json") from None
        except jwt.InvalidTokenError as e:
            raise web.HTTPUnauthorized(text=f'{{"error": "invalid token: {e}"}}', content_type="application/json") from None
        username = claims["context"]["user"]["name"]
        if username not in self.users:
            raise web.HTTPUnauthorized(text='{"error": "unknown user"}', content_type="application/json")
        request[USERNAME] = username
        if scope and scope not in (claims.get("scope") or []):
            # Real Fence's log line for this: "token is missing required scopes: {'credentials'}".
            raise web.HTTPUnauthorized(text=f'{{"error": "token is missing required scopes: {scope}"}}', content_type="application/json")
        request[CLAIMS] = claims
        return username

    async def _discovery(self, request: web.Request) -> web.Response:
        u = self.issuer
        return web.json_response(
            {
                "issuer": u,
                "authorization_endpoint": f"{u}/oauth2/authorize",
                "token_endpoint": f"{u}/oauth2/token",
                "userinfo_endpoint": f"{u}/user/",
                "jwks_uri": f"{u}/.well-known/jwks",
                "end_session_endpoint": f"{u}/logout",
                "scopes_supported": sorted(USER_ALLOWED_SCOPES | {"credentials"}),
                "response_types_supported": ["openid", "code", "token"],
                "grant_types_supported": ["authorization_code", "implicit"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self._jwk()]})

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        if request.method == "POST":
            q.update(await request.post())
        client = self.clients.get(q.get("client_id", ""))
        if client is None:
            return web.Response(status=400, text="invalid_client: unknown client_id")
        not_allowed = sorted(set(q.get("scope", "").split()) - set(client[1]))
        if not_allowed:
            # Fence refuses a scope the client was not registered with (validate_scopes): an error page, no redirect.
            return web.Response(status=400, text=f"invalid_scope: client not allowed {' '.join(not_allowed)}")
        redirect_uri = q.get("redirect_uri", "")
        if self.redirect_uris and redirect_uri not in self.redirect_uris:
            return web.Response(status=400, text="invalid_request: redirect_uri not registered")
        if q.get("response_type") != "code":
            return web.Response(status=400, text="unsupported_response_type")
        # Like real Fence's mocked identity provider, the dev_login cookie names the user.
        username = q.get("username") or request.cookies.get("dev_login") or self.auto_login
        if not username:
            return self._login_page(q)
        if username not in self.users:
            return web.Response(status=403, text=f"no such user {html.escape(username)}")
        code = secrets.token_urlsafe(24)
        self.issued_codes.append(code)
        self._codes[code] = {
            "username": username,
            "client_id": q["client_id"],
            "redirect_uri": redirect_uri,
            "scope": q.get("scope", "").split(),
            "nonce": q.get("nonce"),
            "expires": time.time() + 60,
        }
        request[USERNAME] = username
        params = {"code": code}
        if "state" in q:
            params["state"] = q["state"]
        raise web.HTTPFound(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{urlencode(params)}")

    def _login_page(self, q: dict[str, str]) -> web.Response:
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in q.items() if k != "username"
        )
        buttons = "".join(
            f'<button name="username" value="{html.escape(u)}">Log in as {html.escape(u)}</button><br>' for u in self.users
        )
        body = (
            "<!doctype html><title>Fence stand-in login</title><h1>Gen3 Fence (test stand-in)</h1>"
            f'<form method="post" action="/user/oauth2/authorize">{hidden}{buttons}</form>'
        )
        return web.Response(text=body, content_type="text/html")

    def _check_client(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            raise web.HTTPUnauthorized(
                text='{"error": "invalid_client", "error_description": "client_secret_basic required"}',
                content_type="application/json",
            )
        try:
            cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            cid, secret = "", ""
        known = self.clients.get(cid)
        if not (known and secrets.compare_digest(secret, known[0])):
            raise web.HTTPUnauthorized(text='{"error": "invalid_client"}', content_type="application/json")
        return cid

    def _token_response(self, username: str, scopes: list[str], client_id: str, nonce: str | None = None) -> dict[str, Any]:
        now = int(time.time())
        access = self.mint_access_token(username, scopes=scopes, azp=client_id)
        jti = str(uuid.uuid4())
        refresh = self._sign(
            {
                "iss": self.issuer,
                "sub": str(self.users[username].user_id),
                "aud": ["gen3", client_id],
                "iat": now,
                "exp": now + self.refresh_token_lifetime,
                "jti": jti,
                "pur": "refresh",
                "azp": client_id,
                "scope": scopes,
            }
        )
        self._refresh[jti] = username
        id_claims = {
            "iss": self.issuer,
            "sub": str(self.users[username].user_id),
            "aud": ["gen3", client_id],
            "iat": now,
            "exp": now + self.access_token_lifetime,
            "pur": "id",
            "context": {"user": {"name": username}},
        }
        if nonce:
            id_claims["nonce"] = nonce
        return {
            "access_token": access,
            "refresh_token": refresh,
            "id_token": self._sign(id_claims),
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime,
        }

    async def _token(self, request: web.Request) -> web.Response:
        client_id = self._check_client(request)
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        form = await request.post()
        grant = str(form.get("grant_type", ""))
        request[GRANT_TYPE] = grant
        if grant == "authorization_code":
            entry = self._codes.pop(str(form.get("code", "")), None)
            if not entry or entry["expires"] < time.time():
                return web.json_response({"error": "invalid_grant", "error_description": "bad or used code"}, status=400)
            if entry["redirect_uri"] != form.get("redirect_uri") or entry["client_id"] != client_id:
                return web.json_response({"error": "invalid_grant", "error_description": "redirect_uri mismatch"}, status=400)
            # Real Fence takes code_challenge/code_verifier and checks neither (contract-tested).
            request[USERNAME] = entry["username"]
            return web.json_response(self._token_response(entry["username"], entry["scope"], client_id, entry["nonce"]))
        if grant == "refresh_token":
            if self.reject_refresh:
                return web.json_response({"error": "invalid_grant", "error_description": "refresh token revoked"}, status=400)
            try:
                claims = self._verify(str(form.get("refresh_token", "")), "refresh")
            except jwt.InvalidTokenError:
                return web.json_response({"error": "invalid_grant", "error_description": "bad refresh token"}, status=400)
            username = self._refresh.get(claims["jti"])
            if not username or username not in self.users:
                return web.json_response({"error": "invalid_grant", "error_description": "unknown refresh token"}, status=400)
            request[USERNAME] = username
            resp = self._token_response(username, list(claims.get("scope") or []), client_id)
            # Fence does not rotate refresh tokens: it hands the same one back.
            resp["refresh_token"] = str(form.get("refresh_token"))
            return web.json_response(resp)
        return web.json_response({"error": "unauthorized_client", "error_description": f"The client is not authorized to use 'grant_type={grant}'"}, status=400)

    async def _userinfo(self, request: web.Request) -> web.Response:
        username = self._bearer_user(request)
        return web.json_response(self.users[username].userinfo())

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        nxt = request.query.get("next")
        if not nxt:
            raise web.HTTPFound(self.issuer)
        # Fence's allowed_login_redirects: its own host, its clients' redirect hosts, the whitelist.
        allowed = {urlparse(self.url).netloc, *self.login_redirect_whitelist}
        allowed.update(urlparse(u).netloc for u in self.redirect_uris)
        if urlparse(nxt).netloc not in allowed:
            return web.Response(status=400, text=f"invalid logout redirect URL: {html.escape(nxt)}")
        raise web.HTTPFound(nxt)

    async def _create_key(self, request: web.Request) -> web.Response:
        username = self._bearer_user(request, scope="credentials")
        token_scopes = request[CLAIMS].get("scope") or []
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            body = {}
        requested = list(body.get("scope") or []) + ["fence", "openid"]
        for s in requested:
            if s not in USER_ALLOWED_SCOPES:
                return web.json_response({"error": f"Scope {s} is not supported"}, status=400)
        # As Fence: the token's scopes are added, and `credentials` never goes into a key.
        scopes = sorted({*requested, *(s for s in token_scopes if s in USER_ALLOWED_SCOPES)} - {"credentials"})
        lifetime = min(int(request.query.get("expires_in", self.api_key_lifetime)), self.api_key_lifetime)
        key_id = str(uuid.uuid4())
        now = int(time.time())
        api_key = self._sign(
            {
                "iss": self.issuer,
                "sub": str(self.users[username].user_id),
                "aud": ["gen3"],
                "iat": now,
                "exp": now + lifetime,
                "jti": key_id,
                "pur": "api_key",
                "scope": scopes,
                "azp": request[CLAIMS].get("azp") or "",
            }
        )
        self.api_keys[key_id] = {"username": username, "revoked": False, "api_key": api_key, "scope": scopes, "exp": now + lifetime}
        return web.json_response({"key_id": key_id, "api_key": api_key})

    async def _list_keys(self, request: web.Request) -> web.Response:
        username = self._bearer_user(request, scope="credentials")
        jtis = [{"jti": k, "exp": v["exp"]} for k, v in self.api_keys.items() if v["username"] == username and not v["revoked"]]
        return web.json_response({"jtis": jtis})

    async def _delete_key(self, request: web.Request) -> web.Response:
        username = self._bearer_user(request, scope="credentials")
        entry = self.api_keys.get(request.match_info["key_id"])
        # A revoked key is gone from Fence's list, so deleting it again is a 404 too.
        if not entry or entry["username"] != username or entry["revoked"]:
            return web.json_response({"error": "no such key"}, status=404)
        entry["revoked"] = True
        return web.Response(status=204)

    async def _key_to_token(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict) or not body.get("api_key"):
            return web.json_response({"error": "Please provide an api_key in payload"}, status=400)
        try:
            claims = self._verify(str(body["api_key"]), "api_key")
        except jwt.InvalidTokenError as e:
            return web.json_response({"error": f"invalid api key: {e}"}, status=401)
        entry = self.api_keys.get(claims["jti"])
        if not entry or entry["revoked"]:
            return web.json_response({"error": "api key revoked"}, status=401)
        lifetime = min(int(request.query.get("expires_in", MAX_ACCESS_TOKEN_TTL)), MAX_ACCESS_TOKEN_TTL)
        if claims["exp"] < time.time() + lifetime:
            return web.json_response({"error": "Cannot issue an access token that would expire after the provided API key does."}, status=400)
        request[USERNAME] = entry["username"]
        return web.json_response({"access_token": self.mint_access_token(entry["username"], lifetime=lifetime, scopes=entry["scope"], azp="")})
