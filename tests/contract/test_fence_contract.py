"""The same Fence cases against real Fence (with arborist and PostgreSQL) and the stand-in: every call the hub, the spawner, the Gen3 SDK and gen3-client make.

A case that fails only for the stand-in means the stand-in drifted from Fence: fix the stand-in.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import requests

from tests.support.fence import WORKSPACE_AUTHZ, FenceStandIn
from tests.support.realfence import FenceBed, decode_claims

CALLBACK = "http://127.0.0.1:9/hub/oauth_callback"  # never fetched: the flow stops at the redirect
HUB_SCOPES = ["openid", "user", "data", "credentials"]


@dataclass
class Provider:
    """One Fence (real or stand-in) with the hub's client and a client registered without `credentials`."""

    name: str
    url: str
    client: tuple[str, str]
    client_without_credentials: tuple[str, str]
    remove_workspace_access: Callable[[str], None]
    restore_workspace_access: Callable[[str], None]
    is_revoked: Callable[[str], bool]

    @property
    def fence(self) -> str:
        return f"{self.url}/user"

    def authorize(self, user: str, client: tuple[str, str] | None = None, scope: list[str] | None = None, **extra: str) -> requests.Response:
        """Browser side of the login: follow Fence until it redirects to the callback (or refuses)."""
        s = requests.Session()
        s.cookies.set("dev_login", user, domain="127.0.0.1", path="/user")
        params = {"client_id": (client or self.client)[0], "response_type": "code", "redirect_uri": CALLBACK,
                  "scope": " ".join(scope or HUB_SCOPES), "state": "st-" + secrets.token_hex(4), **extra}
        url = f"{self.fence}/oauth2/authorize?{urlencode(params)}"
        for _ in range(10):
            r = s.get(url, allow_redirects=False, timeout=60)
            location = r.headers.get("Location", "")
            if r.status_code in (301, 302, 303) and not location.startswith(CALLBACK):
                url = location if location.startswith("http") else self.url + location
                continue
            r.session = s  # type: ignore[attr-defined]
            return r
        raise AssertionError("Fence kept redirecting")

    def code_for(self, user: str, client: tuple[str, str] | None = None, scope: list[str] | None = None, **extra: str) -> str:
        r = self.authorize(user, client, scope, **extra)
        assert r.status_code == 302 and r.headers["Location"].startswith(CALLBACK), (r.status_code, r.text[:300])
        return parse_qs(urlparse(r.headers["Location"]).query)["code"][0]

    def token(self, data: dict[str, str], client: tuple[str, str] | None = None) -> requests.Response:
        return requests.post(f"{self.fence}/oauth2/token", auth=client or self.client, data=data, timeout=60)

    def login(self, user: str, client: tuple[str, str] | None = None, scope: list[str] | None = None) -> dict[str, Any]:
        code = self.code_for(user, client, scope)
        r = self.token({"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}, client)
        assert r.status_code == 200, r.text[:300]
        return r.json()

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.request(method, f"{self.fence}{path}", headers=headers, timeout=60, **kw)


def _standin_provider() -> Iterator[Provider]:
    fence = FenceStandIn()
    for user in ("alice", "nobody-ned", "admin-ada"):
        fence.add_user(user, is_admin=user == "admin-ada")
    fence.users["nobody-ned"].authz = {"/programs/open": [{"service": "peregrine", "method": "read"}]}
    fence.redirect_uris = [CALLBACK]
    other = fence.add_client("no-credentials", ["openid", "user", "data"])
    fence.start()

    def remove(user: str) -> None:
        fence.users[user].authz = {}

    def restore(user: str) -> None:
        fence.users[user].authz = dict(WORKSPACE_AUTHZ)

    def revoked(jti: str) -> bool:
        return fence.api_keys[jti]["revoked"]

    try:
        yield Provider("stand-in", fence.url, (fence.client_id, fence.client_secret), other, remove, restore, revoked)
    finally:
        fence.stop()


def _real_provider(bed: FenceBed) -> Iterator[Provider]:
    client = bed.create_client("contract-hub", [CALLBACK], HUB_SCOPES)
    other = bed.create_client("contract-no-credentials", [CALLBACK], ["openid", "user", "data"])

    def remove(user: str) -> None:
        bed.set_policies(user, [])

    def restore(user: str) -> None:
        bed.set_policies(user, ["workspace"])

    yield Provider("real Fence", bed.url, client, other, remove, restore, bed.blacklisted)


@pytest.fixture(scope="module", params=["stand-in", "real"])
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    if request.param == "stand-in":
        yield from _standin_provider()
    else:
        yield from _real_provider(request.getfixturevalue("real_fence"))


# --- discovery and login -------------------------------------------------------------------


def test_discovery_document(provider: Provider) -> None:
    doc = requests.get(f"{provider.fence}/.well-known/openid-configuration", timeout=30).json()
    assert doc["issuer"] == provider.fence
    assert doc["authorization_endpoint"] == f"{provider.fence}/oauth2/authorize"
    assert doc["token_endpoint"] == f"{provider.fence}/oauth2/token"
    assert doc["userinfo_endpoint"].rstrip("/") == f"{provider.fence}/user"
    assert doc["jwks_uri"] == f"{provider.fence}/.well-known/jwks"
    assert doc["grant_types_supported"] == ["authorization_code", "implicit"]
    assert doc["token_endpoint_auth_methods_supported"] == ["client_secret_basic"]
    assert "credentials" in doc["scopes_supported"]
    keys = requests.get(doc["jwks_uri"], timeout=30).json()["keys"]
    assert keys and keys[0]["kty"] == "RSA"


def test_authorization_code_grant_with_client_secret_basic(provider: Provider) -> None:
    tokens = provider.login("alice")
    assert {"access_token", "refresh_token", "id_token", "token_type", "expires_in"} <= set(tokens)
    assert tokens["token_type"].lower() == "bearer"
    claims = decode_claims(tokens["access_token"])
    assert claims["pur"] == "access"
    assert claims["context"]["user"]["name"] == "alice"
    assert sorted(claims["scope"]) == sorted(HUB_SCOPES)
    assert claims["azp"] == provider.client[0]
    assert claims["exp"] - claims["iat"] == tokens["expires_in"]


def test_code_is_single_use_and_secret_is_checked(provider: Provider) -> None:
    code = provider.code_for("alice")
    assert provider.token({"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}, (provider.client[0], "wrong")).status_code == 401
    assert provider.token({"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}).status_code == 200
    again = provider.token({"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_pkce_is_accepted_but_not_enforced(provider: Provider) -> None:
    # OAuthenticator sends PKCE; Fence must take it. Fence does not check the verifier,
    # so the hub's PKCE protects nothing against Fence, only nothing breaks.
    verifier = secrets.token_urlsafe(40)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    for sent in (verifier, "not-the-verifier"):
        code = provider.code_for("alice", code_challenge=challenge, code_challenge_method="S256")
        r = provider.token({"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "code_verifier": sent})
        assert r.status_code == 200, (sent == verifier, r.text[:200])


def test_client_credentials_grant_is_refused(provider: Provider) -> None:
    r = provider.token({"grant_type": "client_credentials"})
    assert r.status_code == 400 and r.json()["error"] == "unauthorized_client"


def test_client_cannot_ask_for_a_scope_it_was_not_registered_with(provider: Provider) -> None:
    # What a hub asking for `credentials` meets when the commons registered it without: a Fence error page.
    r = provider.authorize("alice", provider.client_without_credentials, HUB_SCOPES)
    assert r.status_code == 400
    assert "Location" not in r.headers


# --- refresh and userinfo --------------------------------------------------------------------


def test_refresh_grant_returns_the_same_refresh_token(provider: Provider) -> None:
    tokens = provider.login("alice")
    r = provider.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert body["refresh_token"] == tokens["refresh_token"]
    assert body["access_token"] != tokens["access_token"]
    assert sorted(decode_claims(body["access_token"])["scope"]) == sorted(HUB_SCOPES)
    bad = provider.token({"grant_type": "refresh_token", "refresh_token": "garbage"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"


def test_userinfo_shape(provider: Provider) -> None:
    info = provider.call("GET", "/user", provider.login("alice")["access_token"]).json()
    assert info["username"] == "alice"
    assert info["is_admin"] is False
    assert info["authz"]["/workspace"] == [{"method": "access", "service": "jupyterhub"}]
    # Access from arborist policies shows in authz only, never in groups.
    assert info["groups"] == []
    assert {"user_id", "sub", "resources", "azp", "message"} <= set(info)
    ned = provider.call("GET", "/user", provider.login("nobody-ned")["access_token"]).json()
    assert "/workspace" not in ned["authz"] and ned["groups"] == []
    ada = provider.call("GET", "/user", provider.login("admin-ada")["access_token"]).json()
    assert ada["is_admin"] is True
    assert provider.call("GET", "/user", "garbage").status_code == 401
    assert provider.call("GET", "/user").status_code == 401


def test_removed_permission_shows_in_userinfo_after_refresh(provider: Provider) -> None:
    tokens = provider.login("alice")
    provider.remove_workspace_access("alice")
    try:
        r = provider.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
        assert r.status_code == 200
        info = provider.call("GET", "/user", r.json()["access_token"]).json()
        assert "/workspace" not in info["authz"]
    finally:
        provider.restore_workspace_access("alice")


# --- API keys -------------------------------------------------------------------------------


def test_api_keys_need_the_credentials_scope(provider: Provider) -> None:
    token = provider.login("alice", provider.client_without_credentials, ["openid", "user", "data"])["access_token"]
    assert provider.call("POST", "/credentials/api/", token, json={"scope": ["data", "user"]}).status_code == 401
    assert provider.call("GET", "/credentials/api/", token).status_code == 401
    assert provider.call("DELETE", "/credentials/api/whatever", token).status_code == 401


def test_mint_list_exchange_and_delete_a_key(provider: Provider) -> None:
    token = provider.login("alice")["access_token"]
    r = provider.call("POST", "/credentials/api/?expires_in=7200", token, json={"scope": ["data", "user"]})
    assert r.status_code == 200, r.text[:300]
    key = r.json()
    assert set(key) == {"key_id", "api_key"}
    claims = decode_claims(key["api_key"])
    assert claims["jti"] == key["key_id"] and claims["pur"] == "api_key"
    assert abs(claims["exp"] - claims["iat"] - 7200) <= 1, "expires_in bounds the key"
    assert "credentials" not in claims["scope"] and {"data", "user", "fence", "openid"} <= set(claims["scope"])

    listed = provider.call("GET", "/credentials/api/", token).json()["jtis"]
    assert key["key_id"] in [k["jti"] for k in listed]

    for path in ("/credentials/api/access_token", "/credentials/cdis/access_token"):
        r = provider.call("POST", path, json={"api_key": key["api_key"]})
        assert r.status_code == 200, (path, r.text[:300])
        from_key = decode_claims(r.json()["access_token"])
        assert from_key["context"]["user"]["name"] == "alice"
        assert "credentials" not in from_key["scope"], "a token made from a key has `credentials` stripped"
        assert provider.call("GET", "/user", r.json()["access_token"]).json()["username"] == "alice"
    # ...so the key cannot delete (or mint) keys with the token it makes.
    key_token = r.json()["access_token"]
    assert provider.call("DELETE", f"/credentials/api/{key['key_id']}", key_token).status_code == 401
    assert provider.call("POST", "/credentials/api/", key_token, json={"scope": ["data"]}).status_code == 401

    assert provider.call("DELETE", f"/credentials/api/{key['key_id']}", token).status_code == 204
    assert provider.is_revoked(key["key_id"])
    for path in ("/credentials/api/access_token", "/credentials/cdis/access_token"):
        assert provider.call("POST", path, json={"api_key": key["api_key"]}).status_code == 401
    assert provider.call("DELETE", f"/credentials/api/{key['key_id']}", token).status_code == 404
    assert provider.call("DELETE", "/credentials/api/no-such-key", token).status_code == 404


def test_a_key_cannot_make_a_token_that_outlives_it(provider: Provider) -> None:
    # Keys shorter-lived than an access token (3600 s) fail the SDK's default exchange: the
    # hub's key lifetime must leave an hour beyond the server's maximum age.
    token = provider.login("alice")["access_token"]
    key = provider.call("POST", "/credentials/api/?expires_in=600", token, json={"scope": ["data", "user"]}).json()
    assert provider.call("POST", "/credentials/api/access_token", json={"api_key": key["api_key"]}).status_code == 400
    r = provider.call("POST", "/credentials/api/access_token?expires_in=300", json={"api_key": key["api_key"]})
    assert r.status_code == 200
    assert provider.call("DELETE", f"/credentials/api/{key['key_id']}", token).status_code == 204


def test_garbage_keys_are_refused(provider: Provider) -> None:
    assert provider.call("POST", "/credentials/api/access_token", json={"api_key": "garbage"}).status_code == 401
    assert provider.call("POST", "/credentials/api/access_token", json={}).status_code == 400


def test_another_users_key_cannot_be_deleted(provider: Provider) -> None:
    alice = provider.login("alice")["access_token"]
    key = provider.call("POST", "/credentials/api/", alice, json={"scope": ["data"]}).json()
    ada = provider.login("admin-ada")["access_token"]
    assert provider.call("DELETE", f"/credentials/api/{key['key_id']}", ada).status_code == 404
    assert provider.call("POST", "/credentials/api/access_token", json={"api_key": key["api_key"]}).status_code == 200
    assert provider.call("DELETE", f"/credentials/api/{key['key_id']}", alice).status_code == 204


# --- logout ---------------------------------------------------------------------------------


def test_logout_redirects_only_to_allowed_hosts(provider: Provider) -> None:
    s = provider.authorize("alice").session  # type: ignore[attr-defined]
    own = f"{provider.url}/portal/"
    client_host = "http://127.0.0.1:9/after-logout"
    for nxt in (own, client_host):
        r = s.get(f"{provider.fence}/logout", params={"next": nxt}, allow_redirects=False, timeout=30)
        assert r.status_code == 302 and r.headers["Location"] == nxt, (nxt, r.status_code)
    for nxt in ("http://evil.example.com/", "http://127.0.0.1:5/other-port"):
        r = s.get(f"{provider.fence}/logout", params={"next": nxt}, allow_redirects=False, timeout=30)
        assert r.status_code == 400, (nxt, r.status_code)
    r = s.get(f"{provider.fence}/logout", allow_redirects=False, timeout=30)
    assert r.status_code == 302

