"""The soak: 100 spawn/stop cycles for 10 users with faults injected at random steps, against the real API server and the Fence stand-in.

Spawner level (a hub-level soak through JupyterHub's REST API would spend most of its time
starting single-user servers): each cycle is what the hub does, `start()` under the start
timeout, then `stop()` and the post-stop hook, with one spawner per user kept across cycles
as JupyterHub keeps it. Faults are drawn from a seeded generator, bounded in count per kind;
each user's last cycle runs clean, since a key whose revocation failed is retried at the
user's next start or stop. Afterwards: every drive is the one created first (same PVC uid),
no pod or credentials Secret is left, every key Fence minted is revoked (late ones within
LATE_REVOCATION_BOUND seconds), and every user can still spawn. The figures are printed
as one JSON line (SOAK ...) and quoted in docs/security.md.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s

from gen3workspace.spawner.kube import Gen3KubeSpawner
from tests.integration.test_kube_faults import MINT, REVOKE, SERVER_CMD, block, run_child, start_with_timeout
from tests.integration.test_kube_spawn import admin, chart_ns, harness, hub_sa_client, make_spawner, stop  # noqa: F401
from tests.support.fence import Fault, FenceStandIn
from tests.support.kube_fixtures import *  # noqa: F403
from tests.support.kubebed import KubeBed
from tests.support.kubelet import KubeletHarness

pytestmark = pytest.mark.k8s

USERS = [f"soak{i}" for i in range(10)]
CYCLES_PER_USER = 10
SEED = int(os.environ.get("GEN3WS_SOAK_SEED", "13"))
FAULT_RATE = 0.4
# Most of each kind in one soak: the expensive ones (an API server restart, a killed hub) are rarer.
MAX_FAULTS = {
    "fence-down-at-mint": 6,
    "fence-html-at-mint": 6,
    "fence-slow-past-timeout": 6,
    "fence-down-at-stop": 6,
    "fence-slow-at-stop": 6,
    "timeout-after-key": 5,
    "timeout-after-secret": 5,
    "timeout-after-pvc": 5,
    "timeout-after-pod": 5,
    "api-server-restart": 1,
    "hub-killed-mid-spawn": 1,
}
START_TIMEOUT = 1.0
LATE_REVOCATION_BOUND = 20.0


@pytest.fixture(scope="module")
def fence() -> Iterator[FenceStandIn]:
    f = FenceStandIn()
    for name in USERS:
        f.add_user(name, groups=["analysts"])
    f.start()
    yield f
    f.stop()


class Soak:
    def __init__(self, fence: FenceStandIn, ns: str, kubeconfig: Path, bed: KubeBed, harness: KubeletHarness, tmp: Path):
        self.fence, self.ns, self.kubeconfig, self.bed, self.harness, self.tmp = fence, ns, kubeconfig, bed, harness, tmp
        self.rng = random.Random(SEED)
        self.spawners: dict[str, Gen3KubeSpawner] = {}
        self.injected: collections.Counter[str] = collections.Counter()
        self.outcomes: collections.Counter[str] = collections.Counter()

    def spawner(self, user: str) -> Gen3KubeSpawner:
        if user not in self.spawners:
            s = make_spawner(self.fence, self.ns, user, ["analysts"])
            s.user_options = {"flavor": self.rng.choice(["python-small", "r-large"])}
            self.spawners[user] = s
        return self.spawners[user]

    def pick(self, last: bool) -> str | None:
        if last or self.rng.random() >= FAULT_RATE:
            return None
        open_kinds = [k for k, n in MAX_FAULTS.items() if self.injected[k] < n]
        return self.rng.choice(open_kinds) if open_kinds else None

    async def cycle(self, user: str, fault: str | None) -> None:
        if fault == "hub-killed-mid-spawn":
            await self.killed_hub(user)
            return
        s = self.spawner(user)
        patched: list[str] = []

        def patch(name: str, value: Any) -> None:
            setattr(s, name, value)
            patched.append(name)

        timeout = 60.0
        if fault == "fence-down-at-mint":
            self.fence.stop()
        elif fault == "fence-html-at-mint":
            self.fence.faults[MINT] = Fault(body="<html>maintenance</html>", content_type="text/html")
        elif fault == "fence-slow-past-timeout":
            self.fence.faults[MINT] = Fault(delay=START_TIMEOUT + 1, times=1)
            timeout = START_TIMEOUT
        elif fault == "timeout-after-key":
            patch("_write_credentials_secret", block)
            timeout = START_TIMEOUT
        elif fault == "timeout-after-secret":
            patch("_make_create_pvc_request", block)
            timeout = START_TIMEOUT
        elif fault == "timeout-after-pvc":
            patch("_make_create_pod_request", block)
            timeout = START_TIMEOUT
        elif fault == "timeout-after-pod":
            self.harness.failures[s.pod_name] = "never_ready"
            timeout = START_TIMEOUT
        elif fault == "api-server-restart":
            create_pod = s._make_create_pod_request

            async def across_restart(*args: Any) -> Any:
                await asyncio.to_thread(self.bed.stop_apiserver)
                restart = asyncio.ensure_future(asyncio.to_thread(self._restart_after, 1.5))
                try:
                    return await create_pod(*args)
                finally:
                    await restart

            patch("_make_create_pod_request", across_restart)
        started = False
        try:
            await start_with_timeout(s, timeout)
            started = True
        except BaseException as e:  # every failure here is one of the injected faults
            if fault is None:
                raise
            self.outcomes[f"spawn failed cleanly: {type(e).__name__}"] += 1
        finally:
            for name in patched:
                delattr(s, name)
            self.harness.failures.pop(s.pod_name, None)
            self.fence.faults.clear()
            if self.fence._thread is None:
                self.fence.start()
        if not started:
            return
        self.outcomes["spawned"] += 1
        if fault == "fence-down-at-stop":
            self.fence.stop()
        elif fault == "fence-slow-at-stop":
            self.fence.faults[REVOKE] = Fault(delay=0.5)
        try:
            await stop(s)
        finally:
            self.fence.faults.clear()
            if self.fence._thread is None:
                self.fence.start()

    def _restart_after(self, seconds: float) -> None:
        time.sleep(seconds)
        self.bed.start_apiserver()

    async def killed_hub(self, user: str) -> None:
        """A hub SIGKILLed after writing the Secret; the next hub starts from empty state, as JupyterHub's would."""
        cfg = {
            "kubeconfig": str(self.kubeconfig), "namespace": self.ns, "fence_url": self.fence.url,
            "client_id": self.fence.client_id, "client_secret": self.fence.client_secret, "user": user,
            "groups": ["analysts"], "access_token": self.fence.mint_access_token(user), "cmd": SERVER_CMD, "action": "start",
        }
        folder = self.tmp / f"killed-{user}-{self.injected['hub-killed-mid-spawn']}"
        folder.mkdir()
        await asyncio.to_thread(run_child, cfg, folder, "secret")
        self.spawners.pop(user, None)
        self.outcomes["hub killed mid-spawn"] += 1


