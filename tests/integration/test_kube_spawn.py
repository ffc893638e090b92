"""Gen3KubeSpawner against the real kube-apiserver, with exactly the Helm chart's RBAC and the kubelet harness."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kubernetes_asyncio.config as k8s_config
import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.rest import ApiException
from tornado import web

from gen3workspace.hub.auth import Gen3OAuthenticator
from gen3workspace.spawner.kube import Gen3KubeSpawner
from tests.support.chart_install import hub_kubeconfig, install_chart, users_namespace
from tests.support.fakes import FakeUser, fake_hub
from tests.support.fence import WORKSPACE_AUTHZ, FenceStandIn
from tests.support.kube_fixtures import *  # noqa: F403
from tests.support.kubebed import KubeBed
from tests.support.kubelet import KubeletHarness

pytestmark = pytest.mark.k8s

# Test plumbing: without a container runtime the harness runs the container's command here.
SERVER_CMD = [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8888"]


@pytest.fixture(scope="module")
def fence() -> Iterator[FenceStandIn]:
    f = FenceStandIn()
    f.add_user("alice", groups=["analysts"])
    f.add_user("gabi", authz={**WORKSPACE_AUTHZ, "/workspace-flavors/gpu": WORKSPACE_AUTHZ["/workspace"]})
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def chart_ns(kube_bed: KubeBed, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The users' namespace of a chart installed into a fresh namespace (Pod Security "restricted"
    there), and a kubeconfig holding the chart's hub ServiceAccount's token."""
    ns = f"spawn-{uuid.uuid4().hex[:6]}"
    kube_bed.create_namespace_sync(ns)
    install_chart(kube_bed, ns)
    return users_namespace(ns), hub_kubeconfig(kube_bed, ns, tmp_path_factory.mktemp("hubsa") / "kubeconfig")


@pytest.fixture
async def harness(kube_bed: KubeBed, chart_ns: tuple[str, Path], kubelet_factory: Any) -> KubeletHarness:
    return await kubelet_factory(chart_ns[0])


