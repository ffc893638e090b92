"""The data workflows in a pod Gen3KubeSpawner made on the Kubernetes test bed, against the real data-plane bed: the pod's entrypoint runs the notebook image's start-up hooks the way docker-stacks' start.sh does, then gen3-client (download-single, download-multiple) and the image's Gen3 SDK work with no `configure`, with the pod's own env."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gen3workspace.hub.auth import Gen3OAuthenticator
from gen3workspace.spawner.flavors import default_catalogue_path
from gen3workspace.spawner.kube import Gen3KubeSpawner
from tests.images.test_notebook_userland import find_python
from tests.integration.test_kube_spawn import SERVER_CMD, admin, chart_ns, hub_sa_client, stop  # noqa: F401 - fixtures
from tests.support import notebook_image
from tests.support.fakes import FakeUser, fake_hub
from tests.support.gen3client import RUN_HOOKS, check_refused, check_session, check_workflows, gen3_client, hook_profile, read_profile
from tests.support.kube_fixtures import *  # noqa: F403
from tests.support.kubelet import KubeletHarness, RunningPod
from tests.support.realdata import DataBed
from tests.support.realfence import RegisteredClient

pytestmark = pytest.mark.k8s

USER = "kim"  # may read and download the bed's project (tests/support/realfence.py)


@pytest.fixture(scope="module")
def client(real_data: DataBed) -> RegisteredClient:
    # The spawner only needs the client for its authenticator's settings; no browser logs in here.
    return real_data.fence.register_hub("gen3-client-kube", "http://127.0.0.1:9/")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(root with the notebook image's files, the image's Python with its lock (the Gen3 SDK) installed)."""
    root = tmp_path_factory.mktemp("image-root")
    notebook_image.assemble_files(root)
    python = notebook_image.install_requirements(tmp_path_factory.mktemp("image-venv") / "venv", find_python("3.11"))
    return root, python


@pytest.fixture
async def harness(chart_ns: tuple[str, Path], kubelet_factory: Any, image_root: tuple[Path, Path]) -> KubeletHarness:
    root, python = image_root
    image = notebook_image.plan()
    hooks = notebook_image.image_path(root, "/usr/local/bin/before-notebook.d")
    images = {f["image"] for f in yaml.safe_load(default_catalogue_path().read_text())["flavors"]}

    def image_env(pod: RunningPod, env: dict[str, str]) -> None:
        # What the image adds under the pod's env: its ENV, its /usr/local/bin and its Python
        # first on PATH, and its own /tmp (the container's writable layer, gone with the pod).
        for name, value in image.env.items():
            env.setdefault(name, value)
        env["PATH"] = f"{notebook_image.image_path(root, '/usr/local/bin')}:{python.parent}:{env['PATH']}"
        tmp = pod.dir / "volumes" / "container-tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmp)

    # docker-stacks' entrypoint is start.sh, which runs the hooks and then execs the command.
    entrypoint = ["bash", str(RUN_HOOKS), str(hooks)]
    return await kubelet_factory(chart_ns[0], image_entrypoints={i: entrypoint for i in images}, env_hook=image_env)


def make_spawner(bed: DataBed, client: RegisteredClient, ns: str) -> Gen3KubeSpawner:
    """The hub's spawner for USER, logged in to the real Fence (a token with the `credentials` scope, as the hub's login gets)."""
    auth = Gen3OAuthenticator(commons_url=bed.commons_url, client_id=client.client_id, client_secret=client.client_secret)
    token = bed.access_token(USER, ("openid", "user", "data", "credentials"))
    fake = FakeUser(USER, ["analysts"], auth_state={"access_token": token, "oauth_user": {"authz": {}}})
    spawner = Gen3KubeSpawner(user=fake, hub=fake_hub(), authenticator=auth, namespace=ns, cmd=SERVER_CMD, start_timeout=60)
    spawner.fatal_error_poll_seconds = 0.2
    return spawner


async def start_pod(bed: DataBed, client: RegisteredClient, ns: str, harness: KubeletHarness, admin: Any) -> tuple[Any, RunningPod, str]:
    spawner = make_spawner(bed, client, ns)
    spawner.user_options = {"flavor": "python-small"}
    await spawner.start()
    running = await harness.wait_for_ready(spawner.pod_name)
    pod = await admin.read_namespaced_pod(spawner.pod_name, ns)  # the hub's Role has no `get` on pods
    assert not pod.spec.containers[0].command, "the image's entrypoint (start.sh) runs; KubeSpawner passes only args"
    assert "gen3-client-profile: gen3-client profile" in running.logs(), running.logs()
    return spawner, running, hook_profile(running.logs())


async def test_data_workflows_in_a_kubernetes_pod(
    real_data: DataBed, client: RegisteredClient, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: Any,
    image_root: tuple[Path, Path], tmp_path: Path,
) -> None:
    ns = chart_ns[0]
    spawner, running, profile = await start_pod(real_data, client, ns, harness, admin)
    drive = harness.pvc_dir(spawner.pvc_name)
    assert Path(running.env["HOME"]) == drive
    assert running.env["GEN3_CLIENT_VERSION_CHECK"] == "false"
    assert running.env["GEN3_ENDPOINT"] == real_data.commons_url

    record = real_data.add_object("kube-first.vcf", b"##fileformat=VCFv4.2\n")
    old = await asyncio.to_thread(check_session, real_data, running.env, drive, profile, record)
    runtime = Path(running.env["TMPDIR"])
    assert any(runtime.rglob("gen3_client_config.ini"))
    # The notebook kernel is the image's Python, with the SDK from the image's lock.
    await asyncio.to_thread(check_workflows, real_data, running.env, drive, profile, image_root[1], "kube")

    # Restart: a new pod with a new key; the hook and the client agree on it.
    await stop(spawner)
    await harness.wait_for_gone(spawner.pod_name)
    assert not runtime.exists(), "the file with the key went with the pod"
    spawner, running, again = await start_pod(real_data, client, ns, harness, admin)
    assert again == profile
    key = json.loads(Path(running.env["GEN3_API_KEY"]).read_text())
    assert key["key_id"] != old["key_id"]
    assert read_profile(drive, profile)["key_id"] == key["key_id"]
    auth = await asyncio.to_thread(gen3_client, ["auth", f"--profile={profile}"], running.env, drive)
    assert auth.returncode == 0, auth.stderr
    await stop(spawner)

    # After stop the old key no longer works.
    await asyncio.to_thread(check_refused, real_data, profile, old, tmp_path / "old-home")
    assert await asyncio.to_thread(real_data.active_keys, USER) == []
