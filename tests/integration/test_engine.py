"""The public proxy engine for real (nginx with auth_request in front of a real hub, `gen3-workspace up`): what reaches a user's server, and what never does.

Mallory's server is tests/support/evil_server.py (it echoes the headers it got, streams N
bytes, and counts the connections it accepts); Bob's is a real JupyterLab.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import requests

from tests.support.fence import FenceStandIn
from tests.support.hub import REPO, Hub

BASE = "/lw-workspace/"
PUBLIC = "https://workspace.commons.test"
OPS_ONLY_ACCESS = "ops-access-token-0123456789abcdef"
OPS_WIDE = "ops-wide-token-0123456789abcdef01"

CONFIG = """
import sys
def _servers(spawner):
    if spawner.user.name == "mallory":
        spawner.cmd = [sys.executable, {evil!r}]
        spawner.args = []
        spawner.environment = dict(spawner.environment, GEN3_TEST_COLLECTOR="http://127.0.0.1:9/", GEN3_TEST_CONNECTIONS={connections!r})
c.Spawner.pre_spawn_hook = _servers
c.JupyterHub.allow_named_servers = True
# Where users reach the commons (TLS ends in front of it): forwarding headers come from here.
c.JupyterHub.public_url = {public!r}
# Non-owners' scripts: one token with only access:servers, one with more.
c.JupyterHub.services = list(c.JupyterHub.services) + [
    {{"name": "ops-access", "api_token": {ops_access!r}}},
    {{"name": "ops-wide", "api_token": {ops_wide!r}}},
]
c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + [
    {{"name": "ops-access", "scopes": ["access:servers"], "services": ["ops-access"]}},
    {{"name": "ops-wide", "scopes": ["access:servers", "read:users"], "services": ["ops-wide"]}},
]
"""


@pytest.fixture(scope="module")
def connections(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("engine-count") / "connections"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def hub(fence: FenceStandIn, connections: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    for name in ("mallory", "bob"):
        fence.add_user(name)
    config = CONFIG.format(evil=str(REPO / "tests" / "support" / "evil_server.py"), connections=str(connections), public=PUBLIC + BASE, ops_access=OPS_ONLY_ACCESS, ops_wide=OPS_WIDE)
    h = Hub(tmp_path_factory.mktemp("engine"), fence=fence, extra_args=["--base-url", BASE], extra_config=config).start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def servers(hub: Hub, fence: FenceStandIn) -> Iterator[dict[str, str]]:
    """Both servers launched through the portal API; each owner's own JupyterHub API token."""
    for user in ("mallory", "bob"):
        r = requests.post(f"{hub.url}launch?id=python-small", headers=bearer(fence, user), timeout=60)
        assert r.status_code == 200, r.text
    tokens = {}
    for user in ("mallory", "bob"):
        hub.wait_for_server(user)
        r = hub.api("POST", f"users/{user}/tokens", json={"note": "engine test"})
        assert r.status_code == 201, r.text
        tokens[user] = r.json()["token"]
    yield tokens
    for user in ("mallory", "bob"):
        requests.post(f"{hub.url}terminate", headers=bearer(fence, user), timeout=60)


def bearer(fence: FenceStandIn, user: str) -> dict[str, str]:
    return {"Authorization": f"bearer {fence.mint_access_token(user)}"}


def echo(hub: Hub, headers: dict[str, str], path: str = "user/mallory/echo-headers") -> requests.Response:
    return requests.get(hub.url + path, headers=headers, allow_redirects=False, timeout=30)


def ws_status(url: str, headers: dict[str, str]) -> int:
    async def connect() -> int:
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=10)):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    return asyncio.run(connect())


def test_forwarding_headers_are_the_engines_and_x_forwarded_proto_is_the_public_urls(hub: Hub, fence: FenceStandIn, servers: dict[str, str]) -> None:
    forged = {
        "Forwarded": "for=6.6.6.6;proto=http",
        "X-Real-Ip": "6.6.6.6",
        "X-Scheme": "http",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Port": "1",
        "X-Original-URI": "/user/bob/",
    }
    r = echo(hub, {**bearer(fence, "mallory"), **forged})
    assert r.status_code == 200, r.text
    got = r.json()
    for name in ("forwarded", "x-real-ip", "x-scheme", "x-forwarded-port", "x-original-uri"):
        assert name not in got, (name, got)
    assert got["x-forwarded-proto"] == "https"
    assert got["x-forwarded-host"] == "workspace.commons.test"
    assert got["x-forwarded-for"] == "127.0.0.1"
    # The caller's Fence token never reaches the server.
    assert "authorization" not in got, got


def test_commons_cookies_are_stripped_and_the_servers_own_kept(hub: Hub, fence: FenceStandIn, servers: dict[str, str]) -> None:
    cookies = "access_token=FENCE; fence=SESSION; jupyterhub-hub-login=HUB; jupyterhub-session-id=abc; jupyterhub-user-mallory=OWN; odd=va\"lue"
    got = echo(hub, {**bearer(fence, "mallory"), "Cookie": cookies}).json()
    assert got["cookie"] == 'jupyterhub-session-id=abc; jupyterhub-user-mallory=OWN; odd=va"lue'


