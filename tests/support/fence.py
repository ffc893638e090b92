"""A Fence stand-in for tests: the OAuth2/OIDC, API-key and token endpoints of Gen3's Fence on 127.0.0.1.

It speaks the real protocol (client_secret_basic, authorization-code and refresh-token grants,
PKCE, RS256 JWTs that `gen3.auth` can decode, the API-key endpoints Gen3Auth and hatchery use),
keeps its users, their authz and groups, and token lifetimes settable per test, can be told to
fail, and records every call. It runs in a thread with its own event loop so synchronous tests
and a JupyterHub subprocess can both talk to it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gen3workspace.hub.cli import free_port

# Typed per-request slots the middleware reads back to record who called and with which grant.
USERNAME = web.RequestKey("username", str)
GRANT_TYPE = web.RequestKey("grant_type", str)

WORKSPACE_AUTHZ = {"/workspace": [{"service": "jupyterhub", "method": "access"}]}


@dataclass
class FenceUser:
    username: str
    authz: dict[str, list[dict[str, str]]] = field(default_factory=lambda: dict(WORKSPACE_AUTHZ))
    groups: list[str] = field(default_factory=list)
    is_admin: bool = False
    user_id: int = field(default_factory=lambda: secrets.randbelow(10**6))

    def userinfo(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "user_id": self.user_id,
            "sub": str(self.user_id),
            "name": self.username,
            "is_admin": self.is_admin,
            "groups": list(self.groups),
            "authz": self.authz,
            "resources": sorted(self.authz),
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
        self.access_token_lifetime = 1200
        self.refresh_token_lifetime = 30 * 24 * 3600
        self.api_key_lifetime = 30 * 24 * 3600
        # Failure switches.
        self.fail_500 = False
        self.reject_refresh = False
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

    def mint_access_token(self, username: str, lifetime: int | None = None, scopes: list[str] | None = None) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": str(self.users[username].user_id),
            "aud": [self.client_id, "openid", "user", "data"],
            "iat": now,
            "exp": now + (self.access_token_lifetime if lifetime is None else lifetime),
            "jti": str(uuid.uuid4()),
            "scope": scopes or ["openid", "user", "data"],
            "pur": "access",
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
        r.add_get("/user/logout", self._logout)
        r.add_post("/user/credentials/api/", self._create_key)
        r.add_post("/user/credentials/api", self._create_key)
        r.add_delete("/user/credentials/api/{key_id}", self._delete_key)
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

    def _bearer_user(self, request: web.Request) -> str:
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
        return username

    async def _discovery(self, request: web.Request) -> web.Response:
        u = self.issuer
        return web.json_response(
            {
                "issuer": u,
                "authorization_endpoint": f"{u}/oauth2/authorize",
                "token_endpoint": f"{u}/oauth2/token",
                "userinfo_endpoint": f"{u}/user",
                "jwks_uri": f"{u}/.well-known/jwks",
                "end_session_endpoint": f"{u}/logout",
                "scopes_supported": ["openid", "user", "data", "google_credentials"],
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self._jwk()]})

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        if request.method == "POST":
            q.update(await request.post())
        if q.get("client_id") != self.client_id:
            return web.Response(status=400, text="invalid_client: unknown client_id")
        redirect_uri = q.get("redirect_uri", "")
        if self.redirect_uris and redirect_uri not in self.redirect_uris:
            return web.Response(status=400, text="invalid_request: redirect_uri not registered")
        if q.get("response_type") != "code":
            return web.Response(status=400, text="unsupported_response_type")
        username = q.get("username") or self.auto_login
        if not username:
            return self._login_page(q)
        if username not in self.users:
            return web.Response(status=403, text=f"no such user {html.escape(username)}")
        code = secrets.token_urlsafe(24)
        self.issued_codes.append(code)
        self._codes[code] = {
            "username": username,
            "redirect_uri": redirect_uri,
            "challenge": q.get("code_challenge"),
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

    def _check_client(self, request: web.Request) -> None:
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
        if not (secrets.compare_digest(cid, self.client_id) and secrets.compare_digest(secret, self.client_secret)):
            raise web.HTTPUnauthorized(text='{"error": "invalid_client"}', content_type="application/json")

    def _token_response(self, username: str, scopes: list[str], nonce: str | None = None) -> dict[str, Any]:
        now = int(time.time())
        access = self.mint_access_token(username, scopes=scopes or None)
        jti = str(uuid.uuid4())
        refresh = self._sign(
            {
                "iss": self.issuer,
                "sub": str(self.users[username].user_id),
                "aud": [self.client_id],
                "iat": now,
                "exp": now + self.refresh_token_lifetime,
                "jti": jti,
                "pur": "refresh",
                "azp": self.client_id,
            }
        )
        self._refresh[jti] = username
        id_claims = {
            "iss": self.issuer,
            "sub": str(self.users[username].user_id),
            "aud": [self.client_id],
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
            "scope": " ".join(scopes or ["openid", "user", "data"]),
        }

    async def _token(self, request: web.Request) -> web.Response:
        self._check_client(request)
        form = await request.post()
        grant = str(form.get("grant_type", ""))
        request[GRANT_TYPE] = grant
        if grant == "authorization_code":
            entry = self._codes.pop(str(form.get("code", "")), None)
            if not entry or entry["expires"] < time.time():
                return web.json_response({"error": "invalid_grant", "error_description": "bad or used code"}, status=400)
            if entry["redirect_uri"] != form.get("redirect_uri"):
                return web.json_response({"error": "invalid_grant", "error_description": "redirect_uri mismatch"}, status=400)
            if entry["challenge"]:
                verifier = str(form.get("code_verifier", ""))
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                if digest != entry["challenge"]:
                    return web.json_response({"error": "invalid_grant", "error_description": "PKCE mismatch"}, status=400)
            request[USERNAME] = entry["username"]
            return web.json_response(self._token_response(entry["username"], entry["scope"], entry["nonce"]))
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
            resp = self._token_response(username, [])
            # Fence does not rotate refresh tokens: the client keeps its own.
            resp.pop("refresh_token")
            return web.json_response(resp)
        return web.json_response({"error": "unsupported_grant_type"}, status=400)

    async def _userinfo(self, request: web.Request) -> web.Response:
        username = self._bearer_user(request)
        return web.json_response(self.users[username].userinfo())

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        nxt = request.query.get("next")
        if nxt:
            raise web.HTTPFound(nxt)
        return web.Response(text="logged out of Fence")

    async def _create_key(self, request: web.Request) -> web.Response:
        username = self._bearer_user(request)
        body = await request.json() if request.can_read_body else {}
        scopes = body.get("scope") or ["data", "user"]
        key_id = str(uuid.uuid4())
        now = int(time.time())
        api_key = self._sign(
            {
                "iss": self.issuer,
                "sub": str(self.users[username].user_id),
                "aud": ["fence", *scopes],
                "iat": now,
                "exp": now + self.api_key_lifetime,
                "jti": key_id,
                "pur": "api_key",
                "scope": scopes,
                "azp": "",
            }
        )
        self.api_keys[key_id] = {"username": username, "revoked": False, "api_key": api_key, "scope": scopes}
        return web.json_response({"key_id": key_id, "api_key": api_key})

    async def _delete_key(self, request: web.Request) -> web.Response:
        username = self._bearer_user(request)
        entry = self.api_keys.get(request.match_info["key_id"])
        if not entry or entry["username"] != username:
            return web.json_response({"error": "no such key"}, status=404)
        entry["revoked"] = True
        return web.Response(status=204)

    async def _key_to_token(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            claims = self._verify(str(body.get("api_key", "")), "api_key")
        except jwt.InvalidTokenError as e:
            return web.json_response({"error": f"invalid api key: {e}"}, status=401)
        entry = self.api_keys.get(claims["jti"])
        if not entry or entry["revoked"]:
            return web.json_response({"error": "api key revoked"}, status=401)
        request[USERNAME] = entry["username"]
        return web.json_response({"access_token": self.mint_access_token(entry["username"], scopes=entry["scope"])})
