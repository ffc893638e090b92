"""Who is calling, on a real hub in embedded mode against the Fence stand-in: the workspace session cookie's life (login, logout, copies, restarts, Fence re-checks), which bearer and JupyterHub API tokens are accepted, and addresses with secrets or control characters.

The same bearer and re-check cases against real Fence are in test_identity_realfence.py.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
import requests

from gen3workspace.hub.cli import port_free
from tests.support.fence import FenceStandIn
from tests.support.hub import Hub

COOKIE = "gen3ws-session"
LW = "lw-workspace/"


@pytest.fixture(scope="module")
def hub(fence: FenceStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    for name in ("carol", "dave", "erin", "frank", "eve", "gina", "hank"):
        fence.add_user(name)
    # A username rule of the hub's own login: eve holds the workspace permission in Fence but
    # may not log in here, so no bearer may log her in either.
    h = Hub(tmp_path_factory.mktemp("identity"), fence=fence, extra_config='c.Authenticator.username_pattern = r"^(?!eve$).+$"\n').start()
    yield h
    h.stop()


def with_cookie(value: str) -> requests.Session:
    """A client holding only a copy of the session cookie, as someone who copied it would."""
    s = requests.Session()
    s.headers["Cookie"] = f"{COOKIE}={value}"
    return s


def status_code(hub: Hub, s: requests.Session) -> int:
    return s.get(hub.url + LW + "status", timeout=30).status_code


def session_cookie(hub: Hub, s: requests.Session) -> str:
    """The browser's gen3ws-session, handed over by /hub/gen3-session as the gate's redirect does."""
    r = s.get(hub.url + "hub/gen3-session?next=" + quote("/" + LW + "status"), timeout=30)
    assert r.status_code == 200, r.text[:300]
    value = s.cookies.get(COOKIE)
    assert value
    return value


def restart(hub: Hub) -> None:
    """Stop and start the hub on its port, once the old proxy has let go of it."""
    hub.stop()
    deadline = time.time() + 60
    # The same check `gen3-workspace up` makes before it starts.
    while time.time() < deadline and not port_free("127.0.0.1", hub.port):
        time.sleep(0.3)
    hub.start()


def bearer(token: str) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"bearer {token}"
    return s


# --- 1. logout ends the session, copies included, across restarts ------------------------------


def test_logout_ends_the_session_cookie_and_every_copy_even_across_restarts(hub: Hub) -> None:
    s, r = hub.login("carol")
    assert r.status_code == 200, r.text[:300]
    copy = session_cookie(hub, s)
    assert status_code(hub, with_cookie(copy)) == 200
    restart(hub)
    assert status_code(hub, with_cookie(copy)) == 200, "a hub restart must not end anyone's session"

    r = s.get(hub.url + "hub/logout", allow_redirects=False, timeout=30)
    assert r.status_code in (200, 302), r.text[:300]
    cleared = [c for c in r.headers.get_all("Set-Cookie") if c.startswith(COOKIE + "=")] if hasattr(r.headers, "get_all") else None
    if cleared is None:
        cleared = [c for c in r.raw.headers.getlist("Set-Cookie") if c.startswith(COOKIE + "=")]
    assert cleared and all("expires=" in c.lower() for c in cleared), "logout clears the browser's cookie"
    assert status_code(hub, s) == 401
    assert status_code(hub, with_cookie(copy)) == 401, "a copy taken before logout must stop working"
    restart(hub)
    assert status_code(hub, with_cookie(copy)) == 401, "and stay dead after a restart"


def test_logout_in_one_browser_leaves_the_other_logged_in(hub: Hub) -> None:
    first, _ = hub.login("dave")
    second, _ = hub.login("dave")
    a, b = session_cookie(hub, first), session_cookie(hub, second)
    assert a != b
    first.get(hub.url + "hub/logout", allow_redirects=False, timeout=30)
    assert status_code(hub, with_cookie(a)) == 401
    assert status_code(hub, with_cookie(b)) == 200


# --- 2. the session re-checks Fence on auth_refresh_age ----------------------------------------


def test_a_session_whose_workspace_permission_was_removed_loses_the_launcher_and_the_server(hub: Hub, fence: FenceStandIn) -> None:
    s, _ = hub.login("erin")
    copy = session_cookie(hub, s)
    assert status_code(hub, with_cookie(copy)) == 200
    saved = fence.users["erin"].authz
    fence.users["erin"].authz = {}
    try:
        time.sleep(1.5)  # the test hub's auth_refresh_age is 1 s
        assert status_code(hub, with_cookie(copy)) == 401
        r = with_cookie(copy).get(hub.url + "user/erin/lab", allow_redirects=False, timeout=30)
        assert r.status_code == 302 and "/hub/gen3-session" in r.headers["Location"], (r.status_code, r.headers.get("Location"))
    finally:
        fence.users["erin"].authz = saved


# --- 3. and 4. bearer tokens: accepted clients and scopes, and the hub's own login rules -------


def test_a_token_issued_to_another_client_of_the_commons_is_refused(hub: Hub, fence: FenceStandIn) -> None:
    other, _ = fence.add_client("another-app", ["openid", "user", "data", "credentials"])
    r = bearer(fence.mint_access_token("frank", azp=other)).get(hub.url + LW + "status", timeout=30)
    assert r.status_code == 401 and "another application" in r.json()["error"], r.text
    r = bearer(fence.mint_access_token("frank", azp=other)).get(hub.url + LW + "proxy/", allow_redirects=False, timeout=30)
    assert r.status_code == 401 and not any(c.startswith(("jupyterhub-hub-login", COOKIE)) for c in r.raw.headers.getlist("Set-Cookie"))
    assert hub.api("GET", "users/frank").status_code == 404, "no hub user made from a refused token"
    # The portal's own login token (Fence's session: empty azp) and this hub's are accepted.
    portal = fence.mint_access_token("frank", azp="", scopes=["openid", "user", "credentials"])
    assert bearer(portal).get(hub.url + LW + "status", timeout=30).status_code == 200
    assert bearer(fence.mint_access_token("frank")).get(hub.url + LW + "status", timeout=30).status_code == 200


def test_a_token_without_the_scopes_a_spawn_needs_is_refused(hub: Hub, fence: FenceStandIn) -> None:
    # What Fence makes from an API key: `credentials` stripped, so no key could be minted from it.
    token = fence.mint_access_token("frank", azp="", scopes=["openid", "data", "fence", "user"])
    r = bearer(token).get(hub.url + LW + "status", timeout=30)
    assert r.status_code == 403 and "credentials" in r.json()["error"], r.text


def test_no_login_cookie_from_a_bearer_the_hubs_own_login_refuses(hub: Hub, fence: FenceStandIn) -> None:
    _, r = hub.login("eve")
    assert r.status_code == 403, "the hub's login refuses eve (username_pattern)"
    token = fence.mint_access_token("eve")
    r = bearer(token).get(hub.url + LW + "proxy/", allow_redirects=False, timeout=30)
    assert r.status_code == 403, r.text[:300]
    assert not any(c.startswith(("jupyterhub-hub-login", COOKIE)) for c in r.raw.headers.getlist("Set-Cookie"))
    assert bearer(token).get(hub.url + LW + "status", timeout=30).status_code == 403
    assert hub.api("GET", "users/eve").status_code == 404


# --- 5. and 6. secrets and control characters in addresses ---------------------------------------


def test_token_and_xsrf_never_reach_a_next_url_or_the_log(hub: Hub) -> None:
    secrets_ = ["Xsrf1nPath0001", "Tok3nInPath0002", "Tok3nInNext0003", "Xsrf1nNext0004"]
    # Without a login, a server path goes through the hub login and back: without its credentials.
    r = requests.get(hub.url + f"user/carol/lab?_xsrf={secrets_[0]}&x=1", allow_redirects=False, timeout=30)
    assert r.status_code == 302
    location = r.headers["Location"]
    assert secrets_[0] not in unquote(unquote(location)) and "x%3D1" in location, location
    # A ?token= is a JupyterHub API token to the engine: an unknown one is refused, not carried on.
    r = requests.get(hub.url + f"user/carol/lab?token={secrets_[1]}&x=1", allow_redirects=False, timeout=30)
    assert r.status_code in (302, 401, 403)
    assert secrets_[1] not in unquote(unquote(r.headers.get("Location", ""))), r.headers.get("Location")

    s, _ = hub.login("gina")
    target = f"/user/gina/lab?token={secrets_[2]}&_xsrf={secrets_[3]}&x=1"
    r = s.get(hub.url + "hub/gen3-session?next=" + quote(target), allow_redirects=False, timeout=30)
    assert r.status_code == 302
    assert r.headers["Location"].endswith("/user/gina/lab?x=1"), r.headers["Location"]
    time.sleep(0.5)
    log = hub.log()
    for secret in secrets_:
        assert secret not in log, f"{secret} in the hub log"


@pytest.mark.parametrize(
    "path",
    [
        "user/carol/%0d%0aSet-Cookie:%20a=b",
        "lw-workspace/status%00",
        "hub/login?next=%2Fhub%2F%0d%0aLocation%3A%20http%3A%2F%2Fevil.example",
        "hub/gen3-session?next=%2Flw-workspace%2F%0aX",
        "hub/home%7f",
    ],
)
def test_control_characters_in_paths_and_next_are_a_clear_400(hub: Hub, path: str) -> None:
    for method in ("GET", "POST"):
        r = requests.request(method, hub.url + path, allow_redirects=False, timeout=30)
        assert r.status_code == 400 and "Location" not in r.headers, (method, r.status_code, r.headers.get("Location"), r.text[:200])
        if "<center>nginx</center>" not in r.text:  # the engine refuses a NUL itself, before the hub
            assert "control character" in r.text, r.text[:300]


# --- 7. the launcher knows the user right after a login --------------------------------------


def test_after_a_fence_login_the_launcher_answers_without_visiting_proxy(hub: Hub) -> None:
    s, r = hub.login("gina")
    assert r.status_code == 200
    assert s.cookies.get(COOKIE), "the login sets the workspace session"
    assert status_code(hub, s) == 200


# --- 8. JupyterHub API tokens ------------------------------------------------------------------


def test_jupyterhub_api_tokens_act_with_their_own_scopes_on_the_launcher(hub: Hub) -> None:
    hub.login("carol")
    made = hub.api("POST", "users/carol/tokens", json={"scopes": ["read:servers!user=carol"], "note": "status only"})
    assert made.status_code == 201, made.text
    reader = requests.Session()
    reader.headers["Authorization"] = f"token {made.json()['token']}"
    assert reader.get(hub.url + LW + "status", timeout=30).status_code == 200
    r = reader.post(hub.url + LW + "terminate", timeout=30)
    assert r.status_code == 403 and "servers" in r.json()["error"], r.text
    full = hub.api("POST", "users/carol/tokens", json={"scopes": ["servers!user=carol", "read:servers!user=carol"]}).json()
    writer = requests.Session()
    writer.headers["Authorization"] = f"token {full['token']}"
    r = writer.post(hub.url + LW + "terminate", timeout=30)
    assert r.status_code == 404 and "no workspace" in r.json()["error"], r.text  # past the scope check
    assert hub.api("DELETE", f"users/carol/tokens/{made.json()['id']}").status_code == 204
    assert reader.get(hub.url + LW + "status", timeout=30).status_code == 401


def test_an_api_token_follows_its_owners_login_at_the_launcher_and_the_engine(hub: Hub, fence: FenceStandIn) -> None:
    hub.login("hank")
    made = hub.api("POST", "users/hank/tokens", json={"note": "a script"})
    assert made.status_code == 201, made.text
    script = requests.Session()
    script.headers["Authorization"] = f"token {made.json()['token']}"
    r = script.get(hub.url + "user/hank/api/status", allow_redirects=False, timeout=30)
    assert r.status_code == 302 and "/hub/user/hank/" in r.headers["Location"], (r.status_code, r.text[:200])  # not running: offered a start
    saved = fence.users["hank"].authz
    fence.users["hank"].authz = {}
    try:
        time.sleep(1.5)  # auth_refresh_age
        r = script.get(hub.url + "user/hank/api/status", allow_redirects=False, timeout=30)
        assert r.status_code == 403 and "not valid" in r.text, (r.status_code, r.text[:200])
        assert script.get(hub.url + LW + "status", timeout=30).status_code == 401
    finally:
        fence.users["hank"].authz = saved


def test_the_session_row_is_no_api_token(hub: Hub) -> None:
    s, _ = hub.login("gina")
    tokens = hub.api("GET", "users/gina/tokens").json()["api_tokens"]
    rows = [t for t in tokens if "gen3ws-session" in (t.get("note") or "")]
    # Only what JupyterHub gives every token (reading the owner's own name and groups).
    assert rows and all(sc.startswith(("read:users:name!", "read:users:groups!")) for t in rows for sc in t["scopes"]), rows
    # The cookie is signed, not encrypted: its value can be read, and sent as an API token
    # to the launcher it names nobody.
    raw = base64.b64decode(s.cookies.get(COOKIE).split("|")[4].split(":", 1)[1]).decode()
    r = requests.get(hub.url + LW + "status", headers={"Authorization": f"token {raw}"}, timeout=30)
    assert r.status_code == 401, r.text


def test_dev_login_sets_the_session_for_the_launcher(tmp_path: Path) -> None:
    h = Hub(tmp_path).start()
    try:
        s = requests.Session()
        page = s.get(f"{h.url}hub/login", timeout=30).text
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
        r = s.post(f"{h.url}hub/login", data={"username": "devi", "_xsrf": xsrf}, timeout=60)
        assert r.status_code == 200, r.text[:300]
        assert s.cookies.get(COOKIE), "the dev login sets the workspace session"
        r = s.get(h.url + LW + "status", timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "Not Found", r.text
        copy = s.cookies.get(COOKIE)
        s.get(h.url + "hub/logout", allow_redirects=False, timeout=30)
        assert status_code(h, with_cookie(copy)) == 401
    finally:
        h.stop()


def test_a_client_that_drops_cookies_does_not_pile_up_sessions(hub: Hub, fence: FenceStandIn) -> None:
    token = fence.mint_access_token("frank")
    for _ in range(55):
        r = bearer(token).get(hub.url + LW + "proxy/", allow_redirects=False, timeout=30)
        assert r.status_code == 404  # no server running; the bearer login and its session are made
    rows = [t for t in hub.api("GET", "users/frank/tokens").json()["api_tokens"] if "gen3ws-session" in (t.get("note") or "")]
    assert 0 < len(rows) <= 50, len(rows)
