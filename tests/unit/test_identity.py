"""Unit tests of hub/identity.py: which bearer tokens are accepted, `next=` targets, control characters and secrets in addresses."""

from __future__ import annotations

import pytest
from tornado import httputil, web

from gen3workspace.hub import logscrub
from gen3workspace.hub.auth import Gen3OAuthenticator
from gen3workspace.hub.identity import (
    BadAddress,
    FenceBearer,
    Gen3Identity,
    has_control_characters,
    safe_next,
    without_secrets,
)
from gen3workspace.hub.launcher import Gen3Launcher

HUB_CLIENT = "hub-client-id"
FULL = ["openid", "user", "data", "credentials"]


def refusal(identity: Gen3Identity, claims: dict) -> int | None:
    try:
        identity.accepts_token_claims(claims, HUB_CLIENT)
    except web.HTTPError as e:
        return e.status_code
    return None


@pytest.mark.parametrize(
    "claims, status",
    [
        # The portal's login token (Fence's session cookie): azp empty, SESSION_ALLOWED_SCOPES.
        ({"azp": "", "scope": ["openid", "user", "credentials"]}, None),
        ({"scope": ["openid", "user", "credentials"]}, None),  # no azp at all: Fence's own too
        ({"azp": HUB_CLIENT, "scope": FULL}, None),  # this hub's own login
        ({"azp": "another-app-of-the-commons", "scope": FULL}, 401),
        ({"azp": ["", HUB_CLIENT], "scope": FULL}, 401),  # not a string: never matched loosely
        # From an API key: Fence strips `credentials`, so no API key could be minted from it.
        ({"azp": "", "scope": ["openid", "data", "fence", "user"]}, 403),
        ({"azp": HUB_CLIENT, "scope": "openid user credentials"}, None),  # space-separated form
        ({"azp": HUB_CLIENT, "scope": []}, 403),
    ],
)
def test_only_allowed_clients_with_the_spawn_scopes(claims: dict, status: int | None) -> None:
    assert refusal(Gen3Identity(), claims) == status


def test_token_clients_and_scopes_are_settings() -> None:
    identity = Gen3Identity(token_clients=["", "notebook-browser"], token_required_scopes=["user"])
    assert refusal(identity, {"azp": "notebook-browser", "scope": ["user"]}) is None
    assert refusal(identity, {"azp": "elsewhere", "scope": ["user"]}) == 401
    only_hub = Gen3Identity(token_clients=[])
    assert refusal(only_hub, {"azp": "", "scope": FULL}) == 401
    assert refusal(only_hub, {"azp": HUB_CLIENT, "scope": FULL}) is None
    # The launcher (what the chart configures) inherits them.
    assert Gen3Launcher(token_clients=["x"]).token_clients == ["x"]


@pytest.mark.parametrize(
    "value",
    ["/lw-workspace/proxy/\r\nSet-Cookie: a=b", "/user/a/%0d%0aLocation:%20x", "/user/a/%250a", "/x\x00", "/x%7f", "/x\t"],
)
def test_control_characters_in_next_are_a_400_not_a_redirect(value: str) -> None:
    assert has_control_characters(value)
    with pytest.raises(web.HTTPError) as e:
        safe_next(value, ["/"])
    assert e.value.status_code == 400
    assert "control character" in (e.value.log_message or "")


def test_next_keeps_our_paths_and_drops_credentials() -> None:
    assert safe_next("/lw-workspace/proxy/lab?x=1", ["/lw-workspace/"]) == "/lw-workspace/proxy/lab?x=1"
    assert safe_next("/user/alice/lab?token=s3cr3tTok&x=1&_xsrf=2|ab", ["/"]) == "/user/alice/lab?x=1"
    assert safe_next("/user/alice/?TOKEN=a#frag", ["/"]) == "/user/alice/#frag"
    for outside in ("//evil.example/", "https://evil.example/", "/\\evil", "relative", "/elsewhere/"):
        assert safe_next(outside, ["/lw-workspace/", "/user/"]) is None
    assert without_secrets("/a?b=1&access_token=eyJx") == "/a?b=1"
    assert without_secrets("/a") == "/a"


def _request(uri: str) -> httputil.HTTPServerRequest:
    return httputil.HTTPServerRequest(start_line=httputil.RequestStartLine("GET", uri, "HTTP/1.1"), headers=httputil.HTTPHeaders({"Host": "127.0.0.1"}))


@pytest.mark.parametrize(
    "uri, what",
    [
        ("/user/alice/%0d%0aSet-Cookie:x", "path"),
        ("/hub/login?next=%2Fhub%2F%0d%0aLocation%3A%20https%3A%2F%2Fevil", "next= parameter"),
        ("/hub/gen3-session?next=/lw-workspace/%00", "next= parameter"),
        ("/lw-workspace/status%09", "path"),
    ],
)
def test_bad_addresses_are_matched_before_any_handler(uri: str, what: str) -> None:
    assert BadAddress().match(_request(uri)) == {"target_kwargs": {"what": what}}


@pytest.mark.parametrize("uri", ["/user/alice/lab/tree/a%20b.ipynb", "/hub/login?next=%2Fhub%2Fhome", "/lw-workspace/status?x=%C3%A9"])
def test_ordinary_addresses_pass(uri: str) -> None:
    assert BadAddress().match(_request(uri)) is None


@pytest.mark.parametrize(
    "line, secret",
    [
        ("302 GET /user/alice/lab?token=s3cr3tValue0 -> /hub/gen3-session?next=%2Fuser%2Falice%2Flab%3Ftoken%3Ds3cr3tValue0%26x%3D1", "s3cr3tValue0"),
        ("302 GET /hub/login?next=%252Fuser%252Fa%252F%253F_xsrf%253Dxsrf0Value%2526y", "xsrf0Value"),
        ("redirect to /hub/gen3-session?next=%2Fuser%2Fa%2F%3Fx%3D1%26access_token%3DopaqueTok42", "opaqueTok42"),
    ],
)
def test_tokens_inside_encoded_next_are_redacted_in_logs(line: str, secret: str) -> None:
    clean = logscrub.scrub(line)
    assert secret not in clean and "[redacted]" in clean
    assert "%26x%3D1" in clean or "%2526y" in clean or "x%3D1" in clean  # the rest of the URL stays readable


def test_a_login_form_cannot_pose_as_a_bearer_login() -> None:
    # The bearer branch of Gen3OAuthenticator.authenticate is taken only for this class;
    # form fields reach authenticate as a dict of strings.
    assert not isinstance({"token": "x"}, FenceBearer)
    assert "x.y.z" not in repr(FenceBearer("x.y.z"))


async def test_authenticate_with_a_bearer_uses_fence_userinfo_not_the_code_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = Gen3OAuthenticator(commons_url="http://127.0.0.1:9", client_id=HUB_CLIENT, client_secret="s")
    seen: list = []

    async def to_model(token_info: dict) -> dict:
        seen.append(token_info)
        return {"name": "alice", "auth_state": {}}

    async def no_exchange(*a: object, **k: object) -> dict:
        raise AssertionError("a bearer login must not exchange a code")

    monkeypatch.setattr(auth, "_token_to_auth_model", to_model)
    monkeypatch.setattr(auth, "get_token_info", no_exchange)
    assert (await auth.authenticate(None, FenceBearer("a.b.c")))["name"] == "alice"
    assert seen == [{"access_token": "a.b.c", "token_type": "Bearer"}]