def test_an_owners_api_token_reaches_their_server_on_http_query_and_websocket(hub: Hub, servers: dict[str, str]) -> None:
    token = servers["bob"]
    r = requests.get(f"{hub.url}user/bob/api/status", headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200 and "started" in r.json(), r.text
    r = requests.get(f"{hub.url}user/bob/api/status?token={token}", timeout=30)
    assert r.status_code == 200 and "started" in r.json(), r.text
    ws = hub.url.replace("http", "ws") + "user/bob/api/events/subscribe"
    assert ws_status(ws, {"Authorization": f"token {token}"}) == 101
    # Bob's token is Bob's: Mallory's server is not his.
    assert ws_status(hub.url.replace("http", "ws") + "user/mallory/api/events/subscribe", {"Authorization": f"token {token}"}) == 403
    assert token not in hub.log()


def test_a_websocket_from_another_origin_is_refused_before_the_server_is_dialed(hub: Hub, fence: FenceStandIn, servers: dict[str, str], connections: Path) -> None:
    ws = hub.url.replace("http", "ws") + "user/mallory/api/events/subscribe"
    before = connections.read_text().count("\n")
    assert ws_status(ws, {**bearer(fence, "mallory"), "Origin": "https://evil.example"}) == 403
    time.sleep(1)
    assert connections.read_text().count("\n") == before, "the engine dialed the server for a refused Origin"
    # Positive control: the same Origin check passes for the page's own origin, and the
    # server (no WebSocket server at all) is dialed.
    status = ws_status(ws, {**bearer(fence, "mallory"), "Origin": f"http://127.0.0.1:{hub.port}"})
    assert status != 403
    deadline = time.time() + 10
    while connections.read_text().count("\n") == before and time.time() < deadline:
        time.sleep(0.2)
    assert connections.read_text().count("\n") > before


def test_a_non_owners_token_is_forwarded_only_when_it_carries_nothing_beyond_access_servers(hub: Hub, fence: FenceStandIn, servers: dict[str, str]) -> None:
    r = echo(hub, {"Authorization": f"token {OPS_ONLY_ACCESS}"})
    assert r.status_code == 200, r.text
    assert r.json()["authorization"] == f"token {OPS_ONLY_ACCESS}"
    # A token the server could replay for more is never handed to it: refused, with a reason.
    r = echo(hub, {"Authorization": f"token {OPS_WIDE}"})
    assert r.status_code == 403 and "access:servers" in r.text and "x-forwarded-for" not in r.text
    r = echo(hub, {"Authorization": f"token {hub.admin_token}"})
    assert r.status_code == 403 and "x-forwarded-for" not in r.text
    # An owner's own token is theirs to send.
    assert echo(hub, {"Authorization": f"token {servers['mallory']}"}).json()["authorization"] == f"token {servers['mallory']}"


def test_a_cached_allow_never_serves_another_caller(hub: Hub, fence: FenceStandIn, servers: dict[str, str]) -> None:
    assert echo(hub, bearer(fence, "mallory")).status_code == 200
    # Same path, same moment: Bob's credentials, no credentials, Mallory's token on Bob's path.
    r = echo(hub, bearer(fence, "bob"))
    assert r.status_code == 403 and "x-forwarded-for" not in r.text
    r = echo(hub, {})
    assert r.status_code == 302 and "/hub/gen3-session" in r.headers["Location"]
    r = echo(hub, {"Authorization": f"token {servers['mallory']}"}, path="user/bob/api/status")
    assert r.status_code == 403
    # `?token=` is part of the cache key: Bob's allowed URL with Mallory's token is not Bob's.
    assert echo(hub, {}, path=f"user/bob/api/status?token={servers['bob']}").status_code == 200
    assert echo(hub, {}, path=f"user/bob/api/status?token={servers['mallory']}").status_code == 403
    assert echo(hub, {}, path="user/bob/api/status?token=").status_code == 302
    assert echo(hub, {}, path="user/bob/api/status").status_code == 302
    # A denial is never cached: the same request with credentials passes right after.
    assert echo(hub, {"Authorization": f"token {servers['mallory']}"}).status_code == 200


def test_a_restarted_server_is_reached_at_its_new_address_not_a_cached_old_one(hub: Hub, fence: FenceStandIn, servers: dict[str, str]) -> None:
    # The cached answer names an address; a stopped server's address may be the next
    # server's, another user's. The cache must not outlive a restart.
    headers = bearer(fence, "mallory")
    before = echo(hub, headers).json()["_address"]
    assert requests.post(f"{hub.url}terminate", headers=headers, timeout=60).status_code == 200
    hub.wait_for_server("mallory", ready=False)
    assert requests.post(f"{hub.url}launch?id=python-small", headers=headers, timeout=60).status_code == 200
    hub.wait_for_server("mallory")
    r = echo(hub, headers)
    assert r.status_code == 200, r.text[:300]
    model = hub.user_model("mallory")["servers"][""]
    assert r.json()["_address"].endswith(":" + str(model["state"].get("port", r.json()["_address"].rsplit(":", 1)[1]))), (before, r.json()["_address"], model)


def test_a_named_server_is_reached_at_its_own_path_by_its_owner_only(hub: Hub, fence: FenceStandIn, servers: dict[str, str]) -> None:
    r = hub.api("POST", "users/mallory/servers/side", json={"flavor": "python-small"})
    assert r.status_code in (201, 202), r.text
    deadline = time.time() + 120
    while not (hub.user_model("mallory")["servers"].get("side") or {}).get("ready"):
        assert time.time() < deadline, "the named server did not start"
        time.sleep(0.5)
    try:
        got = echo(hub, bearer(fence, "mallory"), path="user/mallory/side/echo-headers").json()
        assert got["_served_by"] == f"{BASE}user/mallory/side/"
        # The default server still answers its own paths, a missing name falls to it.
        assert echo(hub, bearer(fence, "mallory")).json()["_served_by"] == f"{BASE}user/mallory/"
        assert echo(hub, bearer(fence, "bob"), path="user/mallory/side/echo-headers").status_code == 403
    finally:
        hub.api("DELETE", "users/mallory/servers/side")


def test_the_decision_endpoint_is_not_reachable_through_the_engine(hub: Hub, fence: FenceStandIn, servers: dict[str, str]) -> None:
    r = requests.get(f"{hub.url}hub/gen3-route", headers={**bearer(fence, "mallory"), "X-Original-URI": f"{BASE}user/mallory/"}, timeout=30)
    assert r.status_code == 404 and "X-Gen3-Upstream" not in r.headers


def test_a_150_mb_download_arrives_whole(hub: Hub, fence: FenceStandIn, servers: dict[str, str]) -> None:
    size = 150 * 1024 * 1024
    got = 0
    with requests.get(f"{hub.url}user/mallory/bytes/{size}", headers=bearer(fence, "mallory"), stream=True, timeout=120) as r:
        assert r.status_code == 200
        for chunk in r.iter_content(1 << 20):
            got += len(chunk)
    assert got == size


def test_an_upload_reaches_the_server_whole(hub: Hub, servers: dict[str, str]) -> None:
    # Streamed to the server (no body-size cap of the engine's): JupyterLab's contents API.
    text = "0123456789abcdef" * (20 * 1024 * 1024 // 16)
    url = f"{hub.url}user/bob/api/contents/upload.txt"
    auth = {"Authorization": f"token {servers['bob']}"}
    r = requests.put(url, json={"type": "file", "format": "text", "content": text}, headers=auth, timeout=120)
    assert r.status_code in (200, 201), r.text[:300]
    got = requests.get(url, headers=auth, timeout=120).json()
    assert got["size"] == len(text) and got["content"] == text


def test_the_engine_config_is_rendered_from_the_one_template(hub: Hub) -> None:
    conf = (hub.data_dir / "engine" / "nginx.conf").read_text()
    assert "auth_request /_gen3ws_route;" in conf and f"location {BASE}user/" in conf
    assert json.dumps("@") not in conf and "@BASE_URL@" not in conf


def test_the_engine_outlives_a_hub_restart_and_an_allowed_caller_keeps_working(fence: FenceStandIn, tmp_path: Path) -> None:
    """JupyterHub's design (as with configurable-http-proxy): with cleanup_proxy off the engine
    keeps running while the hub restarts, serves already-allowed callers from its decision
    cache, and the new hub reloads it instead of starting a second one."""
    import os
    import signal

    fence.add_user("mallory")
    config = CONFIG.format(evil=str(REPO / "tests" / "support" / "evil_server.py"), connections=str(tmp_path / "connections"), public=PUBLIC + BASE, ops_access=OPS_ONLY_ACCESS, ops_wide=OPS_WIDE)
    config += "\nc.JupyterHub.cleanup_proxy = False\nc.JupyterHub.cleanup_servers = False\n"
    hub = Hub(tmp_path, fence=fence, extra_args=["--base-url", BASE], extra_config=config).start()
    pid_file = hub.data_dir / "engine" / "engine.pid"
    engine_pid = int(pid_file.read_text())
    headers = bearer(fence, "mallory")
    try:
        assert requests.post(f"{hub.url}launch?id=python-small", headers=headers, timeout=60).status_code == 200
        hub.wait_for_server("mallory")
        assert echo(hub, headers).status_code == 200
        hub.stop()
        # The hub is gone; its decision for this caller is not.
        assert requests.get(f"{hub.url}hub/health", timeout=10).status_code == 502
        r = echo(hub, headers)
        assert r.status_code == 200 and r.json()["x-forwarded-proto"] == "https"
        # Nobody new gets in while the hub cannot decide.
        assert echo(hub, {"Authorization": "bearer not-a-token"}).status_code == 502
        hub.start()
        assert int(pid_file.read_text()) == engine_pid, "the new hub started a second engine instead of reloading this one"
        assert echo(hub, headers).status_code == 200
        requests.post(f"{hub.url}terminate", headers=headers, timeout=60)
        hub.wait_for_server("mallory", ready=False)
    finally:
        hub.stop()
        try:
            os.kill(engine_pid, signal.SIGQUIT)
        except ProcessLookupError:
            pass
