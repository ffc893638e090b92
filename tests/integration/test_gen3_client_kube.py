"""The real gen3-client in a pod Gen3KubeSpawner made on the Kubernetes test bed: the pod's entrypoint runs the notebook image's start-up hooks the way docker-stacks' start.sh does, then gen3-client works with no `configure`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gen3workspace.spawner.flavors import default_catalogue_path
from tests.integration.test_kube_spawn import admin, chart_ns, hub_sa_client, make_spawner, stop  # noqa: F401 - fixtures
from tests.support import notebook_image
from tests.support.fence import FenceStandIn
from tests.support.gen3client import RUN_HOOKS, check_refused, check_session, data_fence, gen3_client, hook_profile, read_profile
from tests.support.kube_fixtures import *  # noqa: F403
from tests.support.kubelet import KubeletHarness, RunningPod

pytestmark = pytest.mark.k8s

@pytest.fixture(scope="module")
def fence() -> Iterator[FenceStandIn]:
    yield from data_fence("kim")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image-root")
    notebook_image.assemble_files(root)
    return root


@pytest.fixture
async def harness(chart_ns: tuple[str, Path], kubelet_factory: Any, image_root: Path) -> KubeletHarness:
    image = notebook_image.plan()
    hooks = notebook_image.image_path(image_root, "/usr/local/bin/before-notebook.d")
    images = {f["image"] for f in yaml.safe_load(default_catalogue_path().read_text())["flavors"]}

    def image_env(pod: RunningPod, env: dict[str, str]) -> None:
        # What the image adds under the pod's env: its ENV, its /usr/local/bin, and its own
        # /tmp (the container's writable layer, gone with the pod like the pod's volumes).
        for name, value in image.env.items():
            env.setdefault(name, value)
        env["PATH"] = f"{notebook_image.image_path(image_root, '/usr/local/bin')}:{env['PATH']}"
        tmp = pod.dir / "volumes" / "container-tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmp)

    # docker-stacks' entrypoint is start.sh, which runs the hooks and then execs the command.
    entrypoint = ["bash", str(RUN_HOOKS), str(hooks)]
    return await kubelet_factory(chart_ns[0], image_entrypoints={i: entrypoint for i in images}, env_hook=image_env)


async def start_pod(fence: FenceStandIn, ns: str, harness: KubeletHarness, admin: Any) -> tuple[Any, RunningPod, str]:
    spawner = make_spawner(fence, ns, "kim", ["analysts"])
    spawner.user_options = {"flavor": "python-small"}
    await spawner.start()
    running = await harness.wait_for_ready(spawner.pod_name)
    pod = await admin.read_namespaced_pod(spawner.pod_name, ns)  # the hub's Role has no `get` on pods
    assert not pod.spec.containers[0].command, "the image's entrypoint (start.sh) runs; KubeSpawner passes only args"
    assert "gen3-client-profile: gen3-client profile" in running.logs(), running.logs()
    return spawner, running, hook_profile(running.logs())


async def test_gen3_client_in_a_kubernetes_pod(
    fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: Any, tmp_path: Path
) -> None:
    ns = chart_ns[0]
    guid = fence.add_object("variants.vcf", b"##fileformat=VCFv4.2\n", authz=["/programs/demo"])
    spawner, running, profile = await start_pod(fence, ns, harness, admin)
    drive = harness.pvc_dir(spawner.pvc_name)
    assert Path(running.env["HOME"]) == drive
    assert running.env["GEN3_CLIENT_VERSION_CHECK"] == "false"

    old = await asyncio.to_thread(check_session, fence, running.env, drive, profile, guid, b"##fileformat=VCFv4.2\n")
    runtime = Path(running.env["TMPDIR"])
    assert any(runtime.rglob("gen3_client_config.ini"))

    # Restart: a new pod with a new key; the hook and the client agree on it.
    await stop(spawner)
    await harness.wait_for_gone(spawner.pod_name)
    assert not runtime.exists(), "the file with the key went with the pod"
    spawner, running, again = await start_pod(fence, ns, harness, admin)
    assert again == profile
    key = json.loads(Path(running.env["GEN3_API_KEY"]).read_text())
    assert key["key_id"] != old["key_id"]
    assert read_profile(drive, profile)["key_id"] == key["key_id"]
    auth = await asyncio.to_thread(gen3_client, ["auth", f"--profile={profile}"], running.env, drive)
    assert auth.returncode == 0, auth.stderr
    await stop(spawner)

    # After stop the old key no longer works.
    await asyncio.to_thread(check_refused, fence, profile, old, tmp_path / "old-home")
    assert fence.active_keys("kim") == []