async def test_soak(kube_bed: KubeBed, fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api, tmp_path: Path) -> None:
    ns, kubeconfig = chart_ns
    soak = Soak(fence, ns, kubeconfig, kube_bed, harness, tmp_path)
    began = time.monotonic()
    drives: dict[str, str] = {}
    cycles = 0
    for round_ in range(CYCLES_PER_USER):
        for user in USERS:
            fault = soak.pick(last=round_ == CYCLES_PER_USER - 1)
            if fault:
                soak.injected[fault] += 1
            await soak.cycle(user, fault)
            cycles += 1
            if user not in drives:
                pvcs = {p.metadata.name: p.metadata.uid for p in (await admin.list_namespaced_persistent_volume_claim(ns)).items}
                if f"claim-{user}" in pvcs:
                    drives[user] = pvcs[f"claim-{user}"]

    # Late keys (minted after their spawn was cancelled) are revoked as they arrive.
    deadline = time.monotonic() + LATE_REVOCATION_BOUND
    while [k for u in USERS for k in fence.active_keys(u)] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    pods = [p.metadata.name for p in (await admin.list_namespaced_pod(ns)).items if not p.metadata.deletion_timestamp]
    secrets = [s.metadata.name for s in (await admin.list_namespaced_secret(ns)).items if s.metadata.name.startswith("gen3-credentials-")]
    pvcs = {p.metadata.name: p.metadata.uid for p in (await admin.list_namespaced_persistent_volume_claim(ns)).items}
    minted = [k for k, v in fence.api_keys.items() if v["username"] in USERS]
    active = [k for u in USERS for k in fence.active_keys(u)]
    recreated = [u for u, uid in drives.items() if pvcs.get(f"claim-{u}") != uid]
    figures = {
        "seed": SEED,
        "cycles": cycles,
        "users": len(USERS),
        "faults_injected": dict(sorted(soak.injected.items())),
        "faults_total": sum(soak.injected.values()),
        "outcomes": dict(sorted(soak.outcomes.items())),
        "keys_minted": len(minted),
        "keys_left_active": len(active),
        "drives": len(drives),
        "drives_deleted_or_recreated": len(recreated),
        "orphan_pods": len(pods),
        "orphan_secrets": len(secrets),
        "seconds": round(time.monotonic() - began, 1),
    }
    print("SOAK " + json.dumps(figures))
    assert cycles == 100 and figures["faults_total"] > 0
    assert len(drives) == len(USERS) and not recreated, f"drives lost or re-created: {recreated}"
    assert not pods, f"orphan pods: {pods}"
    assert not secrets, f"orphan Secrets: {secrets}"
    assert not active, f"{len(active)} of {len(minted)} keys still active"

    # Still serving: every user spawns once more, cleanly.
    for user in USERS:
        s = make_spawner(fence, ns, user, ["analysts"])
        s.user_options = {"flavor": "python-small"}
        await s.start()
        await stop(s)
    assert not [k for u in USERS for k in fence.active_keys(u)]
