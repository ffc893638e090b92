"""Who is calling, against real Fence, arborist and PostgreSQL: which Fence tokens the launcher accepts (the portal's login, this hub's, another client's, too few scopes), and the session's re-check of the workspace permission after a user.yaml sync."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlparse

import pytest
import requests

from tests.support.hub import Hub
from tests.support.realfence import FenceBed, decode_claims

LW = "lw-workspace/"
COOKIE = "gen3ws-session"
FULL = ["openid", "user", "data", "credentials"]
OTHER_CALLBACK = "http://127.0.0.1:9/other-app/callback"  # never fetched: the flow stops at the redirect


@pytest.fixture(scope="module")
def hub(real_fence: FenceBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    for name in ("ivy", "ike", "ina"):
        real_fence.users[name] = {"policies": ["workspace"]}
    real_fence.sync()
    h = Hub(tmp_path_factory.mktemp("identity-realfence"))
    h.fence = real_fence.register_hub("workspace-identity", h.url)
    h.start()
    yield h
    h.stop()


def code_flow(bed: FenceBed, user: str, client: tuple[str, str], redirect_uri: str, scope: list[str]) -> dict[str, Any]:
    """An OAuth login of `user` to `client` through real Fence, as that client's own server would do it."""
    s = bed.session(user)
    params = {"client_id": client[0], "response_type": "code", "redirect_uri": redirect_uri, "scope": " ".join(scope), "state": secrets.token_hex(4)}
    url = f"{bed.fence_url}/oauth2/authorize?{urlencode(params)}"
    for _ in range(10):
        r = s.get(url, allow_redirects=False, timeout=60)
        location = r.headers.get("Location", "")
        if location.startswith(redirect_uri):
            break
        assert r.status_code in (301, 302, 303), (r.status_code, r.text[:300])
        url = location if location.startswith("http") else bed.url + location
    code = parse_qs(urlparse(location).query)["code"][0]
    r = requests.post(f"{bed.fence_url}/oauth2/token", auth=client, data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return r.json()


def portal_token(bed: FenceBed, user: str) -> str:
    """The `access_token` cookie Fence sets for the data portal at login: what revproxy sends as a bearer."""
    s = bed.session(user)
    r = s.get(f"{bed.fence_url}/login/google", params={"redirect": f"{bed.fence_url}/user"}, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    token = s.cookies.get("access_token")
    assert token, s.cookies.keys()
    return token


def launcher_status(hub: Hub, token: str) -> requests.Response:
    return requests.get(hub.url + LW + "status", headers={"Authorization": f"bearer {token}"}, timeout=60)


def test_what_real_fence_puts_in_its_tokens(hub: Hub, real_fence: FenceBed) -> None:
    # The facts Gen3Launcher.token_clients and token_required_scopes rest on.
    portal = decode_claims(portal_token(real_fence, "ivy"))
    assert portal["azp"] == "" and set(portal["scope"]) >= {"user", "credentials"}, portal
    own = decode_claims(code_flow(real_fence, "ivy", (hub.fence.client_id, hub.fence.client_secret), f"{hub.url}hub/oauth_callback", FULL)["access_token"])
    assert own["azp"] == hub.fence.client_id and hub.fence.client_id in own["aud"], own


def test_the_portals_token_and_this_hubs_are_accepted(hub: Hub, real_fence: FenceBed) -> None:
    r = launcher_status(hub, portal_token(real_fence, "ivy"))
    assert r.status_code == 200, r.text
    own = code_flow(real_fence, "ivy", (hub.fence.client_id, hub.fence.client_secret), f"{hub.url}hub/oauth_callback", FULL)["access_token"]
    assert launcher_status(hub, own).status_code == 200


def test_a_token_of_another_client_of_the_commons_is_refused(hub: Hub, real_fence: FenceBed) -> None:
    other = real_fence.create_client("another-app", [OTHER_CALLBACK], FULL)
    token = code_flow(real_fence, "ike", other, OTHER_CALLBACK, FULL)["access_token"]
    assert decode_claims(token)["azp"] == other[0]
    r = launcher_status(hub, token)
    assert r.status_code == 401 and "another application" in r.json()["error"], r.text
    r = requests.get(hub.url + LW + "proxy/", headers={"Authorization": f"bearer {token}"}, allow_redirects=False, timeout=60)
    assert r.status_code == 401
    assert not any(c.startswith(("jupyterhub-hub-login", COOKIE)) for c in r.raw.headers.getlist("Set-Cookie")), "no login from it"
    assert hub.api("GET", "users/ike").status_code == 404


def test_this_hubs_token_without_the_spawn_scopes_is_refused(hub: Hub, real_fence: FenceBed) -> None:
    token = code_flow(real_fence, "ike", (hub.fence.client_id, hub.fence.client_secret), f"{hub.url}hub/oauth_callback", ["openid", "user"])["access_token"]
    r = launcher_status(hub, token)
    assert r.status_code == 403 and "credentials" in r.json()["error"], r.text


def test_removing_the_workspace_policy_ends_the_session_at_the_next_refresh(hub: Hub, real_fence: FenceBed) -> None:
    s, r = hub.login("ina")
    assert r.status_code == 200, r.text[:300]
    r = s.get(hub.url + "hub/gen3-session?next=" + quote("/" + LW + "status"), timeout=60)
    assert r.status_code == 200, r.text[:300]
    copy = requests.Session()
    copy.headers["Cookie"] = f"{COOKIE}={s.cookies.get(COOKIE)}"
    assert copy.get(hub.url + LW + "status", timeout=60).status_code == 200
    real_fence.set_policies("ina", [])
    try:
        time.sleep(1.5)  # the test hub's auth_refresh_age is 1 s
        assert copy.get(hub.url + LW + "status", timeout=60).status_code == 401
        r = copy.get(hub.url + "user/ina/lab", allow_redirects=False, timeout=60)
        assert r.status_code == 302 and "/hub/gen3-session" in r.headers["Location"], (r.status_code, r.headers.get("Location"))
        # Hub pages, on the same refresh, send her to log in again; that login refuses her.
        r = s.get(hub.url + "hub/home", allow_redirects=False, timeout=60)
        assert r.status_code == 302 and "/hub/login" in r.headers["Location"], (r.status_code, r.headers.get("Location"))
        _, r = hub.login("ina")
        assert r.status_code == 403 and "/workspace" in r.text, r.text[:300]
    finally:
        real_fence.set_policies("ina", ["workspace"])
