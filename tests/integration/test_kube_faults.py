"""Faults mid-spawn and mid-stop against the real API server and the Fence stand-in: no drive, key, Secret or pod is ever lost or left behind.

Spawner level, as the hub drives it: `start()` under JupyterHub's start timeout
(`asyncio.wait_for`, which cancels the start), then `stop()` and the post-stop hook. A hub
killed mid-spawn or mid-stop is a real process (tests/support/spawn_child.py) SIGKILLed at
the step, and a second "hub" takes over with the state JupyterHub would have stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException
from tornado import web

from gen3workspace.spawner.kube import Gen3KubeSpawner
from tests.integration.test_kube_spawn import SERVER_CMD, admin, chart_ns, harness, hub_sa_client, make_spawner, stop  # noqa: F401
from tests.support.fence import Fault, FenceStandIn
from tests.support.kube_fixtures import *  # noqa: F403
from tests.support.kubebed import KubeBed
from tests.support.kubelet import KubeletHarness

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]
MINT = ("POST", "/user/credentials/api/")
REVOKE = ("DELETE", "/user/credentials/api/*")


@pytest.fixture(scope="module")
def fence() -> Iterator[FenceStandIn]:
    f = FenceStandIn()
    for name in ("alice", "bob", "carol", "dave", "erin", "frank"):
        f.add_user(name, groups=["analysts"])
    f.start()
    yield f
    f.stop()


async def inventory(admin: k8s.CoreV1Api, ns: str, user: str) -> dict[str, dict[str, str]]:
    """The user's pods, credential Secrets and drive, by name → uid."""
    pods = await admin.list_namespaced_pod(ns)
    secrets = await admin.list_namespaced_secret(ns)
    pvcs = await admin.list_namespaced_persistent_volume_claim(ns)
    mine = lambda name: name.endswith(f"-{user}") or f"-{user}-" in name or name == f"claim-{user}"  # noqa: E731
    return {
        "pods": {p.metadata.name: p.metadata.uid for p in pods.items if mine(p.metadata.name) and not p.metadata.deletion_timestamp},
        "secrets": {s.metadata.name: s.metadata.uid for s in secrets.items if s.metadata.name.startswith("gen3-credentials-") and mine(s.metadata.name)},
        "pvcs": {p.metadata.name: p.metadata.uid for p in pvcs.items if mine(p.metadata.name)},
    }


