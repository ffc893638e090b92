"""Contract tests of the portal launcher API (`/lw-workspace/...`) on a real hub in embedded mode, against the Fence stand-in: every call, its shapes and status codes, each status value reached for real, and bad input."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from gen3workspace.spawner.flavors import default_catalogue_path
from tests.support.fence import WORKSPACE_AUTHZ, FenceStandIn
from tests.support.hub import Hub

BASE = "/lw-workspace/"
OPTION_KEYS = {"id", "name", "cpu-limit", "memory-limit", "gpu", "idle-time-limit"}
STATUS_KEYS = {"status", "conditions", "containerStates", "idleTimeLimit", "lastActivityTime", "workspaceType"}


@pytest.fixture(scope="module")
def flavor_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lwflavors") / "flavors.yaml"
    path.write_text(default_catalogue_path().read_text())
    return path


@pytest.fixture(scope="module")
def hub(fence: FenceStandIn, flavor_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    fence.add_user("carol")
    fence.add_user("dave")
    h = Hub(tmp_path_factory.mktemp("launcher"), fence=fence, extra_args=["--base-url", BASE, "--flavors", str(flavor_file)]).start()
    yield h
    h.stop()


def portal(fence: FenceStandIn, user: str, **kw: object) -> requests.Session:
    """What revproxy sends for a logged-in portal user: their Fence access token as a bearer."""
    s = requests.Session()
    s.headers["Authorization"] = f"bearer {fence.mint_access_token(user, **kw)}"  # type: ignore[arg-type]
    return s


def status(hub: Hub, s: requests.Session) -> dict:
    r = s.get(hub.url + "status", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert STATUS_KEYS <= set(body), body
    return body


def wait_status(hub: Hub, s: requests.Session, want: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    seen = None
    while time.time() < deadline:
        seen = status(hub, s)
        if seen["status"] == want:
            return seen
        time.sleep(0.3)
    raise AssertionError(f"status never became {want!r}; last {seen}")


def no_redirect(r: requests.Response) -> requests.Response:
    # A POST answered with a redirect would turn into a GET in the browser: never.
    assert r.status_code not in (301, 302, 303, 307, 308), (r.status_code, r.headers.get("Location"))
    assert not r.history
    return r


def test_options_are_the_flavors_this_user_may_launch(hub: Hub, fence: FenceStandIn) -> None:
    r = portal(fence, "alice").get(hub.url + "options", timeout=30)
    assert r.status_code == 200
    options = r.json()
    assert [o["id"] for o in options] == ["python-small", "r-large"]
    for o in options:
        assert OPTION_KEYS <= set(o), o
    small = options[0]
    assert small == {**small, "name": "Python — small", "cpu-limit": "1", "memory-limit": "2Gi", "gpu": False, "idle-time-limit": 3600 * 1000}
    gabi = {o["id"]: o for o in portal(fence, "gpu-gabi").get(hub.url + "options", timeout=30).json()}
    assert gabi["python-gpu"]["gpu"] is True
    # One option by id, and a forbidden id looks exactly like an unknown one (as hatchery).
    assert portal(fence, "alice").get(hub.url + "options?id=r-large", timeout=30).json()["id"] == "r-large"
    for bad in ("python-gpu", "no-such-flavor"):
        r = portal(fence, "alice").get(hub.url + f"options?id={bad}", timeout=30)
        assert r.status_code == 400 and "Invalid 'id'" in r.json()["error"]


def test_option_ids_stay_the_same_when_the_catalogue_is_edited(hub: Hub, fence: FenceStandIn, flavor_file: Path) -> None:
    before = portal(fence, "alice").get(hub.url + "options", timeout=30).json()
    original = flavor_file.read_text()
    data = yaml.safe_load(original)
    data["flavors"][0]["display_name"] = "Python — small (edited)"
    data["flavors"][0]["cpu"]["limit"] = 2
    try:
        flavor_file.write_text(yaml.safe_dump(data, allow_unicode=True))
        after = portal(fence, "alice").get(hub.url + "options", timeout=30).json()
    finally:
        flavor_file.write_text(original)
    assert [o["id"] for o in after] == [o["id"] for o in before]
    assert after[0]["name"] == "Python — small (edited)" and after[0]["cpu-limit"] == "2"


def test_every_status_from_not_found_to_running_to_not_found(hub: Hub, fence: FenceStandIn) -> None:
    s = portal(fence, "carol")
    assert status(hub, s)["status"] == "Not Found"
    seen: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        p = portal(fence, "carol")
        while not stop.is_set():
            st = p.get(hub.url + "status", timeout=30).json()["status"]
            if not seen or seen[-1] != st:
                seen.append(st)
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        deadline = time.time() + 30
        while not seen and time.time() < deadline:
            time.sleep(0.05)
        r = no_redirect(s.post(hub.url + "launch?id=python-small", timeout=60))
        assert r.status_code == 200 and r.text == "Success"
        running = wait_status(hub, s, "Running")
        assert running["workspaceType"] == "Local" and running["flavor"] == "python-small"
        assert running["idleTimeLimit"] == 3600 * 1000
        assert 0 < running["lastActivityTime"] <= time.time() * 1000 + 1000
        assert time.time() * 1000 - running["lastActivityTime"] < 10 * 60 * 1000
        # Once Running, the process's state as a ready pod's: every condition True, running.
        assert {c["type"]: c["status"] for c in running["conditions"]} == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "True", "Ready": "True"}, running
        [container] = running["containerStates"]
        assert container["name"] == "notebook" and container["ready"] is True and container["state"]["running"]["startedAt"].endswith("Z"), running
        assert fence.active_keys("carol"), "the launch minted no Fence API key"
        # The portal checks proxy/ before it shows the iframe: 200, the user's JupyterLab.
        r = s.get(hub.url + "proxy/", timeout=60)
        assert r.status_code == 200 and "/lw-workspace/user/carol/lab" in r.url, r.url
        assert "JupyterLab" in r.text
        r = no_redirect(s.post(hub.url + "terminate", timeout=60))
        assert r.status_code == 200
        wait_status(hub, s, "Not Found")
        deadline = time.time() + 10
        while seen[-1] != "Not Found" and time.time() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        poller.join(10)
    assert seen == ["Not Found", "Launching", "Running", "Terminating", "Not Found"], seen
    # Revoked at terminate, as on any stop.
    assert fence.active_keys("carol") == []


def test_launching_reports_the_process_as_conditions_and_container_states(hub: Hub, fence: FenceStandIn) -> None:
    s = portal(fence, "dave")
    no_redirect(s.post(hub.url + "launch?id=python-small", timeout=60))
    try:
        st = status(hub, s)
        if st["status"] == "Launching":
            types = {c["type"]: c["status"] for c in st["conditions"]}
            assert types["PodScheduled"] == "True" and types["ContainersReady"] == "False"
            assert st["containerStates"][0]["name"] == "notebook" and st["containerStates"][0]["ready"] is False
        else:
            assert st["status"] == "Running"
        wait_status(hub, s, "Running")
    finally:
        s.post(hub.url + "terminate", timeout=60)
        wait_status(hub, s, "Not Found")


def test_a_server_that_died_is_stopped_until_terminated(hub: Hub, fence: FenceStandIn) -> None:
    s = portal(fence, "dave")
    assert no_redirect(s.post(hub.url + "launch?id=r-large", timeout=60)).status_code == 200
    wait_status(hub, s, "Running")
    pid = hub.api("GET", "users/dave").json()["servers"][""]["state"]["pid"]
    os.kill(pid, signal.SIGKILL)
    st = wait_status(hub, s, "Stopped", timeout=20)
    assert any("terminated" in c["state"] for c in st["containerStates"]), st
    assert no_redirect(s.post(hub.url + "terminate", timeout=60)).status_code == 200
    wait_status(hub, s, "Not Found")
    assert fence.active_keys("dave") == []


def test_a_failed_launch_is_errored_with_its_reason(hub: Hub, fence: FenceStandIn) -> None:
    s = portal(fence, "dave")
    assert status(hub, s)["status"] == "Not Found"  # the token is verified and remembered now
    fence.fail_500 = True
    try:
        r = no_redirect(s.post(hub.url + "launch?id=python-small", timeout=60))
        # launch answers once the spawn has begun; the key is minted just after.
        assert r.status_code == 200, r.text
        st = wait_status(hub, s, "Errored", timeout=30)
    finally:
        fence.fail_500 = False
    assert "Fence did not issue Gen3 credentials" in st["message"], st
    # The portal's Cancel: back to Not Found, and launching works again.
    assert no_redirect(s.post(hub.url + "terminate", timeout=60)).status_code == 200
    assert status(hub, s)["status"] == "Not Found"


def test_launch_refuses_bad_ids_with_a_message(hub: Hub, fence: FenceStandIn) -> None:
    s = portal(fence, "alice")
    cases = {
        "launch": (400, "Missing 'id'"),
        "launch?id=": (400, "Missing 'id'"),
        "launch?id=no-such-flavor": (400, "There is no flavor called 'no-such-flavor'"),
        "launch?id=python-gpu": (403, "not allowed to launch the flavor 'python-gpu'"),
        "launch?id=../../etc": (400, "There is no flavor called"),
    }
    for path, (code, text) in cases.items():
        r = no_redirect(s.post(hub.url + path, timeout=30))
        assert r.status_code == code and text in r.json()["error"], (path, r.status_code, r.text)
    assert s.get(hub.url + "launch?id=python-small", timeout=30).status_code == 405
    assert status(hub, s)["status"] == "Not Found"
    assert fence.active_keys("alice") == []


def test_two_launches_at_once_start_one_server(hub: Hub, fence: FenceStandIn) -> None:
    s1, s2 = portal(fence, "alice"), portal(fence, "alice")
    results: list[requests.Response] = []
    barrier = threading.Barrier(2)

    def go(s: requests.Session, flavor: str) -> None:
        barrier.wait()
        results.append(s.post(hub.url + f"launch?id={flavor}", timeout=60))

    threads = [threading.Thread(target=go, args=(s1, "python-small")), threading.Thread(target=go, args=(s2, "r-large"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    try:
        codes = sorted(r.status_code for r in results)
        assert codes == [200, 409], [(r.status_code, r.text) for r in results]
        loser = next(r for r in results if r.status_code == 409)
        assert "already" in loser.json()["error"]
        wait_status(hub, s1, "Running")
        assert len(fence.active_keys("alice")) == 1
        # Launching again while it runs: the same refusal.
        assert no_redirect(s1.post(hub.url + "launch?id=python-small", timeout=30)).status_code == 409
    finally:
        s1.post(hub.url + "terminate", timeout=60)
        wait_status(hub, s1, "Not Found")


def test_pay_model_calls_hide_the_panel(hub: Hub, fence: FenceStandIn) -> None:
    s = portal(fence, "alice")
    for call in ("allpaymodels", "paymodels"):
        r = s.get(hub.url + call, timeout=30)
        assert r.status_code == 404 and r.json()["error"] == "No paymodel set"
    for call in ("setpaymodel?id=x", "resetpaymodels"):
        assert no_redirect(s.post(hub.url + call, timeout=30)).status_code == 404


def test_terminate_without_a_workspace_is_404(hub: Hub, fence: FenceStandIn) -> None:
    r = no_redirect(portal(fence, "alice").post(hub.url + "terminate", timeout=30))
    assert r.status_code == 404 and "no workspace" in r.json()["error"]


@pytest.mark.parametrize("call,method", [("options", "GET"), ("status", "GET"), ("launch?id=python-small", "POST"), ("terminate", "POST")])
def test_no_token_is_401_not_a_login_redirect(hub: Hub, call: str, method: str) -> None:
    r = no_redirect(requests.request(method, hub.url + call, allow_redirects=False, timeout=30))
    assert r.status_code == 401 and "Log in first" in r.json()["error"]


def test_expired_foreign_and_garbage_tokens_are_401(hub: Hub, fence: FenceStandIn) -> None:
    expired = portal(fence, "alice", lifetime=-60)
    other = FenceStandIn(client_id="other-commons")
    other.add_user("alice")
    foreign = requests.Session()
    # Signed by another commons' key and naming another issuer: our Fence refuses it.
    foreign.headers["Authorization"] = f"bearer {other.mint_access_token('alice', azp=fence.client_id)}"
    garbage = requests.Session()
    garbage.headers["Authorization"] = "Bearer not-a-jwt"
    for s in (expired, foreign, garbage):
        for method, call in (("GET", "options"), ("GET", "status"), ("POST", "launch?id=python-small")):
            r = no_redirect(s.request(method, hub.url + call, timeout=30))
            assert r.status_code == 401 and "not accepted by the commons" in r.json()["error"], (call, r.text)
    assert hub.user_model("alice")["servers"] == {}
    log = hub.log()
    assert other.mint_access_token("alice") not in log


def test_user_without_workspace_permission_is_403_and_not_created(hub: Hub, fence: FenceStandIn) -> None:
    s = portal(fence, "nobody-ned")
    for method, call in (("GET", "options"), ("POST", "launch?id=python-small")):
        r = no_redirect(s.request(method, hub.url + call, timeout=30))
        assert r.status_code == 403
        assert "method 'access' for service 'jupyterhub' on resource '/workspace'" in r.json()["error"]
    assert hub.api("GET", "users/nobody-ned").status_code == 404


def test_first_call_creates_the_user_with_the_token_as_auth_state(hub: Hub, fence: FenceStandIn) -> None:
    fence.add_user("erin", groups=["gpu-users"], authz={**WORKSPACE_AUTHZ, "/workspace-flavors/gpu": WORKSPACE_AUTHZ["/workspace"]})
    token = fence.mint_access_token("erin")
    assert hub.api("GET", "users/erin").status_code == 404
    r = requests.get(hub.url + "options", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200 and "python-gpu" in [o["id"] for o in r.json()]
    model = hub.api("GET", "users/erin", params={"include_stopped_servers": "0"}).json()
    assert "gpu-users" in model["groups"]
    state = hub.api("GET", "users/erin").json().get("auth_state") or {}
    assert state.get("access_token") == token


def test_cookie_session_posts_need_the_csrf_header(hub: Hub, fence: FenceStandIn) -> None:
    s = portal(fence, "carol")
    assert no_redirect(s.post(hub.url + "launch?id=python-small", timeout=60)).status_code == 200
    try:
        wait_status(hub, s, "Running")
        # proxy/ turns the portal login into the hub's own session (cookies for the frame).
        assert s.get(hub.url + "proxy/", timeout=60).status_code == 200
        cookies = requests.Session()
        cookies.cookies.update(s.cookies)
        assert cookies.get(hub.url + "status", timeout=30).json()["status"] == "Running"
        r = no_redirect(cookies.post(hub.url + "terminate", timeout=30))
        assert r.status_code == 403 and "x-csrf-token" in r.json()["error"]
        r = no_redirect(cookies.post(hub.url + "terminate", headers={"x-csrf-token": "abc"}, cookies={"csrftoken": "other"}, timeout=30))
        assert r.status_code == 403
        assert status(hub, s)["status"] == "Running"
        r = no_redirect(cookies.post(hub.url + "terminate", headers={"x-csrf-token": "abc"}, cookies={"csrftoken": "abc"}, timeout=60))
        assert r.status_code == 200
        wait_status(hub, s, "Not Found")
    finally:
        s.post(hub.url + "terminate", timeout=60)


def test_tokens_never_reach_the_log(hub: Hub, fence: FenceStandIn) -> None:
    log = hub.log()
    leaked = [t for t in fence.issued_tokens if t in log]
    assert not leaked


def test_a_bearer_that_is_the_browsers_cookie_needs_the_csrf_header(hub: Hub, fence: FenceStandIn) -> None:
    # revproxy turns the access_token cookie into the bearer; such a call came from a browser.
    token = fence.mint_access_token("alice")
    s = requests.Session()
    s.headers["Authorization"] = f"bearer {token}"
    s.cookies.set("access_token", token)
    r = no_redirect(s.post(hub.url + "launch?id=python-small", timeout=30))
    assert r.status_code == 403 and "x-csrf-token" in r.json()["error"]
    assert status(hub, s)["status"] == "Not Found"


def test_hub_login_alone_is_a_session_for_the_api_and_the_frame(hub: Hub, fence: FenceStandIn) -> None:
    # No bearer token at all (no revproxy): the hub's own login, handed to the launcher.
    s, r = hub.login("carol")
    assert r.status_code == 200
    # The login itself starts the workspace session: no visit to proxy/ first.
    assert s.get(hub.url + "options", timeout=30).status_code == 200
    for c in [c for c in s.cookies if c.name == "gen3ws-session"]:
        s.cookies.clear(c.domain, c.path, c.name)
    assert s.get(hub.url + "options", timeout=30).status_code == 401
    # The frame's way in with only the hub's login: proxy/ -> hub session hand-over -> back.
    r = s.get(hub.url + "proxy/", allow_redirects=False, timeout=30)
    assert r.status_code == 302 and "/lw-workspace/hub/gen3-session?next=" in r.headers["Location"]
    r = s.get(hub.url + "proxy/", timeout=30)
    assert r.status_code == 404 and "no running workspace" in r.text
    assert "gen3ws-session" in s.cookies
    assert [o["id"] for o in s.get(hub.url + "options", timeout=30).json()] == ["python-small", "r-large"]
    csrf = {"x-csrf-token": "t"}
    try:
        assert no_redirect(s.post(hub.url + "launch?id=python-small", headers=csrf, timeout=60)).status_code == 200
        wait_status(hub, s, "Running")
        r = s.get(hub.url + "proxy/", timeout=60)
        assert r.status_code == 200 and r.url.endswith("/lw-workspace/user/carol/lab")
        # An open redirect through the hand-over is refused: back to proxy/ instead.
        r = s.get(hub.url + "hub/gen3-session?next=//evil.example.org/x", allow_redirects=False, timeout=30)
        assert r.headers["Location"] == "/lw-workspace/proxy/"
    finally:
        s.post(hub.url + "terminate", headers=csrf, timeout=60)
        wait_status(hub, s, "Not Found")
