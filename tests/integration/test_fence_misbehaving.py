"""A Fence that answers with the wrong shape (HTML, missing fields, wrong types) or slowly: the real hub says 502 in words, never 500, and logs no secret."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from gen3workspace.spawner.flavors import default_catalogue_path
from tests.support.fence import Fault, FenceStandIn
from tests.support.hub import Hub

TOKEN = ("POST", "/user/oauth2/token")
USERINFO = ("GET", "/user/user")
API_KEY = ("POST", "/user/credentials/api/")
MAINTENANCE = "<!doctype html><title>Down for maintenance</title><h1>Back soon</h1>"


def userinfo_with(fence: FenceStandIn, user: str, **fields: object) -> str:
    info = fence.users[user].userinfo()
    for k, v in fields.items():
        if v is ...:
            info.pop(k)
        else:
            info[k] = v
    return json.dumps(info)


LOGIN_FAULTS = {
    "token-html": (TOKEN, lambda f: Fault(body=MAINTENANCE, content_type="text/html"), "web page"),
    "token-empty": (TOKEN, lambda f: Fault(body=""), "empty"),
    "token-no-access-token": (TOKEN, lambda f: Fault(body=json.dumps({"token_type": "Bearer", "expires_in": 1200})), "access_token"),
    "token-list": (TOKEN, lambda f: Fault(body="[1, 2]"), "not an object"),
    "token-access-token-number": (TOKEN, lambda f: Fault(body=json.dumps({"access_token": 42})), "access_token"),
    "token-scope-object": (TOKEN, lambda f: Fault(body=json.dumps({"access_token": "abc.def.ghi", "scope": {"a": 1}})), "scope"),
    "userinfo-html": (USERINFO, lambda f: Fault(body=MAINTENANCE, content_type="text/html"), "web page"),
    "userinfo-no-username": (USERINFO, lambda f: Fault(body=userinfo_with(f, "alice", username=...)), "username"),
    "userinfo-username-list": (USERINFO, lambda f: Fault(body=userinfo_with(f, "alice", username=["alice"])), "username"),
    "userinfo-authz-list": (USERINFO, lambda f: Fault(body=userinfo_with(f, "alice", authz=["/workspace"])), "authz"),
    "userinfo-authz-text": (USERINFO, lambda f: Fault(body=userinfo_with(f, "alice", authz="/workspace")), "authz"),
    "userinfo-authz-entry-text": (USERINFO, lambda f: Fault(body=userinfo_with(f, "alice", authz={"/workspace": "access"})), "authz"),
    "userinfo-groups-text": (USERINFO, lambda f: Fault(body=userinfo_with(f, "alice", groups="analysts")), "groups"),
    "userinfo-is-admin-text": (USERINFO, lambda f: Fault(body=userinfo_with(f, "alice", is_admin="yes")), "is_admin"),
}


@pytest.fixture(scope="module")
def hub(fence: FenceStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    flavors = tmp_path_factory.mktemp("flavors") / "flavors.yaml"
    flavors.write_text(default_catalogue_path().read_text())
    h = Hub(tmp_path_factory.mktemp("misbehaving"), fence=fence, extra_args=["--flavors", str(flavors)]).start()
    h.flavor_file = flavors  # type: ignore[attr-defined]
    yield h
    h.stop()


@pytest.mark.parametrize("name", list(LOGIN_FAULTS))
def test_a_wrongly_shaped_answer_is_a_502_in_words(hub: Hub, fence: FenceStandIn, name: str) -> None:
    route, make, words = LOGIN_FAULTS[name]
    before = len(hub.log())
    fence.faults[route] = make(fence)
    s, r = hub.login("alice")
    fence.faults.clear()
    text = html.unescape(r.text)
    assert r.status_code == 502, (r.status_code, text[-500:])
    assert "Fence" in text and words in text and "Traceback" not in text
    new_log = hub.log()[before:]
    assert "500 GET" not in new_log and "Traceback" not in new_log
    assert requests.get(f"{hub.url}hub/health", timeout=10).status_code == 200
    # The next login, with Fence behaving again, works.
    s, r = hub.login("alice")
    assert r.status_code == 200


def test_a_slow_fence_during_login_never_blocks_the_hub(hub: Hub, fence: FenceStandIn) -> None:
    s, callback = hub.authorize_only("alice")
    # A slow answer (5 s, inside the client's 20 s timeout) still logs the user in, and the hub
    # answers everyone else meanwhile.
    fence.faults[TOKEN] = Fault(delay=5)
    import threading

    result: dict[str, requests.Response] = {}
    t = threading.Thread(target=lambda: result.setdefault("r", s.get(callback, timeout=60)))
    t.start()
    time.sleep(1)
    began = time.monotonic()
    assert requests.get(f"{hub.url}hub/health", timeout=10).status_code == 200
    assert time.monotonic() - began < 3, "the hub must not block on a slow Fence"
    t.join(60)
    assert result["r"].status_code == 200


def test_a_wrongly_shaped_api_key_answer_fails_the_spawn_in_words(hub: Hub, fence: FenceStandIn) -> None:
    hub.login("alice")
    for body in [MAINTENANCE, json.dumps({"key_id": "../../admin", "api_key": "x.y.z"}), json.dumps({"api_key": "x.y.z"}), "[]"]:
        fence.faults[API_KEY] = Fault(body=body, content_type="text/html" if body.startswith("<") else "application/json")
        r = hub.api("POST", "users/alice/server", json={"flavor": "python-small"})
        fence.faults.clear()
        if r.status_code in (201, 202):
            model = hub.wait_for_server("alice", ready=False, timeout=60)
            assert model["servers"] == {}
        else:
            assert r.status_code == 502, r.text
            assert "Fence" in r.json()["message"] and "Traceback" not in r.text
    assert "Unusable API key answer from Fence" in hub.log()
    assert "500 POST" not in hub.log()


def test_a_hostile_catalogue_edit_never_stops_the_hub(hub: Hub) -> None:
    from tests.support.hostile import HOSTILE, materialise

    flavors: Path = hub.flavor_file  # type: ignore[attr-defined]
    good = flavors.read_bytes()
    s, _ = hub.login("alice")
    try:
        for case in [c for c in HOSTILE if c.name in ("billion-laughs", "deep-flow-nesting", "not-utf8", "fifo", "too-large", "cpu-nan")]:
            flavors.unlink()
            if case.special == "fifo":
                import os

                os.mkfifo(flavors)
            else:
                flavors.write_bytes(case.data)
            began = time.monotonic()
            assert requests.get(f"{hub.url}hub/health", timeout=10).status_code == 200
            form = s.get(f"{hub.url}hub/spawn", timeout=30).text
            assert 'value="r-large"' in form, f"{case.name}: the last good catalogue must keep serving"
            assert time.monotonic() - began < 5, f"{case.name} stalled the hub"
    finally:
        flavors.unlink()
        flavors.write_bytes(good)
    assert max(len(line) for line in hub.log().splitlines()) < 5000


def test_an_unknown_flavor_name_of_a_megabyte_is_not_echoed_whole(hub: Hub) -> None:
    hub.login("alice")
    r = hub.api("POST", "users/alice/server", json={"flavor": "x" * 1_000_000})
    assert r.status_code == 400
    assert len(r.text) < 2000 and "no flavor called" in r.json()["message"]
    assert max(len(line) for line in hub.log().splitlines()) < 5000


def test_catalogue_yaml_bytes_are_untouched(hub: Hub) -> None:
    # The module's hot-reload test restores the file exactly.
    assert yaml.safe_load(hub.flavor_file.read_text())["default"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("fault", ["html", "no-username", "slow-then-html"])
def test_a_misbehaving_fence_during_refresh_keeps_the_session(hub: Hub, fence: FenceStandIn, fault: str) -> None:
    fence.access_token_lifetime = 2  # inside the refresh margin: the next request refreshes
    s, r = hub.login("alice")
    assert r.status_code == 200
    fence.access_token_lifetime = 1200
    before = len(hub.log())
    if fault == "html":
        fence.faults[TOKEN] = Fault(body=MAINTENANCE, content_type="text/html")
    elif fault == "no-username":
        fence.faults[USERINFO] = Fault(body=userinfo_with(fence, "alice", username=...))
    else:
        fence.faults[TOKEN] = Fault(body=MAINTENANCE, content_type="text/html", delay=3)
    time.sleep(2.5)
    r = s.get(f"{hub.url}hub/home", allow_redirects=False, timeout=60)
    fence.faults.clear()
    assert r.status_code == 200, "a broken Fence answer must not log the user out, nor be a 500"
    assert "keeping the current session" in hub.log()[before:]