@pytest.fixture
async def hub_sa_client(chart_ns: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Point KubeSpawner's clients at the hub ServiceAccount: it may do only what the chart grants."""
    import kubernetes_asyncio.config.kube_config as kc

    # KubeSpawner loads the default kubeconfig once per process; set both that default and
    # the live client configuration, whichever test in the session came first.
    monkeypatch.setattr(kc, "KUBE_CONFIG_DEFAULT_LOCATION", str(chart_ns[1]))
    await k8s_config.load_kube_config(config_file=str(chart_ns[1]))
    yield
    await Gen3KubeSpawner._stop_all_reflectors()


@pytest.fixture
async def admin(kube_bed: KubeBed) -> AsyncIterator[k8s.CoreV1Api]:
    async with kube_bed.admin_client() as api:
        yield k8s.CoreV1Api(api)


def make_spawner(fence: FenceStandIn, namespace: str, user: str, groups: list[str]) -> Gen3KubeSpawner:
    auth = Gen3OAuthenticator(commons_url=fence.url, client_id=fence.client_id, client_secret=fence.client_secret)
    fake = FakeUser(user, groups, auth_state={"access_token": fence.mint_access_token(user), "oauth_user": {"authz": fence.users[user].authz}})
    spawner = Gen3KubeSpawner(user=fake, hub=fake_hub(), authenticator=auth, namespace=namespace, cmd=SERVER_CMD, start_timeout=60)
    spawner.fatal_error_poll_seconds = 0.2
    return spawner


async def stop(spawner: Gen3KubeSpawner) -> None:
    """What JupyterHub does on stop: stop(), then the post-stop hook."""
    await spawner.stop()
    await spawner.run_post_stop_hook()


async def names(admin: k8s.CoreV1Api, ns: str) -> dict[str, set[str]]:
    pods = await admin.list_namespaced_pod(ns)
    secrets = await admin.list_namespaced_secret(ns)
    pvcs = await admin.list_namespaced_persistent_volume_claim(ns)
    return {
        "pods": {p.metadata.name for p in pods.items},
        "secrets": {s.metadata.name for s in secrets.items},
        "pvcs": {p.metadata.name for p in pvcs.items},
    }


def gen3auth_token(credentials: Path, home: Path) -> subprocess.CompletedProcess[str]:
    code = "from gen3.auth import Gen3Auth; print('TOKEN-OK' if Gen3Auth().get_access_token() else 'none')"
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GEN3_API_KEY": str(credentials)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


async def test_spawn_stop_and_respawn_with_the_charts_rbac(
    fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api, tmp_path: Path
) -> None:
    ns = chart_ns[0]
    before = await names(admin, ns)
    spawner = make_spawner(fence, ns, "alice", ["analysts"])
    spawner.user_options = {"flavor": "python-small"}
    url = await spawner.start()
    assert url.startswith("http://127.0.0.")
    now = await names(admin, ns)
    pvc, secret = spawner.pvc_name, spawner.credentials_secret_name
    assert now["pods"] - before["pods"] == {spawner.pod_name}
    assert now["secrets"] - before["secrets"] == {secret}
    assert now["pvcs"] - before["pvcs"] == {pvc}

    pod = await admin.read_namespaced_pod(spawner.pod_name, ns)
    # Admitted by the users' namespace's Pod Security "restricted" profile.
    assert (await admin.read_namespace(ns)).metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert pod.metadata.annotations["gen3username"] == "alice"
    assert pod.metadata.labels["gen3.org/flavor"] == "python-small"
    assert pod.spec.automount_service_account_token is False

    # The key in the Secret, as the pod sees it, gets a token from Fence through the real SDK.
    running = await harness.wait_for_ready(spawner.pod_name)
    creds = Path(running.env["GEN3_API_KEY"])
    assert creds.exists()
    out = gen3auth_token(creds, tmp_path)
    assert "TOKEN-OK" in out.stdout, out.stderr
    drive = harness.pvc_dir(pvc)
    (drive / "notes.txt").write_text("survives")

    await stop(spawner)
    after = await names(admin, ns)
    assert spawner.pod_name not in after["pods"]
    assert secret not in after["secrets"]
    assert pvc in after["pvcs"], "the drive outlives the server"
    assert fence.active_keys("alice") == []

    # Another flavor: the same PVC, the same files.
    again = make_spawner(fence, ns, "alice", ["analysts"])
    again.user_options = {"flavor": "r-large"}
    await again.start()
    assert again.pvc_name == pvc
    assert (await names(admin, ns))["pvcs"] == after["pvcs"]
    pod = await admin.read_namespaced_pod(again.pod_name, ns)
    claim = next(v for v in pod.spec.volumes if v.name == "gen3-drive")
    assert claim.persistent_volume_claim.claim_name == pvc
    running = await harness.wait_for_ready(again.pod_name)
    assert (Path(running.map_path("/home/jovyan")) / "notes.txt").read_text() == "survives"
    await stop(again)
    await again.delete_forever()
    assert pvc in (await names(admin, ns))["pvcs"], "removing the user keeps the drive"


@pytest.mark.parametrize("flavor, status", [("python-gpu", 403), ("no-such-flavor", 400)])
async def test_forbidden_or_unknown_flavor_creates_no_object(
    fence: FenceStandIn, chart_ns: tuple[str, Path], hub_sa_client: None, admin: k8s.CoreV1Api, flavor: str, status: int
) -> None:
    ns = chart_ns[0]
    before = await names(admin, ns)
    keys = len(fence.api_keys)
    spawner = make_spawner(fence, ns, "alice", ["analysts"])
    spawner.user_options = {"flavor": flavor}
    with pytest.raises(web.HTTPError) as e:
        await spawner.start()
    assert e.value.status_code == status
    assert await names(admin, ns) == before
    assert len(fence.api_keys) == keys


async def test_gpu_member_gets_a_pod_requesting_the_gpu(
    fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api
) -> None:
    spawner = make_spawner(fence, chart_ns[0], "gabi", [])
    spawner.user_options = {"flavor": "python-gpu"}
    await spawner.start()
    pod = await admin.read_namespaced_pod(spawner.pod_name, chart_ns[0])
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    await stop(spawner)


async def test_image_pull_error_fails_the_spawn_within_seconds(
    fence: FenceStandIn, chart_ns: tuple[str, Path], harness: KubeletHarness, hub_sa_client: None, admin: k8s.CoreV1Api
) -> None:
    ns = chart_ns[0]
    spawner = make_spawner(fence, ns, "alice", ["analysts"])
    spawner.start_timeout = 300
    spawner.user_options = {"flavor": "python-small"}
    harness.failures[spawner.pod_name] = "image_pull_error"
    began = time.monotonic()
    with pytest.raises(web.HTTPError) as e:
        await spawner.start()
    took = time.monotonic() - began
    message = e.value.log_message
    assert "could not be pulled" in message and "ErrImagePull" in message and "notebook-python" in message
    assert took < 60, f"took {took:.0f}s: must not wait for the start timeout"
    # A failed spawn leaves no key behind; JupyterHub then stops the server.
    assert fence.active_keys("alice") == []
    await stop(spawner)
    assert spawner.credentials_secret_name not in (await names(admin, ns))["secrets"]


async def test_hub_token_cannot_read_secrets_elsewhere(kube_bed: KubeBed, chart_ns: tuple[str, Path]) -> None:
    other = f"other-{uuid.uuid4().hex[:6]}"
    await kube_bed.create_namespace(other)
    async with kube_bed.admin_client() as api:
        await k8s.CoreV1Api(api).create_namespaced_secret(other, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="s"), string_data={"a": "b"}))
    cfg = k8s.Configuration()
    await k8s_config.load_kube_config(config_file=str(chart_ns[1]), client_configuration=cfg)
    async with k8s.ApiClient(cfg) as api:
        v1 = k8s.CoreV1Api(api)
        # The users' namespace: a Secret by name (404: there is none), never the list of them.
        with pytest.raises(ApiException) as e:
            await v1.read_namespaced_secret("gen3-credentials-nobody", chart_ns[0])
        assert e.value.status == 404
        with pytest.raises(ApiException) as e:
            await v1.list_namespaced_secret(chart_ns[0])
        assert e.value.status == 403
        with pytest.raises(ApiException) as e:
            await v1.read_namespaced_secret("s", other)
        assert e.value.status == 403