async def wait_for(check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def drive_of(fence: FenceStandIn, ns: str, user: str, admin: k8s.CoreV1Api) -> str:
    """Make sure the user has a drive (one ordinary spawn and stop) and return its uid."""
    spawner = make_spawner(fence, ns, user, ["analysts"])
    spawner.user_options = {"flavor": "python-small"}
    await spawner.start()
    await stop(spawner)
    return (await inventory(admin, ns, user))["pvcs"][f"claim-{user}"]


async def assert_nothing_left(fence: FenceStandIn, admin: k8s.CoreV1Api, ns: str, user: str, drive_uid: str | None) -> None:
    """No pod, no Secret, the same drive, every key of the user revoked (late ones included)."""
    async def settled() -> bool:
        inv = await inventory(admin, ns, user)
        return not inv["pods"] and not inv["secrets"]

    deadline = time.monotonic() + 30
    while not await settled():
        assert time.monotonic() < deadline, f"left behind: {await inventory(admin, ns, user)}"
        await asyncio.sleep(0.2)
    await wait_for(lambda: fence.active_keys(user) == [], 20)
    inv = await inventory(admin, ns, user)
    if drive_uid is not None:
        assert inv["pvcs"] == {f"claim-{user}": drive_uid}, "the drive was deleted or re-created"


async def start_with_timeout(spawner: Gen3KubeSpawner, timeout: float) -> Any:
    """What JupyterHub does: wait_for cancels the start when the timeout fires, then stops the server."""
    try:
        return await asyncio.wait_for(spawner.start(), timeout)
    except BaseException:
        await stop(spawner)
        raise


async def block(*args: Any, **kwargs: Any) -> None:
    await asyncio.Event().wait()


# --- Fence down, slow or misbehaving ------------------------------------------------------------


async def test_fence_down_during_spawn(fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api) -> None:
    ns = chart_ns[0]
    drive = await drive_of(fence, ns, "alice", admin)
    keys = len(fence.api_keys)
    fence.stop()
    try:
        spawner = make_spawner(fence, ns, "alice", ["analysts"])
        spawner.user_options = {"flavor": "python-small"}
        with pytest.raises(web.HTTPError) as e:
            await start_with_timeout(spawner, 30)
        assert e.value.status_code == 503 and "not answering" in e.value.log_message
    finally:
        fence.start()
    assert len(fence.api_keys) == keys
    await assert_nothing_left(fence, admin, ns, "alice", drive)


@pytest.mark.parametrize("answer", ["html", "no-key-id"])
async def test_fence_misbehaving_during_spawn(fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api, answer: str) -> None:
    ns = chart_ns[0]
    drive = await drive_of(fence, ns, "bob", admin)
    body = "<html>maintenance</html>" if answer == "html" else json.dumps({"api_key": "x.y.z"})
    fence.faults[MINT] = Fault(body=body, content_type="text/html" if answer == "html" else "application/json")
    spawner = make_spawner(fence, ns, "bob", ["analysts"])
    spawner.user_options = {"flavor": "python-small"}
    with pytest.raises(web.HTTPError) as e:
        await start_with_timeout(spawner, 30)
    fence.faults.clear()
    assert e.value.status_code == 502
    await assert_nothing_left(fence, admin, ns, "bob", drive)


async def test_fence_slow_during_spawn_past_the_start_timeout(fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api) -> None:
    ns = chart_ns[0]
    drive = await drive_of(fence, ns, "carol", admin)
    keys = len(fence.api_keys)
    fence.faults[MINT] = Fault(delay=3, times=1)
    spawner = make_spawner(fence, ns, "carol", ["analysts"])
    spawner.user_options = {"flavor": "python-small"}
    with pytest.raises(asyncio.TimeoutError):
        await start_with_timeout(spawner, 1.5)
    # Fence minted the key after the hub gave up on the spawn: it must still be revoked.
    await wait_for(lambda: len(fence.api_keys) == keys + 1, 10)
    await assert_nothing_left(fence, admin, ns, "carol", drive)


async def test_fence_down_during_stop_keeps_the_key_for_the_next_start(fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api) -> None:
    ns = chart_ns[0]
    drive = await drive_of(fence, ns, "dave", admin)
    spawner = make_spawner(fence, ns, "dave", ["analysts"])
    spawner.user_options = {"flavor": "python-small"}
    await spawner.start()
    first = spawner._api_key_id
    fence.stop()
    try:
        await stop(spawner)  # never blocked by Fence
    finally:
        fence.start()
    state = spawner.get_state()
    assert state["gen3_pending_revocations"] == [first]
    assert fence.active_keys("dave") == [first]
    # A restarted hub loads the stored state; the next start revokes the key first.
    again = make_spawner(fence, ns, "dave", ["analysts"])
    again.load_state(state)
    again.user_options = {"flavor": "python-small"}
    await again.start()
    assert fence.active_keys("dave") == [again._api_key_id]
    await stop(again)
    await assert_nothing_left(fence, admin, ns, "dave", drive)


async def test_fence_slow_during_stop(fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api) -> None:
    ns = chart_ns[0]
    drive = await drive_of(fence, ns, "erin", admin)
    spawner = make_spawner(fence, ns, "erin", ["analysts"])
    spawner.user_options = {"flavor": "python-small"}
    await spawner.start()
    fence.faults[REVOKE] = Fault(delay=2)
    await stop(spawner)
    fence.faults.clear()
    await assert_nothing_left(fence, admin, ns, "erin", drive)


@pytest.mark.parametrize("fault", ["down", "slow", "html"])
async def test_fence_faults_during_the_refresh_before_minting(fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api, fault: str) -> None:
    ns = chart_ns[0]
    drive = await drive_of(fence, ns, "frank", admin)
    fence.access_token_lifetime = 60  # inside the 300 s refresh margin: the spawn refreshes first
    tokens = fence._token_response("frank", ["openid", "user", "data", "credentials"], fence.client_id)
    fence.access_token_lifetime = 1200
    spawner = make_spawner(fence, ns, "frank", ["analysts"])
    spawner.user.auth_state = {"access_token": tokens["access_token"], "refresh_token": tokens["refresh_token"], "oauth_user": {"authz": {}}}
    spawner.user_options = {"flavor": "python-small"}
    refresh = ("POST", "/user/oauth2/token")
    if fault == "slow":
        fence.faults[refresh] = Fault(delay=2)
    elif fault == "html":
        fence.faults[refresh] = Fault(body="<html>oops</html>", content_type="text/html")
    else:
        # Fence down for the refresh only: it comes back before the key is minted.
        fence.faults[refresh] = Fault(status=503, body='{"error": "unavailable"}')
    await start_with_timeout(spawner, 30)
    fence.faults.clear()
    # The session survives (the token still had a minute), the server runs with a key.
    assert spawner._api_key_id in fence.active_keys("frank")
    await stop(spawner)
    await assert_nothing_left(fence, admin, ns, "frank", drive)


# --- the start timeout at each step ------------------------------------------------------------------


@pytest.mark.parametrize("step", ["after-key", "after-secret", "after-pvc", "after-pod"])
async def test_the_start_timeout_at_each_step(fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = chart_ns[0]
    user = "alice"
    drive = await drive_of(fence, ns, user, admin)
    spawner = make_spawner(fence, ns, user, ["analysts"])
    spawner.user_options = {"flavor": "python-small"}
    if step == "after-key":
        monkeypatch.setattr(spawner, "_write_credentials_secret", block)
    elif step == "after-secret":
        # The Secret is written; the PVC request (for a drive that exists) never returns.
        monkeypatch.setattr(spawner, "_make_create_pvc_request", block)
    elif step == "after-pvc":
        monkeypatch.setattr(spawner, "_make_create_pod_request", block)
    else:
        harness.failures[spawner.pod_name] = "never_ready"
    with pytest.raises(asyncio.TimeoutError):
        await start_with_timeout(spawner, 2)
    harness.failures.pop(spawner.pod_name, None)
    await assert_nothing_left(fence, admin, ns, user, drive)


# --- the API server restarting -----------------------------------------------------------------------


async def test_api_server_restart_mid_spawn_resumes(kube_bed: KubeBed, fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = chart_ns[0]
    user = "bob"
    drive = await drive_of(fence, ns, user, admin)
    spawner = make_spawner(fence, ns, user, ["analysts"])
    spawner.user_options = {"flavor": "python-small"}
    reached, go = asyncio.Event(), asyncio.Event()
    create_pod = spawner._make_create_pod_request

    async def paused(*args: Any) -> Any:
        reached.set()
        await go.wait()
        return await create_pod(*args)

    monkeypatch.setattr(spawner, "_make_create_pod_request", paused)
    task = asyncio.ensure_future(spawner.start())
    await asyncio.wait_for(reached.wait(), 30)
    await asyncio.to_thread(kube_bed.stop_apiserver)
    go.set()
    await asyncio.sleep(2)  # the pod request fails and is retried while the server is down
    await asyncio.to_thread(kube_bed.start_apiserver)
    try:
        url = await asyncio.wait_for(task, 60)
    except ApiException as e:
        # A restarted API server answers before its RBAC cache is filled: a pod request in
        # that second is refused (403). Then the spawn fails cleanly instead of resuming.
        assert e.status == 403
    else:
        assert url and spawner._api_key_id in fence.active_keys(user)
    await stop(spawner)
    await assert_nothing_left(fence, admin, ns, user, drive)


async def test_api_server_restart_while_writing_the_secret(kube_bed: KubeBed, fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api, monkeypatch: pytest.MonkeyPatch) -> None:
    ns = chart_ns[0]
    user = "carol"
    drive = await drive_of(fence, ns, user, admin)
    spawner = make_spawner(fence, ns, user, ["analysts"])
    spawner.user_options = {"flavor": "python-small"}
    write = spawner._write_credentials_secret

    def restart_after(seconds: float) -> None:
        time.sleep(seconds)
        kube_bed.start_apiserver()

    async def write_across_a_restart(key: Any) -> None:
        await asyncio.to_thread(kube_bed.stop_apiserver)
        restart = asyncio.ensure_future(asyncio.to_thread(restart_after, 2))
        try:
            await write(key)  # retried while the API server is away
        finally:
            await restart

    monkeypatch.setattr(spawner, "_write_credentials_secret", write_across_a_restart)
    try:
        await start_with_timeout(spawner, 60)
    except ApiException as e:
        assert e.status == 403  # the RBAC cache second, as above: a clean failure
    else:
        assert spawner._api_key_id in fence.active_keys(user)
        await stop(spawner)
    await assert_nothing_left(fence, admin, ns, user, drive)


# --- the hub killed mid-spawn and mid-stop ---------------------------------------------------------


def run_child(cfg: dict[str, Any], tmp: Path, freeze_at: str | None) -> dict[str, Any]:
    """Run the miniature hub; SIGKILL it when it reports the frozen step. Returns the state it stored, if any."""
    cfg = {**cfg, "freeze_at": freeze_at, "state_out": str(tmp / "state.json")}
    path = tmp / "child.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.spawn_child", str(path)], cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    out = []
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        out.append(line)
        if line.startswith("FROZEN") or line.startswith("STARTED") or line.startswith("STOPPED"):
            break
        assert time.monotonic() < deadline
    if freeze_at:
        assert out and out[-1].strip() == f"FROZEN {freeze_at}", "".join(out[-30:])
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    state_file = tmp / "state.json"
    return json.loads(state_file.read_text()) if state_file.exists() else {}


@pytest.mark.parametrize("step", ["secret", "pod"])
async def test_hub_killed_mid_spawn_is_cleaned_up_by_the_next_start(fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api, tmp_path: Path, step: str) -> None:
    ns, kubeconfig = chart_ns
    user = "dave"
    drive = await drive_of(fence, ns, user, admin)
    cfg = {
        "kubeconfig": str(kubeconfig), "namespace": ns, "fence_url": fence.url, "client_id": fence.client_id,
        "client_secret": fence.client_secret, "user": user, "groups": ["analysts"], "access_token": fence.mint_access_token(user),
        "cmd": SERVER_CMD, "action": "start",
    }
    keys_before = set(fence.api_keys)
    await asyncio.to_thread(run_child, cfg, tmp_path, step)
    orphan = set(fence.api_keys) - keys_before
    assert len(orphan) == 1 and fence.active_keys(user) == list(orphan)
    left = await inventory(admin, ns, user)
    assert left["secrets"], "the killed hub left its Secret"
    # JupyterHub stores a spawner's state only once start returns: the new hub knows nothing.
    again = make_spawner(fence, ns, user, ["analysts"])
    again.user_options = {"flavor": "python-small"}
    await again.start()
    assert fence.active_keys(user) == [again._api_key_id], "the left-over key is revoked by the next start"
    await stop(again)
    await assert_nothing_left(fence, admin, ns, user, drive)


async def test_hub_killed_mid_stop_is_finished_by_the_restarted_hub(fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api, tmp_path: Path) -> None:
    ns, kubeconfig = chart_ns
    user = "erin"
    drive = await drive_of(fence, ns, user, admin)
    spawner = make_spawner(fence, ns, user, ["analysts"])
    spawner.user_options = {"flavor": "python-small"}
    await spawner.start()
    state = spawner.get_state()  # what JupyterHub stored after the start
    cfg = {
        "kubeconfig": str(kubeconfig), "namespace": ns, "fence_url": fence.url, "client_id": fence.client_id,
        "client_secret": fence.client_secret, "user": user, "groups": ["analysts"], "access_token": fence.mint_access_token(user),
        "cmd": SERVER_CMD, "action": "stop", "state": state,
    }
    await asyncio.to_thread(run_child, cfg, tmp_path, "stopped")
    assert fence.active_keys(user) == [state["gen3_api_key_id"]], "killed before the post-stop hook"
    # The restarted hub loads the state, polls, finds the server gone and stops it properly.
    again = make_spawner(fence, ns, user, ["analysts"])
    again.load_state(state)
    assert await again.poll() is not None
    await stop(again)
    await assert_nothing_left(fence, admin, ns, user, drive)
