"""The Kubernetes test bed works: a real API server with RBAC, and the kubelet harness runs pods."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from gen3workspace.hub.cli import free_port
from tests.support.kube_fixtures import *  # noqa: F403 - the kube_bed/kubelet fixtures
from tests.support.processes import pid_alive
from tests.support.kubebed import KubeBed, k8s_body
from tests.support.kubelet import FAILURE_ANNOTATION, KubeletHarness

pytestmark = pytest.mark.k8s

T = TypeVar("T")
LABELS = {"component": "singleuser-server"}


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 30.0, what: str = "") -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


async def read_pod(v1: k8s.CoreV1Api, ns: str, name: str) -> dict[str, Any] | None:
    # Raw JSON, the shape KubeSpawner's reflector works with. Unpreloaded responses
    # do not raise on errors, hence the status check.
    resp: Any = await v1.read_namespaced_pod(name, ns, _preload_content=False)
    body = await resp.read()
    if resp.status == 404:
        return None
    if resp.status != 200:
        raise AssertionError(f"reading pod {ns}/{name}: HTTP {resp.status}: {body[:300]!r}")
    pod: dict[str, Any] = json.loads(body)
    return pod


def condition(pod: dict[str, Any], kind: str) -> str | None:
    for c in pod.get("status", {}).get("conditions") or []:
        if c["type"] == kind:
            return str(c["status"])
    return None


def port_open(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((ip, port)) == 0


def http_get(url: str) -> bytes:
    # No proxy: the pod is on loopback and a proxy from the environment must not be used.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        return bytes(resp.read())


def pod_manifest(
    name: str,
    argv: list[str],
    *,
    port: int | None = None,
    env: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    working_dir: str | None = None,
    restart_policy: str = "OnFailure",
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "notebook",
        "image": "images.example.test/notebook:test",
        # As KubeSpawner does it: the whole command in args, no command.
        "args": argv,
        "env": env or [],
        "volumeMounts": mounts or [],
    }
    if port is not None:
        container["ports"] = [{"name": "notebook-port", "containerPort": port}]
    if working_dir:
        container["workingDir"] = working_dir
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": LABELS, "annotations": annotations or {}},
        "spec": {
            "automountServiceAccountToken": False,
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 30,
            "containers": [container],
            "volumes": volumes or [],
        },
    }


# --- the API server ---------------------------------------------------------------------


async def test_apiserver_answers_through_the_admin_kubeconfig(kube_bed: KubeBed) -> None:
    # The kubeconfig is what KubeSpawner loads (via KUBECONFIG), so load it the same way.
    cfg = k8s.Configuration()
    await k8s_config.load_kube_config(config_file=str(kube_bed.kubeconfig), client_configuration=cfg,
                                      persist_config=False)
    assert cfg.host == kube_bed.server
    async with k8s.ApiClient(cfg) as api:
        version = await k8s.VersionApi(api).get_code()
        assert version.major == "1" and int(version.minor.rstrip("+")) >= 33, version
        names = {ns.metadata.name for ns in (await k8s.CoreV1Api(api).list_namespace()).items}
        assert {"default", "kube-system"} <= names
        who = await k8s.AuthenticationV1Api(api).create_self_subject_review(
            k8s_body({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        )
        assert who.status.user_info.username == "admin"
        assert "system:masters" in who.status.user_info.groups


async def test_unauthenticated_requests_are_refused(kube_bed: KubeBed) -> None:
    async with kube_bed.token_client("not-a-token") as api:
        with pytest.raises(k8s.ApiException) as err:
            await k8s.CoreV1Api(api).list_namespace()
    assert err.value.status == 401


async def test_rbac_limits_a_service_account_to_its_role(kube_bed: KubeBed) -> None:
    suffix = os.urandom(4).hex()
    ns_a, ns_b = f"rbac-a-{suffix}", f"rbac-b-{suffix}"
    await kube_bed.create_namespace(ns_a)
    await kube_bed.create_namespace(ns_b)
    await kube_bed.create_service_account(ns_a, "reader")
    async with kube_bed.admin_client() as api:
        rbac, v1 = k8s.RbacAuthorizationV1Api(api), k8s.CoreV1Api(api)
        await rbac.create_namespaced_role(ns_a, k8s_body({
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        }))
        await rbac.create_namespaced_role_binding(ns_a, k8s_body({
            "metadata": {"name": "reader-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns_a}],
        }))
        await v1.create_namespaced_secret(ns_b, k8s_body({"metadata": {"name": "other"}, "stringData": {"k": "v"}}))
        # The admin can see the secret, so a 403 below is RBAC and not a missing object.
        assert [s.metadata.name for s in (await v1.list_namespaced_secret(ns_b)).items] == ["other"]

    token = await kube_bed.service_account_token(ns_a, "reader")

    async def allowed(call: Callable[[k8s.CoreV1Api], Awaitable[Any]]) -> int:
        async with kube_bed.token_client(token) as api:
            try:
                await call(k8s.CoreV1Api(api))
            except k8s.ApiException as exc:
                return int(exc.status)
        return 200

    # RBAC objects apply within a moment, not necessarily at once.
    await eventually(lambda: _eq(allowed(lambda v1: v1.list_namespaced_pod(ns_a)), 200), 10,
                     "the Role to take effect")
    assert await allowed(lambda v1: v1.list_namespaced_secret(ns_b)) == 403
    assert await allowed(lambda v1: v1.read_namespaced_secret("other", ns_b)) == 403
    assert await allowed(lambda v1: v1.list_namespaced_secret(ns_a)) == 403
    assert await allowed(lambda v1: v1.list_namespaced_pod(ns_b)) == 403


async def _eq(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


async def test_token_request_sets_subject_and_audience(kube_bed: KubeBed, kube_namespace: str) -> None:
    token = await kube_bed.service_account_token(kube_namespace, "default", audiences=["gen3-test"])
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"] == ["gen3-test"]
    assert claims["sub"] == f"system:serviceaccount:{kube_namespace}:default"
    async with kube_bed.admin_client() as api:
        auth = k8s.AuthenticationV1Api(api)
        review = await auth.create_token_review(k8s_body({"spec": {"token": token, "audiences": ["gen3-test"]}}))
        assert review.status.authenticated, review.status.error
        # The same token is no good for the apiserver's own audience.
        review = await auth.create_token_review(k8s_body({"spec": {"token": token}}))
        assert not review.status.authenticated


# --- the kubelet harness --------------------------------------------------------------


async def test_harness_runs_a_pod_and_deleting_it_stops_the_process(
    kube_bed: KubeBed, kube_namespace: str, kubelet: KubeletHarness
) -> None:
    ns, port = kube_namespace, free_port()
    kubelet.pvc_dir("claim-alice").joinpath("marker.txt").write_text("on the drive\n")
    async with kube_bed.admin_client() as api:
        v1 = k8s.CoreV1Api(api)
        await v1.create_namespaced_persistent_volume_claim(ns, k8s_body({
            "metadata": {"name": "claim-alice"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }))
        await v1.create_namespaced_secret(
            ns, k8s_body({"metadata": {"name": "creds"}, "stringData": {"api-key": "s3cret"}})
        )
        await v1.create_namespaced_pod(ns, k8s_body(pod_manifest(
            "jupyter-alice",
            [sys.executable, "-m", "http.server", "--bind", "$(POD_IP)", str(port)],
            port=port,
            env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            volumes=[
                {"name": "home", "persistentVolumeClaim": {"claimName": "claim-alice"}},
                {"name": "creds", "secret": {"secretName": "creds"}},
            ],
            mounts=[
                {"name": "home", "mountPath": "/home/jovyan"},
                {"name": "creds", "mountPath": "/home/jovyan/.gen3", "readOnly": True},
            ],
            working_dir="/home/jovyan",
        )))

        async def ready_pod() -> dict[str, Any] | None:
            pod = await read_pod(v1, ns, "jupyter-alice")
            return pod if pod and condition(pod, "Ready") == "True" else None

        pod = await eventually(ready_pod, 30, "the pod to be Ready")
        status = pod["status"]
        ip = status["podIP"]
        assert ip.startswith("127.") and ip != "127.0.0.1"
        assert status["phase"] == "Running"
        assert status["podIPs"] == [{"ip": ip}]
        assert pod["spec"]["nodeName"] == kubelet.node_name
        assert {condition(pod, k) for k in ("PodScheduled", "Initialized", "ContainersReady")} == {"True"}
        (cs,) = status["containerStatuses"]
        assert cs["ready"] and cs["started"] and "running" in cs["state"]

        # The process serves its working dir, which is the claim's folder, on the pod IP,
        # and the Secret mounted inside the home shows up in it.
        assert http_get(f"http://{ip}:{port}/marker.txt") == b"on the drive\n"
        assert http_get(f"http://{ip}:{port}/.gen3/api-key") == b"s3cret"
        assert not port_open("127.0.0.1", port), "the pod must listen on its own IP only"

        pvc = await v1.read_namespaced_persistent_volume_claim("claim-alice", ns)
        assert pvc.status.phase == "Bound"

        pid = kubelet.pods["jupyter-alice"].pid
        assert pid is not None and pid_alive(pid)
        secret_file = kubelet.pods["jupyter-alice"].map_path("/home/jovyan/.gen3/api-key")
        assert Path(secret_file).read_text() == "s3cret"

        # A plain delete, with the pod's 30 s grace period, as KubeSpawner does it.
        await v1.delete_namespaced_pod("jupyter-alice", ns)

        async def gone() -> bool:
            return await read_pod(v1, ns, "jupyter-alice") is None

        await eventually(gone, 15, "the deleted pod to disappear")
        assert not pid_alive(pid)
        assert not port_open(ip, port)
        assert not Path(secret_file).exists(), "Secret files must not outlive the pod"
        assert kubelet.pvc_dir("claim-alice").joinpath("marker.txt").exists(), "the drive must survive"


async def test_env_is_resolved_and_paths_are_mapped(
    kube_bed: KubeBed, kube_namespace: str, kubelet: KubeletHarness
) -> None:
    ns, port = kube_namespace, free_port()
    # Dumps its env and cwd into its working dir, then serves that dir on the pod IP.
    script = (
        "import json, os, sys, http.server, functools;"
        "json.dump({'env': dict(os.environ), 'cwd': os.getcwd()}, open('env.json', 'w'));"
        "h = functools.partial(http.server.SimpleHTTPRequestHandler, directory='.');"
        "http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), h).serve_forever()"
    )
    async with kube_bed.admin_client() as api:
        v1 = k8s.CoreV1Api(api)
        await v1.create_namespaced_secret(ns, k8s_body({"metadata": {"name": "s"}, "stringData": {"token": "t0k"}}))
        await v1.create_namespaced_config_map(ns, k8s_body({"metadata": {"name": "c"}, "data": {"FLAVOR": "small"}}))
        await v1.create_namespaced_persistent_volume_claim(ns, k8s_body({
            "metadata": {"name": "claim-bob"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }))
        manifest = pod_manifest(
            "jupyter-bob",
            [sys.executable, "-c", script, "0.0.0.0", "$(JUPYTER_PORT)"],
            env=[
                {"name": "JUPYTER_PORT", "value": str(port)},
                {"name": "SERVICE_URL", "value": "http://0.0.0.0:$(JUPYTER_PORT)/user/bob/"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
                {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "KEY_FILE", "value": "/home/jovyan/.gen3/credentials.json"},
                {"name": "NOT_A_MOUNT", "value": "/etc/hosts"},
                {"name": "ESCAPED", "value": "$$(JUPYTER_PORT)"},
            ],
            volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "claim-bob"}}],
            mounts=[{"name": "home", "mountPath": "/home/jovyan"}],
            working_dir="/home/jovyan/work",
        )
        manifest["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "c"}, "prefix": "CM_"}]
        await v1.create_namespaced_pod(ns, k8s_body(manifest))
        rec = await kubelet.wait_for_ready("jupyter-bob", 30)

    dumped = json.loads(http_get(f"http://{rec.ip}:{port}/env.json"))
    env, drive = dumped["env"], kubelet.pvc_dir("claim-bob")
    assert dumped["cwd"] == str(drive / "work")
    assert env["TOKEN"] == "t0k"
    assert (env["MY_NAME"], env["MY_NS"], env["MY_IP"]) == ("jupyter-bob", ns, rec.ip)
    assert env["SERVICE_URL"] == f"http://{rec.ip}:{port}/user/bob/"
    assert env["KEY_FILE"] == str(drive / ".gen3" / "credentials.json")
    assert env["NOT_A_MOUNT"] == "/etc/hosts"
    assert env["ESCAPED"] == "$(JUPYTER_PORT)"
    assert env["CM_FLAVOR"] == "small"
    assert env["HOME"] == str(drive)
    assert "PYTEST_CURRENT_TEST" not in env, "the test process' env must not leak into pods"


async def test_image_pull_error_is_reported_with_a_warning_event(
    kube_bed: KubeBed, kube_namespace: str, kubelet: KubeletHarness
) -> None:
    ns = kube_namespace
    async with kube_bed.admin_client() as api:
        v1 = k8s.CoreV1Api(api)
        await v1.create_namespaced_pod(ns, k8s_body(pod_manifest(
            "jupyter-carol", [sys.executable, "-m", "http.server"], port=8888,
            annotations={FAILURE_ANNOTATION: "image_pull_error"},
        )))

        async def pull_failed() -> Any:
            events = (await v1.list_namespaced_event(ns, field_selector="involvedObject.kind=Pod")).items
            return [e for e in events if e.type == "Warning" and e.reason == "Failed"
                    and e.message.startswith("Failed to pull image")]

        (event,) = await eventually(pull_failed, 15, "the image pull Warning event")
        assert event.involved_object.name == "jupyter-carol"
        assert "images.example.test/notebook:test" in event.message

        async def waiting_reason() -> str | None:
            pod = await read_pod(v1, ns, "jupyter-carol")
            if not pod or not pod["status"].get("containerStatuses"):
                return None
            reason = pod["status"]["containerStatuses"][0]["state"].get("waiting", {}).get("reason")
            return str(reason) if reason else None

        assert await eventually(waiting_reason, 10, "a waiting reason") in ("ErrImagePull", "ImagePullBackOff")
        pod = await read_pod(v1, ns, "jupyter-carol")
        assert pod is not None and pod["status"]["phase"] == "Pending"
        assert condition(pod, "Ready") == "False"
        assert kubelet.pods["jupyter-carol"].pid is None, "nothing runs when the image is not there"

        await v1.delete_namespaced_pod("jupyter-carol", ns)
        await eventually(lambda: _eq(read_pod(v1, ns, "jupyter-carol"), None), 15, "the pod to go")


async def test_simulated_crash_counts_restarts(
    kube_bed: KubeBed, kube_namespace: str, kubelet: KubeletHarness
) -> None:
    ns = kube_namespace
    kubelet.failures["jupyter-dave"] = "crash"
    async with kube_bed.admin_client() as api:
        v1 = k8s.CoreV1Api(api)
        manifest = pod_manifest("jupyter-dave", [sys.executable, "-m", "http.server"], port=8888)
        await v1.create_namespaced_pod(ns, k8s_body(manifest))

        async def restarted() -> dict[str, Any] | None:
            pod = await read_pod(v1, ns, "jupyter-dave")
            statuses = (pod or {}).get("status", {}).get("containerStatuses") or []
            return statuses[0] if statuses and statuses[0]["restartCount"] >= 2 else None

        cs = await eventually(restarted, 20, "two restarts")
        assert cs["lastState"]["terminated"]["reason"] == "Error"
        assert cs["lastState"]["terminated"]["exitCode"] != 0
        assert not cs["ready"]


async def test_a_process_that_exits_ends_the_pod_per_restart_policy(
    kube_bed: KubeBed, kube_namespace: str, kubelet: KubeletHarness
) -> None:
    ns = kube_namespace
    async with kube_bed.admin_client() as api:
        v1 = k8s.CoreV1Api(api)
        await v1.create_namespaced_pod(ns, k8s_body(pod_manifest(
            "jupyter-erin", [sys.executable, "-c", "import sys; sys.exit(3)"], port=8888,
            restart_policy="Never",
        )))

        async def failed() -> dict[str, Any] | None:
            pod = await read_pod(v1, ns, "jupyter-erin")
            return pod if pod and pod["status"]["phase"] == "Failed" else None

        pod = await eventually(failed, 20, "the pod to fail")
        # What KubeSpawner.poll() reads to report the server's exit code.
        assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


async def test_never_ready_keeps_a_listening_pod_unready(
    kube_bed: KubeBed, kube_namespace: str, kubelet: KubeletHarness
) -> None:
    ns, port = kube_namespace, free_port()
    kubelet.failures["jupyter-fay"] = "never_ready"
    async with kube_bed.admin_client() as api:
        v1 = k8s.CoreV1Api(api)
        await v1.create_namespaced_pod(ns, k8s_body(pod_manifest(
            "jupyter-fay",
            [sys.executable, "-m", "http.server", "--bind", "$(POD_IP)", str(port)],
            port=port,
            env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        )))

        async def listening() -> str | None:
            rec = kubelet.pods.get("jupyter-fay")
            return rec.ip if rec and rec.ip and port_open(rec.ip, port) else None

        ip = await eventually(listening, 20, "the server to listen")
        await asyncio.sleep(1.5)  # several readiness rounds
        pod = await read_pod(v1, ns, "jupyter-fay")
        assert pod is not None and pod["status"]["phase"] == "Running"
        assert condition(pod, "Ready") == "False"
        assert port_open(ip, port)


async def test_pods_outside_the_selector_are_left_alone(
    kube_bed: KubeBed, kube_namespace: str, kubelet: KubeletHarness
) -> None:
    ns = kube_namespace
    async with kube_bed.admin_client() as api:
        v1 = k8s.CoreV1Api(api)
        other = pod_manifest("not-a-notebook", [sys.executable, "-m", "http.server"], port=8888)
        other["metadata"]["labels"] = {"component": "something-else"}
        await v1.create_namespaced_pod(ns, k8s_body(other))
        mine = pod_manifest("jupyter-gus", [sys.executable, "-c", "import time; time.sleep(60)"])
        await v1.create_namespaced_pod(ns, k8s_body(mine))
        await kubelet.wait_for_ready("jupyter-gus", 20)
        pod = await read_pod(v1, ns, "not-a-notebook")
        assert pod is not None and pod["status"]["phase"] == "Pending"
        assert "not-a-notebook" not in kubelet.pods


def test_the_harness_also_runs_in_a_thread_for_sync_tests(
    kube_bed: KubeBed, kube_namespace: str, kubelet_thread_factory: Callable[..., Any]
) -> None:
    # A synchronous test (as hub tests driven with requests are) has no event loop.
    port = free_port()
    runner = kubelet_thread_factory(kube_namespace)

    async def create() -> None:
        async with kube_bed.admin_client() as api:
            await k8s.CoreV1Api(api).create_namespaced_pod(kube_namespace, k8s_body(pod_manifest(
                "jupyter-hal",
                [sys.executable, "-m", "http.server", "--bind", "$(POD_IP)", str(port)],
                port=port,
                env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            )))

    runner.call(create)
    rec = runner.wait_for_ready("jupyter-hal", 30)
    assert http_get(f"http://{rec.ip}:{port}/").startswith(b"<!DOCTYPE")
    pid = rec.pid
    assert pid is not None
    runner.stop()
    assert not pid_alive(pid), "stopping the harness stops its processes"


async def test_a_killed_server_is_restarted_per_restart_policy(
    kube_bed: KubeBed, kube_namespace: str, kubelet: KubeletHarness
) -> None:
    ns, port = kube_namespace, free_port()
    async with kube_bed.admin_client() as api:
        v1 = k8s.CoreV1Api(api)
        await v1.create_namespaced_pod(ns, k8s_body(pod_manifest(
            "jupyter-ivy",
            [sys.executable, "-m", "http.server", "--bind", "$(POD_IP)", str(port)],
            port=port,
            env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        )))
        first = (await kubelet.wait_for_ready("jupyter-ivy", 30)).pid
        assert first is not None
        kubelet.kill_container("jupyter-ivy")

        async def ready_again() -> dict[str, Any] | None:
            pod = await read_pod(v1, ns, "jupyter-ivy")
            cs = ((pod or {}).get("status", {}).get("containerStatuses") or [{}])[0]
            return cs if cs.get("restartCount") == 1 and cs.get("ready") else None

        cs = await eventually(ready_again, 20, "the restarted server to be ready")
        assert cs["lastState"]["terminated"]["exitCode"] == 128 + 9  # SIGKILL, as a runtime reports it
        second = kubelet.pods["jupyter-ivy"].pid
        assert second is not None and second != first and not pid_alive(first)


async def test_a_missing_claim_keeps_the_pod_unscheduled_until_it_exists(
    kube_bed: KubeBed, kube_namespace: str, kubelet: KubeletHarness
) -> None:
    ns = kube_namespace
    async with kube_bed.admin_client() as api:
        v1 = k8s.CoreV1Api(api)
        await v1.create_namespaced_pod(ns, k8s_body(pod_manifest(
            "jupyter-jo", [sys.executable, "-c", "import time; time.sleep(60)"],
            volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "claim-jo"}}],
            mounts=[{"name": "home", "mountPath": "/home/jovyan"}],
        )))

        async def unschedulable() -> Any:
            events = (await v1.list_namespaced_event(ns)).items
            return [e for e in events if e.reason == "FailedScheduling" and "claim-jo" in e.message]

        await eventually(unschedulable, 10, "a FailedScheduling event")
        pod = await read_pod(v1, ns, "jupyter-jo")
        assert pod is not None and not pod["spec"].get("nodeName") and pod["status"]["phase"] == "Pending"

        await v1.create_namespaced_persistent_volume_claim(ns, k8s_body({
            "metadata": {"name": "claim-jo"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }))
        rec = await kubelet.wait_for_ready("jupyter-jo", 20)
        assert rec.cwd == kubelet.pvc_dir("claim-jo")
