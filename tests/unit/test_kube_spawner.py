"""Gen3KubeSpawner up to the Kubernetes client boundary: manifests, flavor checks, credentials.

These tests stop where the spawner hands objects to the Kubernetes client; the same paths run
against a real kube-apiserver in tests/integration/test_kube_spawn.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.rest import ApiException
from tornado import web

from gen3workspace.spawner.flavors import default_catalogue_path, load_catalogue
from gen3workspace.spawner.kube import Gen3KubeSpawner
from tests.support.fakes import FakeUser, fake_hub
from tests.support.fence import FenceStandIn

K8S_VERSIONS = ["1.30", "1.35"]
FLAVORS = [f.name for f in load_catalogue(default_catalogue_path()).flavors]

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none, namespace: gen3}}]
current-context: none
"""


class RecordingApi:
    """Stands where kubernetes_asyncio's CoreV1Api would, recording what the spawner sends."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.secrets: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args))
            if name == "create_namespaced_secret":
                self.secrets[args[1].metadata.name] = args[1]
            if name == "delete_namespaced_secret":
                self.secrets.pop(args[0], None)
            if name == "read_namespaced_secret":
                if args[0] not in self.secrets:
                    raise ApiException(status=404)
                return self.secrets[args[0]]
            return None

        return call


@pytest.fixture(autouse=True)
def kubeconfig(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path_factory.getbasetemp() / "kubeconfig-none"
    path.write_text(KUBECONFIG)
    import kubernetes_asyncio.config.kube_config as kc

    # The client reads $KUBECONFIG once at import; point its default at a cluster-less config.
    monkeypatch.setattr(kc, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


def make_spawner(user: FakeUser, authenticator: Any = None, **traits: Any) -> Gen3KubeSpawner:
    spawner = Gen3KubeSpawner(_mock=True, user=user, hub=fake_hub(), authenticator=authenticator, namespace="gen3", **traits)
    spawner.api = RecordingApi()
    return spawner


def serialize(obj: Any) -> dict[str, Any]:
    # sanitize_for_serialization is pure; a bare instance (no HTTP session) is enough.
    return ApiClient.__new__(ApiClient).sanitize_for_serialization(obj)


# Fence authz of a user holding the example GPU flavor's resource (the workspace-gpu policy).
GPU_AUTHZ = {"oauth_user": {"authz": {p: [{"service": "jupyterhub", "method": "access"}] for p in ("/workspace", "/workspace-flavors/gpu")}}}


async def manifests(flavor: str, user: FakeUser | None = None, **traits: Any) -> tuple[Gen3KubeSpawner, dict, dict, dict]:
    spawner = make_spawner(user or FakeUser("alice@uchicago.edu", auth_state=GPU_AUTHZ), **traits)
    spawner.user_options = {"flavor": flavor}
    await spawner.load_user_options()
    spawner._api_key_id = "key-1"
    pod = serialize(await spawner.get_pod_manifest())
    pvc = serialize(spawner.get_pvc_manifest())
    secret = serialize(spawner.get_credentials_secret_manifest({"key_id": "key-1", "api_key": "a.b.c"}))
    return spawner, pod, pvc, secret


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("flavor", FLAVORS)
async def test_manifests_validate_strictly(flavor: str, version: str) -> None:
    _, pod, pvc, secret = await manifests(flavor)
    for obj in (pod, pvc, secret):
        kubernetes_validate.validate(obj, version, strict=True)


async def test_export_settings_reach_the_server_env() -> None:
    _, pod, _, _ = await manifests("python-small")
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert (env["GEN3_EXPORT"], env["GEN3_EXPORT_KEEP"], env["GEN3_EXPORT_DIR"]) == ("on", "5", "data")
    assert "GEN3_MANIFEST_SERVICE_URL" not in env and "GEN3_INDEXD_URL" not in env  # the commons URL's /manifests, /index
    _, pod, _, _ = await manifests(
        "python-small", export_keep=2, export_folder="exports/gen3", manifest_service_url="http://manifestservice-service/",
        indexd_url="http://indexd-service", export_to_workspace=False,
    )
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["GEN3_EXPORT"] == "off" and env["GEN3_EXPORT_KEEP"] == "2" and env["GEN3_EXPORT_DIR"] == "exports/gen3"
    assert env["GEN3_MANIFEST_SERVICE_URL"] == "http://manifestservice-service" and env["GEN3_INDEXD_URL"] == "http://indexd-service"


@pytest.mark.parametrize(
    ("trait", "value", "says"),
    [
        ("export_keep", 0, "keep at least 1 manifest"),
        ("export_folder", "../outside", "must be a folder inside the server's root folder"),
        ("export_folder", "/etc", "must be a folder inside the server's root folder"),
        ("manifest_service_url", "manifestservice-service", "is not an http(s) URL"),
        ("indexd_url", "http://indexd?x=1", "is not an http(s) URL"),
    ],
)
def test_bad_export_settings_are_refused_naming_the_setting(trait: str, value: Any, says: str) -> None:
    from traitlets import TraitError

    with pytest.raises(TraitError, match=re.escape(says)) as e:
        make_spawner(FakeUser("alice"), **{trait: value})
    assert trait in str(e.value)


async def test_pod_is_hardened_and_annotated() -> None:
    _, pod, _, _ = await manifests("python-small")
    spec = pod["spec"]
    c = spec["containers"][0]
    sc = c["securityContext"]
    assert sc["runAsUser"] == 1000 and sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["fsGroup"] == 100
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    ann = pod["metadata"]["annotations"]
    assert ann["hub.jupyter.org/username"] == "alice@uchicago.edu" and ann["gen3username"] == "alice@uchicago.edu"


async def test_flavor_becomes_resources_image_and_env() -> None:
    _, pod, _, _ = await manifests("r-large", egress_proxy="http://egress.gen3.svc.cluster.local:3128", no_proxy=["fence-service"], commons_url="https://data.example.org")
    c = pod["spec"]["containers"][0]
    assert c["image"].endswith("notebook-r:0.1.0")
    assert c["resources"]["limits"] == {"cpu": 4.0, "memory": 16 * 2**30}
    assert c["resources"]["requests"] == {"cpu": 2.0, "memory": 8 * 2**30}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["WORKSPACE_FLAVOR"] == "r-large" and env["GEN3_ENDPOINT"] == "https://data.example.org"
    assert env["NAMESPACE"] == "gen3"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[name] == "http://egress.gen3.svc.cluster.local:3128"
    no_proxy = env["NO_PROXY"].split(",")
    assert env["no_proxy"] == env["NO_PROXY"]
    for host in ("hub", "localhost", ".svc", ".cluster.local", "fence-service"):
        assert host in no_proxy
    assert env["GEN3_API_KEY"] == "/etc/gen3/credentials.json"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["gen3-credentials"]["readOnly"] is True and mounts["gen3-credentials"]["mountPath"] == "/etc/gen3"
    assert mounts["gen3-drive"]["mountPath"] == "/home/jovyan"


async def test_gpu_flavor_requests_the_gpu_and_lands_on_gpu_nodes() -> None:
    _, pod, _, _ = await manifests("python-gpu")
    c = pod["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["nodeSelector"] == {"gen3.org/accelerator": "nvidia"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    # Switching back to a CPU flavor drops the GPU request.
    spawner, _, _, _ = await manifests("python-gpu")
    spawner.user_options = {"flavor": "python-small"}
    await spawner.load_user_options()
    pod = serialize(await spawner.get_pod_manifest())
    assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"]["limits"]


async def test_one_drive_per_user_across_flavors_and_it_is_never_deleted() -> None:
    names = set()
    for flavor in FLAVORS:
        spawner, pod, pvc, _ = await manifests(flavor)
        names.add(pvc["metadata"]["name"])
        claim = next(v for v in pod["spec"]["volumes"] if v["name"] == "gen3-drive")
        assert claim["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert len(names) == 1 and names.pop().startswith("claim-alice")
    assert spawner.delete_pvc is False
    await spawner.delete_forever()
    assert not [c for c in spawner.api.calls if "persistent_volume_claim" in c[0]]


async def test_drive_size_and_storage_class_are_configurable() -> None:
    _, _, pvc, _ = await manifests("python-small", drive_size="50Gi", drive_storage_class="gp3")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert pvc["spec"]["storageClassName"] == "gp3"


@pytest.mark.parametrize("flavor, status", [("python-gpu", 403), ("no-such-flavor", 400), (["python-small"], 400)])
async def test_forbidden_or_unknown_flavor_is_refused_before_any_kubernetes_call(flavor: Any, status: int) -> None:
    spawner = make_spawner(FakeUser("alice", ["analysts"]))
    spawner.user_options = {"flavor": flavor} if not isinstance(flavor, list) else {"flavor": 3}
    with pytest.raises(web.HTTPError) as e:
        await spawner._start()
    assert e.value.status_code == status
    assert spawner.api.calls == []


async def test_form_lists_only_the_flavors_the_user_may_launch() -> None:
    outsider = make_spawner(FakeUser("alice", ["analysts"]))
    form = await outsider.get_options_form()
    assert 'value="python-small"' in form and 'value="r-large"' in form and "python-gpu" not in form
    member = make_spawner(FakeUser("gabi", auth_state=GPU_AUTHZ))
    form = await member.get_options_form()
    assert 'value="python-gpu"' in form and "1 GPU" in form and "notebook-python" in form


def fence_session(fence: FenceStandIn, username: str = "alice") -> tuple[Any, FakeUser]:
    """An authenticator for the stand-in and a user logged in to it, as the hub would hold them."""
    from gen3workspace.hub.auth import Gen3OAuthenticator

    auth = Gen3OAuthenticator(commons_url=fence.url, client_id=fence.client_id, client_secret=fence.client_secret)
    user = FakeUser(username, auth_state={"access_token": fence.mint_access_token(username), "oauth_user": {"authz": {}}})
    return auth, user


@pytest.fixture(scope="module")
def fence() -> Iterator[FenceStandIn]:
    f = FenceStandIn()
    f.add_user("alice")
    f.start()
    yield f
    f.stop()


async def test_minted_key_in_the_secret_works_with_the_real_gen3_sdk_and_stop_revokes_it(fence: FenceStandIn, tmp_path: Path) -> None:
    auth, user = fence_session(fence)
    spawner = make_spawner(user, authenticator=auth)
    spawner.user_options = {"flavor": "python-small"}
    await spawner.load_user_options()
    key = await spawner.mint_api_key()
    assert key and fence.active_keys("alice") == [key["key_id"]]
    # As real Fence: the requested scopes plus fence/openid, never `credentials`.
    assert fence.api_keys[key["key_id"]]["scope"] == ["data", "fence", "openid", "user"]
    claims = json.loads(base64.urlsafe_b64decode(key["api_key"].split(".")[1] + "=="))
    assert abs(claims["exp"] - claims["iat"] - spawner.api_key_lifetime) <= 2, "the key is bounded by api_key_lifetime"
    await spawner._write_credentials_secret(key)
    secret = spawner.api.secrets[spawner.credentials_secret_name]
    creds = tmp_path / "credentials.json"
    creds.write_bytes(base64.b64decode(secret.data["credentials.json"]))

    # The real SDK, in a clean process, with nothing but the file the Secret carries.
    code = "from gen3.auth import Gen3Auth; a = Gen3Auth(); t = a.get_access_token(); print('TOKEN-OK', a.endpoint, len(t) > 20)"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GEN3_API_KEY": str(creds)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "TOKEN-OK" in out.stdout and fence.url in out.stdout and "True" in out.stdout, out.stderr
    assert fence.calls_to("/user/credentials/cdis/access_token")[-1].status == 200

    await spawner._cleanup_credentials()
    assert fence.active_keys("alice") == []
    assert spawner.credentials_secret_name not in spawner.api.secrets
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "TOKEN-OK" not in out.stdout, "a revoked key must not yield tokens"


async def test_disabled_keys_mean_no_secret_and_no_env(fence: FenceStandIn) -> None:
    auth, user = fence_session(fence)
    spawner = make_spawner(user, authenticator=auth, issue_api_key=False)
    spawner.user_options = {"flavor": "python-small"}
    await spawner.load_user_options()
    before = len(fence.api_keys)
    assert await spawner.mint_api_key() is None
    assert len(fence.api_keys) == before
    pod = serialize(await spawner.get_pod_manifest())
    c = pod["spec"]["containers"][0]
    assert "GEN3_API_KEY" not in {e["name"] for e in c["env"]}
    assert "gen3-credentials" not in {v["name"] for v in pod["spec"]["volumes"]}


def test_state_keeps_the_key_id_for_revocation_after_a_hub_restart() -> None:
    import asyncio

    async def run() -> None:
        spawner = make_spawner(FakeUser("alice"))
        spawner._api_key_id = "k-9"
        state = spawner.get_state()
        again = make_spawner(FakeUser("alice"))
        again.load_state(state)
        assert again._api_key_id == "k-9"
        assert json.dumps(state)

    asyncio.run(run())


async def test_a_start_timeout_also_stops_kubespawners_own_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """JupyterHub cancels start() on its timeout; the pod creation underneath must not go on."""
    import asyncio

    from kubespawner import KubeSpawner

    finished = []

    async def slow_start(self: Any) -> str:
        await asyncio.sleep(2)
        finished.append(True)  # stands for "the pod got created"
        return "http://x"

    monkeypatch.setattr(KubeSpawner, "_start", slow_start)
    spawner = make_spawner(FakeUser("alice"))
    spawner.user_options = {"flavor": "python-small"}
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(spawner.start(), 0.3)
    await asyncio.sleep(2.5)
    assert finished == []


async def test_named_servers_get_their_own_credentials_secret() -> None:
    default = make_spawner(FakeUser("alice"))
    named = Gen3KubeSpawner(_mock=True, user=FakeUser("alice"), hub=fake_hub(), orm_spawner=SimpleNamespace(name="gpu", server=None), namespace="gen3")
    assert default.credentials_secret_name != named.credentials_secret_name
    assert default.pvc_name == named.pvc_name, "but they share the one drive"


async def test_an_expired_session_keeps_the_revocation_pending_and_the_key_bounded(fence: FenceStandIn, caplog: pytest.LogCaptureFixture) -> None:
    # Real Fence refuses to let a key delete itself (tokens made from keys lack `credentials`),
    # so without the user's login the key stays pending and expires by api_key_lifetime.
    auth, user = fence_session(fence)
    spawner = make_spawner(user, authenticator=auth)
    spawner.api_key_lifetime = 7200
    key = await spawner.mint_api_key()
    await spawner._write_credentials_secret(key)
    user.auth_state = {"access_token": fence.mint_access_token("alice", lifetime=-60), "oauth_user": {"authz": {}}}
    def exchanges() -> int:
        return len(fence.calls_to("/user/credentials/cdis/access_token")) + len(fence.calls_to("/user/credentials/api/access_token"))

    before = exchanges()
    await spawner._cleanup_credentials()
    assert key["key_id"] in fence.active_keys("alice")
    assert fence.api_keys[key["key_id"]]["exp"] - time.time() <= 7200
    assert spawner.get_state()["gen3_pending_revocations"] == [key["key_id"]]
    assert "expires by itself" in caplog.text and key["api_key"] not in caplog.text
    assert exchanges() == before, "no attempt to make the key revoke itself"
    # The user logs in again: the next stop (or start) revokes it.
    user.auth_state = {"access_token": fence.mint_access_token("alice"), "oauth_user": {"authz": {}}}
    await spawner.revoke_api_key()
    assert key["key_id"] not in fence.active_keys("alice")
    assert "gen3_pending_revocations" not in spawner.get_state()


async def test_an_already_revoked_key_counts_as_revoked(fence: FenceStandIn) -> None:
    auth, user = fence_session(fence)
    spawner = make_spawner(user, authenticator=auth)
    key = await spawner.mint_api_key()
    fence.api_keys[key["key_id"]]["revoked"] = True  # e.g. the user deleted it in the portal
    await spawner.revoke_api_key()
    assert "gen3_pending_revocations" not in spawner.get_state()


async def test_a_login_without_the_credentials_scope_gets_a_clear_message_before_asking_fence(fence: FenceStandIn, caplog: pytest.LogCaptureFixture) -> None:
    auth, user = fence_session(fence)
    user.auth_state = {"access_token": fence.mint_access_token("alice", scopes=["openid", "user", "data"]), "oauth_user": {"authz": {}}}
    spawner = make_spawner(user, authenticator=auth)
    before = len(fence.calls_to("/user/credentials/api"))
    with pytest.raises(web.HTTPError) as e:
        await spawner.mint_api_key()
    assert e.value.status_code == 403
    message = e.value.jupyterhub_message
    assert "'credentials' scope" in message and "CLIENT_ALLOWED_SCOPES" in message and "--allowed-scopes credentials" in message
    assert len(fence.calls_to("/user/credentials/api")) == before
    assert "lacks the 'credentials' scope" in caplog.text


async def test_api_key_lifetime_must_leave_room_for_the_sdks_token() -> None:
    from traitlets import TraitError

    with pytest.raises(TraitError, match="Gen3SpawnerMixin.api_key_lifetime=600"):
        make_spawner(FakeUser("alice")).api_key_lifetime = 600


async def test_a_failed_revocation_is_logged_kept_and_retried_and_never_blocks_the_stop(fence: FenceStandIn, caplog: pytest.LogCaptureFixture) -> None:
    auth, user = fence_session(fence)
    spawner = make_spawner(user, authenticator=auth)
    key = await spawner.mint_api_key()
    fence.fail_500 = True
    try:
        await spawner._cleanup_credentials()
    finally:
        fence.fail_500 = False
    assert "Could not revoke Fence API key" in caplog.text
    assert key["api_key"] not in caplog.text
    assert [c for c in spawner.api.calls if c[0] == "delete_namespaced_secret"], "the stop went on"
    state = spawner.get_state()
    assert state["gen3_pending_revocations"] == [key["key_id"]]
    assert key["api_key"] not in json.dumps(state), "only the id is kept"
    # After a hub restart, the next spawn retries before minting a new key.
    again = make_spawner(user, authenticator=auth)
    again.load_state(state)
    second = await again.mint_api_key()
    assert key["key_id"] not in fence.active_keys("alice")
    assert second["key_id"] in fence.active_keys("alice")
    await again._cleanup_credentials()


async def test_the_spawner_warns_about_allowed_groups_only_with_fence_login(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from gen3workspace.hub.auth import Gen3OAuthenticator

    example = default_catalogue_path().read_text(encoding="utf-8")
    grouped = example.replace("    authz_resource: /workspace-flavors/gpu\n", "    allowed_groups: [gpu-users]\n")
    assert grouped != example

    def warnings(name: str, authenticator: Any) -> list[str]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(grouped, encoding="utf-8")
        spawner = make_spawner(FakeUser("alice"), authenticator=authenticator, flavor_file=str(path))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            spawner.catalogue()
            spawner.catalogue()
        return [r.getMessage() for r in caplog.records if "allowed_groups" in r.getMessage()]

    fence = Gen3OAuthenticator(commons_url="https://data.example.org", client_id="c", client_secret="s")
    (warning,) = warnings("fence", fence)
    assert 'flavor "python-gpu"' in warning and "empty for access granted by arborist policies" in warning
    mapped = Gen3OAuthenticator(commons_url="https://data.example.org", client_id="c", client_secret="s", authz_groups={"/workspace-flavors/gpu": "gpu-users"})
    assert warnings("mapped", mapped) == [], "a group the hub makes from a resource"
    assert warnings("other", SimpleNamespace()) == [], "another login fills groups itself"
