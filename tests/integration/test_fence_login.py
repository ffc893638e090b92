"""Fence login through a real JupyterHub behind its real proxy engine (nginx) against the Fence stand-in."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import requests

from tests.support.fence import FenceStandIn
from tests.support.hub import Hub, path_of, query


def test_full_oauth_round_trip_creates_user_with_auth_state(fence_hub: Hub, fence: FenceStandIn) -> None:
    s, r = fence_hub.login("alice")
    assert r.status_code == 200, r.text
    assert path_of(r.url).startswith("/hub/spawn") or path_of(r.url).startswith("/hub/home"), r.url
    token_calls = fence.calls_to("/user/oauth2/token")
    assert token_calls and token_calls[-1].grant_type == "authorization_code" and token_calls[-1].status == 200

    model = fence_hub.user_model("alice")
    state = model["auth_state"]
    assert state["access_token"].count(".") == 2
    assert state["refresh_token"]
    assert state["oauth_user"]["authz"] == fence.users["alice"].authz
    assert state["oauth_user"]["username"] == "alice"


def test_login_button_names_the_commons(fence_hub: Hub) -> None:
    page = requests.get(f"{fence_hub.url}hub/login", timeout=30).text
    assert "Gen3 Workspace" in page
    assert "oauth_login" in page
    assert "DEV LOGIN" not in page


def test_expired_access_token_is_refreshed_without_user_action(fence_hub: Hub, fence: FenceStandIn) -> None:
    fence.access_token_lifetime = 2  # well inside the refresh margin
    s, r = fence_hub.login("alice")
    assert r.status_code == 200
    old = fence_hub.user_model("alice")["auth_state"]["access_token"]
    fence.access_token_lifetime = 1200
    refreshes_before = len([c for c in fence.calls_to("/user/oauth2/token") if c.grant_type == "refresh_token"])
    time.sleep(2.5)  # past auth_refresh_age (1 s in the test config) and the token's expiry

    r = s.get(f"{fence_hub.url}hub/home", allow_redirects=False, timeout=30)
    assert r.status_code == 200, (r.status_code, r.headers.get("Location"))
    refreshes = [c for c in fence.calls_to("/user/oauth2/token") if c.grant_type == "refresh_token"]
    assert len(refreshes) > refreshes_before and refreshes[-1].status == 200
    new = fence_hub.user_model("alice")["auth_state"]
    assert new["access_token"] != old
    assert new["refresh_token"], "the refresh token must be kept when Fence does not rotate it"


def test_rejected_refresh_forces_a_new_login(fence_hub: Hub, fence: FenceStandIn) -> None:
    fence.access_token_lifetime = 2
    s, r = fence_hub.login("alice")
    assert r.status_code == 200
    fence.reject_refresh = True
    time.sleep(2.5)
    r = s.get(f"{fence_hub.url}hub/home", allow_redirects=False, timeout=30)
    assert r.status_code == 302
    assert "/hub/login" in r.headers["Location"]
    rejected = [c for c in fence.calls_to("/user/oauth2/token") if c.grant_type == "refresh_token"]
    assert rejected and rejected[-1].status == 400


def test_user_without_workspace_permission_gets_a_403_naming_it(fence_hub: Hub) -> None:
    s, r = fence_hub.login("nobody-ned")
    assert r.status_code == 403
    text = html.unescape(r.text)
    assert "method 'access' for service 'jupyterhub' on resource '/workspace'" in text
    assert "Traceback" not in r.text
    assert fence_hub.api("GET", "users/nobody-ned").status_code == 404


def test_fence_down_gives_a_readable_503_and_the_hub_keeps_serving(fence_hub: Hub, fence: FenceStandIn) -> None:
    other, r = fence_hub.login("admin-ada")
    assert r.status_code == 200
    s, callback = fence_hub.authorize_only("alice")
    fence.stop()
    try:
        r = s.get(callback, timeout=60)
        assert r.status_code == 503
        assert "not answering" in r.text and fence.url in r.text
        assert "Traceback" not in r.text
        assert requests.get(f"{fence_hub.url}hub/health", timeout=10).status_code == 200
        # An existing session stays usable while Fence is down.
        assert other.get(f"{fence_hub.url}hub/home", allow_redirects=False, timeout=30).status_code == 200
    finally:
        fence.start()


def test_fence_500_on_token_is_also_a_503(fence_hub: Hub, fence: FenceStandIn) -> None:
    s, callback = fence_hub.authorize_only("alice")
    fence.fail_500 = True
    r = s.get(callback, timeout=60)
    assert r.status_code == 503
    assert "Fence" in r.text


def test_oauth_state_mismatch_is_refused(fence_hub: Hub, fence: FenceStandIn) -> None:
    s, callback = fence_hub.authorize_only("alice")
    exchanges = len(fence.calls_to("/user/oauth2/token"))
    q = query(callback)
    forged = callback.replace(q["state"], q["state"][:-4] + "AAAA")
    r = s.get(forged, timeout=30)
    assert r.status_code == 400
    assert "state" in r.text.lower()
    assert len(fence.calls_to("/user/oauth2/token")) == exchanges, "a forged state must not reach the token endpoint"
    fresh = requests.Session()
    r = fresh.get(callback, timeout=30)  # the real state, but not this browser's cookie
    assert r.status_code == 400


def test_groups_follow_fence_across_logins(fence_hub: Hub, fence: FenceStandIn) -> None:
    fence.users["alice"].groups = ["analysts", "gpu-users"]
    fence_hub.login("alice")
    assert sorted(fence_hub.user_model("alice")["groups"]) == ["analysts", "gpu-users"]
    fence.users["alice"].groups = ["analysts"]
    fence_hub.login("alice")
    assert fence_hub.user_model("alice")["groups"] == ["analysts"]


def test_fence_admins_get_the_limited_admin_group_and_lose_it_with_is_admin(fence_hub: Hub, fence: FenceStandIn) -> None:
    # Full JupyterHub admins could open every user's server: tests/integration/test_fence_admin.py.
    fence_hub.login("admin-ada")
    ada = fence_hub.user_model("admin-ada")
    assert ada["admin"] is False and "gen3-fence-admins" in ada["groups"]
    fence_hub.login("alice")
    assert fence_hub.user_model("alice")["admin"] is False
    assert "gen3-fence-admins" not in fence_hub.user_model("alice")["groups"]
    fence.users["admin-ada"].is_admin = False
    try:
        fence_hub.login("admin-ada")
        assert "gen3-fence-admins" not in fence_hub.user_model("admin-ada")["groups"]
    finally:
        fence.users["admin-ada"].is_admin = True


def test_logout_ends_the_fence_session(fence_hub: Hub, fence: FenceStandIn) -> None:
    s, _ = fence_hub.login("alice")
    r = s.get(f"{fence_hub.url}hub/logout", allow_redirects=False, timeout=30)
    assert r.status_code == 302
    assert r.headers["Location"].startswith(f"{fence.url}/user/logout?next=")
    r = s.get(f"{fence_hub.url}hub/logout", timeout=30)
    assert fence.calls_to("/user/logout")
    assert s.get(f"{fence_hub.url}hub/home", allow_redirects=False, timeout=30).status_code == 302


def test_the_spawn_pending_page_never_says_not_running_while_the_token_is_refreshed(fence: FenceStandIn, tmp_path: Path) -> None:
    # An operator turning on refresh_pre_spawn would make JupyterHub refresh before it marks the
    # spawn pending; with a slow Fence the pending page then says "Server not running". The
    # authenticator keeps it off; the spawner refreshes inside start(), while pending.
    hub = Hub(tmp_path, fence=fence, extra_config="c.Authenticator.refresh_pre_spawn = True\nc.Authenticator.auth_refresh_age = 3600\n").start()
    try:
        assert "refresh_pre_spawn is ignored" in hub.log()
        fence.access_token_lifetime = 4  # refresh margin: half of it
        s, r = hub.login("alice")
        assert r.status_code == 200
        fence.access_token_lifetime = 1200
        time.sleep(2.5)
        fence.token_delay = 4
        refreshes = len([c for c in fence.calls_to("/user/oauth2/token") if c.grant_type == "refresh_token"])
        form = s.get(f"{hub.url}hub/spawn", timeout=30).text
        xsrf = re.search(r'xsrf_token: "([^"]+)"', form).group(1)
        r = s.post(f"{hub.url}hub/spawn", data={"flavor": "python-small", "_xsrf": xsrf}, allow_redirects=False, timeout=60)
        assert r.status_code == 302 and "spawn-pending" in r.headers["Location"], (r.status_code, r.headers.get("Location"))
        pending = r.headers["Location"] if r.headers["Location"].startswith("http") else f"http://127.0.0.1:{hub.port}{r.headers['Location']}"
        seen = []
        deadline = time.time() + 3
        while time.time() < deadline:
            page = s.get(pending, allow_redirects=False, timeout=30)
            seen.append(page.status_code)
            assert "Server not running" not in page.text and "is not running" not in page.text
            time.sleep(0.3)
        assert 200 in seen
        hub.wait_for_server("alice")
        done = [c for c in fence.calls_to("/user/oauth2/token") if c.grant_type == "refresh_token"]
        assert len(done) == refreshes + 1, "one refresh for the spawn, inside start()"
        hub.api("DELETE", "users/alice/server")
        hub.wait_for_server("alice", ready=False)
    finally:
        fence.token_delay = 0
        hub.stop()


def test_no_secret_or_token_in_the_hub_log(fence_hub: Hub, fence: FenceStandIn) -> None:
    # Runs last in this module: every flow above has written to the (debug-level) log by now.
    fence_hub.login("alice")
    log = fence_hub.log()
    assert "Gen3OAuthenticator" in log or "oauth" in log.lower()
    assert fence.client_secret not in log
    leaked = [t for t in fence.issued_tokens if t in log or t.split(".")[2] in log]
    assert not leaked, f"{len(leaked)} Fence tokens found in the hub log"
    for entry in fence.api_keys.values():
        assert entry["api_key"] not in log
