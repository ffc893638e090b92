"""The lean spawn path: one auth-state read per spawn, no pod without a key, no Secret read on a normal stop,
Fence calls not queued behind Tornado's 10-request default, and a CLI that starts without importing the hub."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from aiohttp import web as aioweb
from kubespawner import KubeSpawner
from tornado import web
from tornado.httpclient import HTTPRequest

from gen3workspace.hub.cli import free_port
from tests.support.fakes import FakeUser
from tests.support.fence import FenceStandIn
from tests.unit.test_kube_spawner import fence, fence_session, kubeconfig, make_spawner  # noqa: F401 - fence: fixture, kubeconfig: autouse fixture


class CountingUser(FakeUser):
    reads = 0

    async def get_auth_state(self) -> dict[str, Any]:
        self.reads += 1
        return await super().get_auth_state()


@pytest.fixture
def pods(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """KubeSpawner's own start, cut down to the calls our subclass relies on: options, the pod manifest, the create request."""
    made: list[Any] = []

    async def start(self: Any) -> str:
        await self.load_user_options()
        pod = await self.get_pod_manifest()
        await self._make_create_pod_request(pod, 10)
        made.append(pod)
        return "http://127.0.0.1:8888"

    monkeypatch.setattr(KubeSpawner, "_start", start)
    return made


async def hub_spawn(spawner: Any, options: dict[str, Any]) -> Any:
    """What JupyterHub's User.spawn does around start()."""
    spawner._start_pending = True
    try:
        await spawner._run_apply_user_options(options)
        return await spawner.start()
    finally:
        spawner._start_pending = False


async def test_a_spawn_reads_the_auth_state_once_and_the_flavor_page_reads_it_afresh(fence: FenceStandIn, pods: list[Any]) -> None:
    auth, plain = fence_session(fence)
    user = CountingUser("alice", auth_state=plain.auth_state)
    spawner = make_spawner(user, authenticator=auth)
    await hub_spawn(spawner, {"flavor": "python-small"})
    assert user.reads == 1, "options hook, start's flavor check, KubeSpawner's options and the key mint share one read"
    assert spawner._api_key_id in fence.active_keys("alice")
    assert spawner.credentials_secret_name in spawner.api.secrets
    volumes = {v.name for v in pods[0].spec.volumes}
    assert "gen3-credentials" in volumes
    # Outside a spawn nothing is cached: a changed Fence authz shows on the next flavor page.
    await spawner.get_options_form()
    assert user.reads == 2
    await spawner._cleanup_credentials()


async def test_start_called_directly_also_reads_once(fence: FenceStandIn, pods: list[Any]) -> None:
    auth, plain = fence_session(fence)
    user = CountingUser("alice", auth_state=plain.auth_state)
    spawner = make_spawner(user, authenticator=auth)
    spawner.user_options = {"flavor": "python-small"}
    await spawner.start()
    assert user.reads == 1
    await spawner._cleanup_credentials()


async def test_fence_refusing_the_key_means_no_pod_and_no_secret(fence: FenceStandIn, pods: list[Any]) -> None:
    auth, user = fence_session(fence)
    spawner = make_spawner(user, authenticator=auth)
    fence.fail_500 = True
    try:
        with pytest.raises(web.HTTPError) as e:
            await hub_spawn(spawner, {"flavor": "python-small"})
    finally:
        fence.fail_500 = False
    assert e.value.status_code == 502
    assert pods == [], "the pod waits for the key"
    assert not [c for c in spawner.api.calls if c[0] == "create_namespaced_secret"]


async def test_a_normal_stop_reads_no_secret(fence: FenceStandIn, pods: list[Any]) -> None:
    auth, user = fence_session(fence)
    spawner = make_spawner(user, authenticator=auth)
    await hub_spawn(spawner, {"flavor": "python-small"})
    key_id = spawner._api_key_id
    spawner.api.calls.clear()
    await spawner._cleanup_credentials()
    assert key_id not in fence.active_keys("alice")
    assert [c[0] for c in spawner.api.calls] == ["delete_namespaced_secret"], "revoked with the user's token; the Secret is only deleted"


@pytest.mark.parametrize("caller", ["spawner", "authenticator"])
async def test_fence_calls_are_not_queued_ten_at_a_time(caller: str) -> None:
    """A storm of spawns (key mints) and logins (token refreshes) talks to Fence at once: all 25 requests are in flight together."""
    wanted = 25
    in_flight = 0
    peak = 0
    everyone = asyncio.Event()

    async def slow(request: aioweb.Request) -> aioweb.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight >= wanted:
            everyone.set()
        try:
            # Held until all have arrived; a capped client never gets there and is let go after 10 s.
            await asyncio.wait_for(everyone.wait(), 10)
        except asyncio.TimeoutError:
            pass
        in_flight -= 1
        return aioweb.json_response({})

    app = aioweb.Application()
    app.router.add_get("/user/slow", slow)
    runner = aioweb.AppRunner(app)
    await runner.setup()
    port = free_port()
    await aioweb.TCPSite(runner, "127.0.0.1", port).start()
    try:
        from gen3workspace.hub.auth import Gen3OAuthenticator

        auth = Gen3OAuthenticator(commons_url=f"http://127.0.0.1:{port}", client_id="c", client_secret="s")
        if caller == "spawner":
            spawner = make_spawner(FakeUser("alice"), authenticator=auth)
            await asyncio.gather(*(spawner._fence("GET", "/slow", "t") for _ in range(wanted)))
        else:
            url = f"http://127.0.0.1:{port}/user/slow"
            await asyncio.gather(*(auth.fetch(HTTPRequest(url, request_timeout=30)) for _ in range(wanted)))
    finally:
        await runner.cleanup()
    assert peak == wanted


def test_the_cli_starts_without_importing_the_hub_or_the_schema_validator() -> None:
    code = "import sys, gen3workspace.hub.cli; print(sorted(m for m in ('jupyterhub', 'jsonschema', 'kubespawner') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
