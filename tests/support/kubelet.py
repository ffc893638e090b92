"""A stand-in kubelet for the test bed: runs selected pods as local processes on loopback IPs.

The test bed (``tests.support.kubebed``) has a real API server but no scheduler, kubelet
or container runtime. :class:`KubeletHarness` watches pods in one namespace (by default
the ones KubeSpawner makes, ``component=singleuser-server``) and does for them what a
node would:

* binds each new pod to a fake node and gives it its own loopback IP (127.0.0.2 upward);
* materialises its volumes: Secret, ConfigMap and downward-API files are read through
  the API into a per-pod folder (removed when the pod goes), a PVC is a per-claim
  folder that outlives pods (:meth:`KubeletHarness.pvc_dir`), emptyDir is per pod;
* runs the main container's ``command`` + ``args`` (``$(VAR)`` expanded like the
  kubelet does) as a local process with the pod's env (``value``, ``valueFrom``
  secretKeyRef/configMapKeyRef/fieldRef/resourceFieldRef, ``envFrom``);
* reports the pod Running, then Ready once the container port answers on the pod IP;
* restarts a crashed process per ``restartPolicy`` with a back-off, counting restarts;
* on deletion stops the process (SIGTERM, then SIGKILL, by PID), finalises the pod
  (delete with grace period 0, so a deleted pod really disappears) and deletes the
  objects the pod owned (standing in for the absent garbage collector);
* marks PersistentVolumeClaims in the namespace Bound (there is no provisioner).

Paths: a process cannot see the container's mount paths (``/home/jovyan`` does not
exist here), so env values, args and ``workingDir`` that point into a mount are
rewritten to the local folder (:meth:`RunningPod.map_path`). A container listening on
``0.0.0.0`` means "every interface of the pod", which here is the pod IP, so that
literal is rewritten to the pod IP too; otherwise two pods on port 8888 would collide.

Failures on demand, per pod: the annotation :data:`FAILURE_ANNOTATION` or the
``failures`` dict (keyed by pod name) set to ``image_pull_error``, ``crash`` or
``never_ready``.

Only the main container (named ``notebook``, else the first) runs; other containers
are reported running, init containers completed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import errno
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch as k8s_watch

from tests.support.kubebed import k8s_body, set_pdeathsig

log = logging.getLogger("tests.kubelet")

Failure = Literal["image_pull_error", "crash", "never_ready"]
FAILURES: tuple[Failure, ...] = ("image_pull_error", "crash", "never_ready")
FAILURE_ANNOTATION = "kubebed.gen3workspace.test/simulate"
DEFAULT_SELECTOR = "component=singleuser-server"
DEFAULT_NODE = "kubebed-node"

# How long a stopping container gets between SIGTERM and SIGKILL, at most: tests should
# not sit out a pod's 30 s terminationGracePeriodSeconds.
MAX_STOP_GRACE = 5.0
MAX_BACKOFF = 10.0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- pod IPs ---------------------------------------------------------------------------

_ip_lock = threading.Lock()
_ip_next = 2
_ips_in_use: set[str] = set()


def _bindable(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def allocate_pod_ip(port: int | None = None) -> str:
    """A loopback IP not handed out before in this process, whose `port` is free.

    Checking the port (not just the address) catches another pytest process that
    happens to use the same IP for its own pod on the same port.
    """
    global _ip_next
    with _ip_lock:
        while _ip_next < 2**24 - 2:
            n = _ip_next
            _ip_next += 1
            ip = f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
            if ip.endswith((".0", ".255")) or ip in _ips_in_use:
                continue
            if _bindable(ip, port or 0):
                _ips_in_use.add(ip)
                return ip
    raise RuntimeError("ran out of loopback pod IPs")


def release_pod_ip(ip: str) -> None:
    # Released IPs are not handed out again (the counter only goes up): a late client
    # of a deleted pod must not reach the next pod by accident.
    with _ip_lock:
        _ips_in_use.discard(ip)


# --- env and path helpers -------------------------------------------------------------

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_ANY_ADDR = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])")


def expand_vars(value: str, env: Mapping[str, str]) -> str:
    """The kubelet's $(VAR) expansion: known names are replaced, $$ is a literal $."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(repl, value)


_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
    "E": 1e18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def parse_quantity(q: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "2Gi") as a number."""
    if isinstance(q, (int, float)):
        return float(q)
    m = _QUANTITY.match(q.strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {q!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


class EnvError(Exception):
    """A referenced Secret/ConfigMap key is missing: the real kubelet refuses to start."""


# --- per-pod state --------------------------------------------------------------------


@dataclass
class Mount:
    mount_path: str
    local_path: Path
    read_only: bool


@dataclass
class RunningPod:
    """What the harness knows about one pod (one UID) it runs."""

    name: str
    namespace: str
    uid: str
    dir: Path
    spec: dict[str, Any]
    metadata: dict[str, Any]
    ip: str = ""
    failure: Failure | None = None
    mounts: list[Mount] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    port: int | None = None
    process: asyncio.subprocess.Process | None = None
    restart_count: int = 0
    started_at: str | None = None
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    phase: str = "Pending"
    log_path: Path | None = None
    deleting: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    _transitions: dict[str, tuple[str, str]] = field(default_factory=dict)
    _nested_links: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    def map_path(self, path: str) -> str:
        """Rewrite a path inside the container to the local folder that backs it.

        The longest mount path that contains `path` wins, as with nested mounts.
        Paths outside every mount are returned unchanged.
        """
        def covers(mount_path: str) -> bool:
            return mount_path == "" or path == mount_path or path.startswith(mount_path + "/")

        covering = [m for m in self.mounts if covers(m.mount_path.rstrip("/"))]
        if not covering:
            return path
        best = max(covering, key=lambda m: len(m.mount_path.rstrip("/")))
        rest = path[len(best.mount_path.rstrip("/")):].lstrip("/")
        return str(best.local_path / rest) if rest else str(best.local_path)

    def map_value(self, value: str) -> str:
        """Rewrite an env value or arg: paths into mounts, and 0.0.0.0 to the pod IP."""
        if self.ip:
            value = _ANY_ADDR.sub(self.ip, value)
        if value.startswith("/"):
            # PATH-like lists: map every element.
            return ":".join(self.map_path(p) if p.startswith("/") else p for p in value.split(":"))
        m = re.match(r"^(--?[A-Za-z0-9_.-]+=)(/.*)$", value)
        if m:
            return m.group(1) + self.map_value(m.group(2))
        return value

    @property
    def main_container(self) -> dict[str, Any]:
        return main_container(self.spec)

    def logs(self) -> str:
        """What the container process has printed so far (stdout and stderr)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


def main_container(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The container the harness runs: KubeSpawner names its own "notebook"."""
    containers: list[dict[str, Any]] = list(spec.get("containers") or [])
    for c in containers:
        if c.get("name") == "notebook":
            return c
    return containers[0]


# --- the harness ------------------------------------------------------------------------


class KubeletHarness:
    """Plays the kubelet for the pods in `namespace` that match `label_selector`.

    Use ``async with KubeletHarness(bed.kubeconfig, namespace) as kubelet:``, or
    :meth:`start` / :meth:`stop`. Everything runs in the event loop that called start.
    """

    def __init__(
        self,
        kubeconfig: str | os.PathLike[str],
        namespace: str,
        *,
        label_selector: str = DEFAULT_SELECTOR,
        failures: Mapping[str, Failure] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        node_name: str = DEFAULT_NODE,
        image_entrypoints: Mapping[str, Sequence[str]] | None = None,
        base_env: Mapping[str, str] | None = None,
        container_home: str = "/home/jovyan",
        bind_pvcs: bool = True,
        collect_garbage: bool = True,
        env_hook: Callable[[RunningPod, dict[str, str]], None] | None = None,
    ) -> None:
        """
        kubeconfig: an admin kubeconfig (``KubeBed.kubeconfig``).
        failures: pod name -> simulated failure; the dict is kept, so a test can add to
            ``harness.failures`` after start.
        state_dir: where pod folders and PVC folders live; PVC folders are kept there
            across pods (and across harnesses given the same state_dir).
        image_entrypoints: image -> ENTRYPOINT argv for containers that give only
            ``args`` (KubeSpawner puts its whole command into ``args``; a real image's
            entrypoint is usually tini, which adds nothing here, so the default is none).
        base_env: the env a container starts from before the pod's env (an image has
            its own ENV); default: PATH (this venv's bin first), LANG, and HOME mapped
            from `container_home`.
        env_hook: called with (pod, env) just before the process starts, to adjust env.
        """
        self.kubeconfig = Path(kubeconfig)
        self.namespace = namespace
        self.label_selector = label_selector
        self.failures: dict[str, Failure] = dict(failures or {})
        self._own_state_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="kubelet-"))
        self.node_name = node_name
        self.image_entrypoints = {k: list(v) for k, v in (image_entrypoints or {}).items()}
        self.base_env = dict(base_env) if base_env is not None else None
        self.container_home = container_home
        self.bind_pvcs = bind_pvcs
        self.collect_garbage = collect_garbage
        self.env_hook = env_hook
        self.pods: dict[str, RunningPod] = {}  # by pod name: the current incarnation
        self._by_uid: dict[str, RunningPod] = {}
        self._api: k8s.ApiClient | None = None
        self._v1: k8s.CoreV1Api | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pod_tasks: set[asyncio.Task[None]] = set()
        self._ca_pem: bytes | None = None

    # lifecycle

    async def start(self) -> KubeletHarness:
        cfg = k8s.Configuration()
        await k8s_config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=cfg, persist_config=False
        )
        if cfg.ssl_ca_cert:
            self._ca_pem = Path(cfg.ssl_ca_cert).read_bytes()
        self._api = k8s.ApiClient(cfg)
        self._v1 = k8s.CoreV1Api(self._api)
        await self._ensure_node()
        self._tasks.append(asyncio.create_task(self._watch_pods(), name="kubelet-watch-pods"))
        if self.bind_pvcs:
            self._tasks.append(asyncio.create_task(self._watch_pvcs(), name="kubelet-watch-pvcs"))
        return self

    async def stop(self) -> None:
        """Stop watching and stop every process; API objects are left as they are."""
        for t in self._tasks:
            t.cancel()
        for t in list(self._pod_tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._pod_tasks, return_exceptions=True)
        self._tasks.clear()
        for rec in list(self._by_uid.values()):
            await self._kill(rec)
            self._cleanup_pod_files(rec)
            if rec.ip:
                release_pod_ip(rec.ip)
        self._by_uid.clear()
        self.pods.clear()
        if self._api is not None:
            await self._api.close()
            self._api = None
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    async def __aenter__(self) -> KubeletHarness:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def v1(self) -> k8s.CoreV1Api:
        if self._v1 is None:
            raise RuntimeError("the harness is not started")
        return self._v1

    # public helpers for tests

    def pvc_dir(self, claim: str, namespace: str | None = None) -> Path:
        """The local folder behind PVC `claim`; it survives pod deletion."""
        d = self.state_dir / "pvc" / (namespace or self.namespace) / claim
        d.mkdir(parents=True, exist_ok=True)
        return d

    def pod(self, name: str) -> RunningPod:
        return self.pods[name]

    def kill_container(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Make pod `name`'s running process die now, as a crash of a running server would.

        What follows is the pod's restartPolicy, as with any exit.
        """
        rec = self.pods[name]
        if rec.pid is None:
            raise RuntimeError(f"pod {name} has no running process")
        os.killpg(rec.pid, sig)

    async def wait_for_ready(self, name: str, timeout: float = 60.0) -> RunningPod:
        """Wait until the harness has reported pod `name` Ready."""
        async def waiter() -> RunningPod:
            while True:
                rec = self.pods.get(name)
                if rec is not None and rec.ready:
                    return rec
                await asyncio.sleep(0.1)

        return await asyncio.wait_for(waiter(), timeout)

    async def wait_for_gone(self, name: str, timeout: float = 30.0) -> None:
        """Wait until the harness has stopped pod `name` and it is gone from the API."""
        async def waiter() -> None:
            while True:
                rec = self.pods.get(name)
                if rec is None:
                    return
                await rec.gone.wait()

        await asyncio.wait_for(waiter(), timeout)

    # watching

    async def _watch_pods(self) -> None:
        while True:
            try:
                w = k8s_watch.Watch()
                async with w.stream(
                    self.v1.list_namespaced_pod,
                    namespace=self.namespace,
                    label_selector=self.label_selector,
                    allow_watch_bookmarks=False,
                ) as stream:
                    async for event in stream:
                        self._on_pod_event(event["type"], event["raw_object"])
            except asyncio.CancelledError:
                raise
            except Exception:  # a dropped watch: start again (existing pods replay as ADDED)
                log.exception("pod watch failed; restarting it")
                await asyncio.sleep(0.5)

    def _on_pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        if kind == "ERROR" or not isinstance(pod, dict) or "metadata" not in pod:
            return
        meta = pod["metadata"]
        uid = meta.get("uid", "")
        rec = self._by_uid.get(uid)
        deleting = kind == "DELETED" or bool(meta.get("deletionTimestamp"))
        if rec is None:
            if deleting:
                return
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                return  # finished before this harness started: nothing to run
            rec = RunningPod(
                name=meta["name"],
                namespace=meta.get("namespace", self.namespace),
                uid=uid,
                dir=self.state_dir / "pods" / f"{meta['name']}-{uid[:8]}",
                spec=pod.get("spec") or {},
                metadata=meta,
            )
            self._by_uid[uid] = rec
            self.pods[rec.name] = rec
            rec.task = self._spawn(self._run_pod(rec), f"kubelet-pod-{rec.name}")
            return
        rec.metadata = meta
        if deleting and not rec.deleting:
            rec.deleting = True
            self._spawn(self._terminate(rec, already_gone=kind == "DELETED"), f"kubelet-stop-{rec.name}")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._pod_tasks.add(task)
        task.add_done_callback(self._pod_tasks.discard)
        task.add_done_callback(_log_task_error)
        return task

    async def _watch_pvcs(self) -> None:
        while True:
            try:
                w = k8s_watch.Watch()
                async with w.stream(
                    self.v1.list_namespaced_persistent_volume_claim, namespace=self.namespace
                ) as stream:
                    async for event in stream:
                        pvc = event["raw_object"]
                        if event["type"] in ("ADDED", "MODIFIED") and isinstance(pvc, dict):
                            await self._bind_pvc(pvc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("PVC watch failed; restarting it")
                await asyncio.sleep(0.5)

    async def _bind_pvc(self, pvc: dict[str, Any]) -> None:
        meta, spec = pvc["metadata"], pvc.get("spec") or {}
        if (pvc.get("status") or {}).get("phase") == "Bound" or meta.get("deletionTimestamp"):
            return
        storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        status = {
            "phase": "Bound",
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "capacity": {"storage": storage},
        }
        self.pvc_dir(meta["name"], meta.get("namespace"))
        with contextlib.suppress(k8s.ApiException):  # deleted meanwhile
            await self.v1.patch_namespaced_persistent_volume_claim_status(
                meta["name"], meta["namespace"], [{"op": "add", "path": "/status", "value": status}]
            )

    # the node

    async def _ensure_node(self) -> None:
        node = {
            "metadata": {
                "name": self.node_name,
                "labels": {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux"},
            },
        }
        try:
            await self.v1.create_node(k8s_body(node))
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise
            return
        status = {
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "test kubelet harness", "lastHeartbeatTime": _now(),
                "lastTransitionTime": _now(),
            }],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            "capacity": {"cpu": str(os.cpu_count() or 1), "memory": "64Gi", "pods": "250"},
            "allocatable": {"cpu": str(os.cpu_count() or 1), "memory": "64Gi", "pods": "250"},
        }
        await self.v1.patch_node_status(self.node_name, k8s_body([{"op": "add", "path": "/status", "value": status}]))

    # one pod's life

    async def _run_pod(self, rec: RunningPod) -> None:
        try:
            await self._pod_lifecycle(rec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Said on the pod too, where a test that only watches the pod (or
            # KubeSpawner's progress) sees it, not only in the log.
            log.exception("test kubelet failed to run pod %s/%s", rec.namespace, rec.name)
            with contextlib.suppress(Exception):
                await self._event(rec, "Warning", "KubeletHarnessError", f"{type(exc).__name__}: {exc}")

    async def _pod_lifecycle(self, rec: RunningPod) -> None:
        rec.dir.mkdir(parents=True, exist_ok=True)
        rec.log_path = rec.dir / "container.log"
        rec.failure = self._failure_for(rec)
        container = rec.main_container
        await self._wait_for_claims(rec)
        await self._bind(rec)
        rec.port = _container_port(container)
        rec.ip = allocate_pod_ip(rec.port)
        await self._event(rec, "Normal", "Scheduled",
                          f"Successfully assigned {rec.namespace}/{rec.name} to {self.node_name}",
                          component="default-scheduler")

        # Volumes first, as the kubelet does: a missing Secret keeps the pod in
        # ContainerCreating with FailedMount events until it appears.
        warned = False
        while True:
            try:
                await self._mount_volumes(rec)
                break
            except EnvError as exc:
                if not warned:
                    await self._event(rec, "Warning", "FailedMount", str(exc))
                    warned = True
                await self._set_status(rec, phase="Pending", state=_waiting("ContainerCreating"),
                                       ready=False, started=False)
                await asyncio.sleep(0.5)

        image = container.get("image", "")
        if rec.failure == "image_pull_error":
            await self._image_pull_error(rec, image)
            return

        await self._event(rec, "Normal", "Pulled",
                          f'Container image "{image}" already present on machine')
        backoff = 0.5
        while True:
            if rec.failure == "crash":
                exit_code, reason = 1, "Error"
                rec.started_at = _now()
                await self._event(rec, "Normal", "Created", f"Created container {container['name']}")
                await self._event(rec, "Normal", "Started", f"Started container {container['name']}")
                message: str | None = "simulated crash (test kubelet harness)"
            else:
                try:
                    await self._prepare_process(rec)
                except EnvError as exc:
                    await self._event(rec, "Warning", "Failed", f"Error: {exc}")
                    await self._set_status(
                        rec, phase="Pending" if rec.restart_count == 0 else "Running",
                        state=_waiting("CreateContainerConfigError", str(exc)),
                        ready=False, started=False,
                    )
                    await asyncio.sleep(1.0)
                    continue
                exit_code = await self._run_process(rec)
                reason = "Completed" if exit_code == 0 else "Error"
                message = None
            # The container has ended by itself (or was made to crash).
            terminated = {"terminated": {
                "exitCode": exit_code, "reason": reason, "startedAt": rec.started_at or _now(), "finishedAt": _now(),
                **({"message": message} if message else {}),
            }}
            policy = rec.spec.get("restartPolicy", "Always")
            if policy == "Never" or (policy == "OnFailure" and exit_code == 0):
                await self._set_status(rec, phase="Succeeded" if exit_code == 0 else "Failed",
                                       state=terminated, ready=False, started=False)
                return
            await self._set_status(rec, phase="Running", state=terminated, ready=False, started=False)
            # Kept as lastState from now on, also once the container runs again.
            rec.last_state = terminated
            await self._event(rec, "Warning", "BackOff",
                              f"Back-off restarting failed container {container['name']} in pod {rec.name}")
            await asyncio.sleep(backoff)
            rec.restart_count += 1
            await self._set_status(
                rec, phase="Running",
                state=_waiting("CrashLoopBackOff",
                               f"back-off {backoff:g}s restarting failed container={container['name']}"),
                ready=False, started=False,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _failure_for(self, rec: RunningPod) -> Failure | None:
        value = self.failures.get(rec.name) or (rec.metadata.get("annotations") or {}).get(FAILURE_ANNOTATION)
        if value is None:
            return None
        if value not in FAILURES:
            raise ValueError(f"unknown simulated failure {value!r} for pod {rec.name}; use one of {FAILURES}")
        return value

    async def _wait_for_claims(self, rec: RunningPod) -> None:
        # The scheduler's check: a pod whose PVC does not exist stays Pending and
        # unscheduled, with a FailedScheduling event saying which claim is missing.
        warned: set[str] = set()
        for vol in rec.spec.get("volumes") or []:
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            while claim:
                try:
                    await self.v1.read_namespaced_persistent_volume_claim(claim, rec.namespace)
                    break
                except k8s.ApiException as exc:
                    if exc.status != 404:
                        raise
                if claim not in warned:
                    warned.add(claim)
                    await self._event(rec, "Warning", "FailedScheduling",
                                      f'0/1 nodes are available: persistentvolumeclaim "{claim}" not found.',
                                      component="default-scheduler")
                await asyncio.sleep(0.5)

    async def _bind(self, rec: RunningPod) -> None:
        # What the scheduler would do. Bound pods get graceful deletion, which is what
        # KubeSpawner meets in a real cluster and why the harness must finalise them.
        if rec.spec.get("nodeName"):
            return
        body = {
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": rec.name, "namespace": rec.namespace, "uid": rec.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        # Unpreloaded: the client cannot deserialize the Status this call answers with.
        # Such responses do not raise, so the status is checked here.
        resp: Any = await self.v1.create_namespaced_pod_binding(
            rec.name, rec.namespace, k8s_body(body), _preload_content=False
        )
        text = await resp.text()
        if resp.status not in (200, 201, 404, 409):  # 404/409: deleted or bound meanwhile
            raise RuntimeError(f"binding pod {rec.namespace}/{rec.name} failed: {resp.status} {text[:300]}")
        rec.spec["nodeName"] = self.node_name

    async def _image_pull_error(self, rec: RunningPod, image: str) -> None:
        msg = (f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull '
               f'and unpack image "{image}": not found (simulated by the test kubelet harness)')
        await self._event(rec, "Normal", "Pulling", f'Pulling image "{image}"')
        await self._event(rec, "Warning", "Failed", msg)
        await self._event(rec, "Warning", "Failed", "Error: ErrImagePull")
        await self._set_status(rec, phase="Pending", state=_waiting("ErrImagePull", msg),
                               ready=False, started=False)
        await asyncio.sleep(1.0)
        back_off = f'Back-off pulling image "{image}"'
        await self._event(rec, "Normal", "BackOff", back_off)
        await self._event(rec, "Warning", "Failed", "Error: ImagePullBackOff")
        await self._set_status(rec, phase="Pending", state=_waiting("ImagePullBackOff", back_off),
                               ready=False, started=False)
        await rec.gone.wait()

    async def _run_process(self, rec: RunningPod) -> int:
        """Start the container process; report Running and then Ready; return its exit code."""
        container = rec.main_container
        assert rec.log_path is not None
        with open(rec.log_path, "ab") as logf:
            logf.write(f"--- {_now()} starting {rec.argv!r} in {rec.cwd}\n".encode())
            logf.flush()
            try:
                rec.process = await asyncio.create_subprocess_exec(
                    *rec.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logf,
                    stderr=asyncio.subprocess.STDOUT,
                    env=rec.env,
                    cwd=str(rec.cwd) if rec.cwd else None,
                    # Its own process group, so stopping it by its PID also stops what it
                    # started (kernels, terminals) and nothing else.
                    start_new_session=True,
                    # Dies with the thread running this loop (which outlives the harness)
                    # even if pytest is killed without tearing down.
                    preexec_fn=set_pdeathsig,
                )
            except OSError as exc:
                # What a runtime reports when the executable is not in the image.
                logf.write(f"cannot start: {exc}\n".encode())
                await self._event(rec, "Warning", "Failed", f"Error: failed to start container: {exc}")
                return 128
        await self._event(rec, "Normal", "Created", f"Created container {container['name']}")
        await self._event(rec, "Normal", "Started", f"Started container {container['name']}")
        rec.started_at = _now()
        await self._set_status(rec, phase="Running", state=_running(rec.started_at), ready=False, started=True)
        proc = rec.process
        wait_exit = asyncio.ensure_future(proc.wait())
        try:
            if rec.failure != "never_ready":
                while not wait_exit.done():
                    if await _port_open(rec.ip, rec.port):
                        rec.ready = True
                        await self._set_status(
                            rec, phase="Running", state=_running(rec.started_at), ready=True, started=True
                        )
                        break
                    await asyncio.wait([wait_exit], timeout=0.2)
            code = await wait_exit
        finally:
            if not wait_exit.done():
                wait_exit.cancel()
        rec.ready = False
        with open(rec.log_path, "ab") as logf:
            logf.write(f"--- {_now()} exited with {code}\n".encode())
        # A negative return code is a signal; containers report 128 + signal number.
        return 128 - code if code < 0 else code

    async def _terminate(self, rec: RunningPod, *, already_gone: bool) -> None:
        """Stop a deleted pod's process and make the pod go away for good."""
        log.info("pod %s/%s deleted: stopping pid %s", rec.namespace, rec.name, rec.pid)
        if rec.task is not None and not rec.task.done():
            rec.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await rec.task
        grace = rec.spec.get("terminationGracePeriodSeconds", 30)
        if rec.pid is not None:
            await self._event(rec, "Normal", "Killing", f"Stopping container {rec.main_container['name']}")
        await self._kill(rec, grace=min(float(grace), MAX_STOP_GRACE))
        if not already_gone:
            # Grace period 0 with the UID as precondition: removes exactly this pod
            # now (KubeSpawner re-creates pods under the same name).
            try:
                await self.v1.delete_namespaced_pod(
                    rec.name, rec.namespace,
                    body=k8s_body({"gracePeriodSeconds": 0, "preconditions": {"uid": rec.uid}}),
                    grace_period_seconds=0,
                )
            except k8s.ApiException as exc:
                if exc.status not in (404, 409):  # gone already, or a new pod by that name
                    log.error("could not finalise pod %s/%s: %s %s", rec.namespace, rec.name,
                              exc.status, exc.body)
        if self.collect_garbage:
            await self._collect_garbage(rec)
        self._cleanup_pod_files(rec)
        release_pod_ip(rec.ip)
        self._by_uid.pop(rec.uid, None)
        if self.pods.get(rec.name) is rec:
            del self.pods[rec.name]
        rec.gone.set()
        log.info("pod %s/%s finalised", rec.namespace, rec.name)

    async def _kill(self, rec: RunningPod, grace: float = MAX_STOP_GRACE) -> None:
        proc = rec.process
        if proc is None or proc.returncode is not None:
            return
        pid = proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            await proc.wait()
        # Children that ignored SIGTERM but outlived the leader still get SIGKILL.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    async def _collect_garbage(self, rec: RunningPod) -> None:
        # Stand-in for the garbage collector: what the pod owned goes with it.
        kinds = (
            (self.v1.list_namespaced_secret, self.v1.delete_namespaced_secret),
            (self.v1.list_namespaced_service, self.v1.delete_namespaced_service),
            (self.v1.list_namespaced_config_map, self.v1.delete_namespaced_config_map),
            (self.v1.list_namespaced_persistent_volume_claim, self.v1.delete_namespaced_persistent_volume_claim),
        )
        for lister, deleter in kinds:
            try:
                items = (await lister(rec.namespace)).items
            except k8s.ApiException:
                continue
            for obj in items:
                refs = obj.metadata.owner_references or []
                if any(r.uid == rec.uid for r in refs):
                    with contextlib.suppress(k8s.ApiException):
                        await deleter(obj.metadata.name, rec.namespace)

    def _cleanup_pod_files(self, rec: RunningPod) -> None:
        for link in rec._nested_links:
            with contextlib.suppress(OSError):
                link.unlink()
        rec._nested_links.clear()
        # Secret files must not outlive the pod; PVC folders live elsewhere.
        shutil.rmtree(rec.dir / "volumes", ignore_errors=True)

    # volumes, env, argv

    async def _mount_volumes(self, rec: RunningPod) -> None:
        volumes: dict[str, Path] = {}
        vol_root = rec.dir / "volumes"
        for vol in rec.spec.get("volumes") or []:
            name = vol["name"]
            if "persistentVolumeClaim" in vol:
                # Its existence was checked before scheduling (_wait_for_claims).
                volumes[name] = self.pvc_dir(vol["persistentVolumeClaim"]["claimName"], rec.namespace)
                continue
            if "hostPath" in vol:
                volumes[name] = Path(vol["hostPath"]["path"])
                continue
            target = vol_root / name
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            if "secret" in vol:
                await self._write_secret(rec, vol["secret"], target)
            elif "configMap" in vol:
                await self._write_config_map(rec, vol["configMap"], target)
            elif "projected" in vol:
                await self._write_projected(rec, vol["projected"], target)
            elif "downwardAPI" in vol:
                for item in vol["downwardAPI"].get("items") or []:
                    self._write_item(target, item["path"], self._field_ref(rec, item).encode(), item.get("mode"))
            elif "emptyDir" not in vol:
                log.warning("pod %s: volume %s of an unsupported type is an empty folder", rec.name, name)
            volumes[name] = target

        rec.mounts = []
        for vm in rec.main_container.get("volumeMounts") or []:
            local = volumes.get(vm["name"])
            if local is None:
                continue
            if vm.get("subPath"):
                local = local / vm["subPath"]
                if not local.exists():
                    local.mkdir(parents=True)
            rec.mounts.append(Mount(vm["mountPath"], local, bool(vm.get("readOnly"))))
        self._link_nested_mounts(rec)

    def _link_nested_mounts(self, rec: RunningPod) -> None:
        # A mount inside another (a Secret at /home/jovyan/.gen3 over the PVC at
        # /home/jovyan) is shown through a symlink in the outer folder while the pod
        # runs, so programs that walk from $HOME find it. An existing real entry there
        # is left alone (the env and path mapping still point at the right place).
        for inner in rec.mounts:
            for outer in rec.mounts:
                op, ip = outer.mount_path.rstrip("/"), inner.mount_path.rstrip("/")
                if inner is outer or not ip.startswith(op + "/"):
                    continue
                link = outer.local_path / ip[len(op) + 1:]
                try:
                    link.parent.mkdir(parents=True, exist_ok=True)
                    if link.is_symlink():
                        link.unlink()
                    if not link.exists():
                        link.symlink_to(inner.local_path, target_is_directory=inner.local_path.is_dir())
                        rec._nested_links.append(link)
                except OSError as exc:
                    log.warning("pod %s: cannot link %s into %s: %s", rec.name, ip, op, exc)

    @staticmethod
    def _write_item(folder: Path, rel: str, data: bytes, mode: int | None) -> None:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode if mode is not None else 0o644)

    def _write_keys(
        self, folder: Path, data: Mapping[str, bytes], src: Mapping[str, Any], kind: str, name: str
    ) -> None:
        items = src.get("items")
        mode = src.get("defaultMode")
        if items:
            for item in items:
                if item["key"] not in data:
                    if src.get("optional"):
                        continue
                    raise EnvError(f'couldn\'t find key {item["key"]} in {kind} {name}')
                self._write_item(folder, item["path"], data[item["key"]], item.get("mode", mode))
        else:
            for key, value in data.items():
                self._write_item(folder, key, value, mode)

    async def _secret_data(self, namespace: str, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            secret = await self.v1.read_namespaced_secret(name, namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                if optional:
                    return None
                raise EnvError(f'secret "{name}" not found') from exc
            raise
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    async def _config_map_data(self, namespace: str, name: str, optional: bool) -> dict[str, bytes] | None:
        if name == "kube-root-ca.crt" and self._ca_pem is not None:
            # Normally published into every namespace by the controller-manager.
            return {"ca.crt": self._ca_pem}
        try:
            cm = await self.v1.read_namespaced_config_map(name, namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                if optional:
                    return None
                raise EnvError(f'configmap "{name}" not found') from exc
            raise
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        return data

    async def _write_secret(self, rec: RunningPod, src: Mapping[str, Any], folder: Path) -> None:
        data = await self._secret_data(rec.namespace, src["secretName"], bool(src.get("optional")))
        if data is not None:
            self._write_keys(folder, data, src, "Secret", src["secretName"])

    async def _write_config_map(self, rec: RunningPod, src: Mapping[str, Any], folder: Path) -> None:
        data = await self._config_map_data(rec.namespace, src["name"], bool(src.get("optional")))
        if data is not None:
            self._write_keys(folder, data, src, "ConfigMap", src["name"])

    async def _write_projected(self, rec: RunningPod, src: Mapping[str, Any], folder: Path) -> None:
        mode = src.get("defaultMode")
        for source in src.get("sources") or []:
            if "secret" in source:
                await self._write_secret(rec, {"defaultMode": mode, **source["secret"]}, folder)
            elif "configMap" in source:
                await self._write_config_map(rec, {"defaultMode": mode, **source["configMap"]}, folder)
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items") or []:
                    self._write_item(folder, item["path"], self._field_ref(rec, item).encode(), item.get("mode", mode))
            elif "serviceAccountToken" in source:
                sat = source["serviceAccountToken"]
                body = {"spec": {
                    "audiences": [sat["audience"]] if sat.get("audience") else None,
                    "expirationSeconds": sat.get("expirationSeconds", 3607),
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": rec.name, "uid": rec.uid},
                }}
                sa = rec.spec.get("serviceAccountName") or "default"
                resp = await self.v1.create_namespaced_service_account_token(sa, rec.namespace, k8s_body(body))
                self._write_item(folder, sat["path"], resp.status.token.encode(), mode)

    def _field_ref(self, rec: RunningPod, item: Mapping[str, Any]) -> str:
        if "fieldRef" in item:
            return self._field_value(rec, item["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in item:
            return self._resource_value(rec, item["resourceFieldRef"])
        raise EnvError(f"unsupported downward API item {item!r}")

    def _field_value(self, rec: RunningPod, path: str) -> str:
        meta = rec.metadata
        simple = {
            "metadata.name": rec.name,
            "metadata.namespace": rec.namespace,
            "metadata.uid": rec.uid,
            "spec.nodeName": rec.spec.get("nodeName") or self.node_name,
            "spec.serviceAccountName": rec.spec.get("serviceAccountName") or "default",
            "status.podIP": rec.ip,
            "status.podIPs": rec.ip,
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path in simple:
            return simple[path]
        m = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        if path in ("metadata.labels", "metadata.annotations"):
            values = meta.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
        raise EnvError(f"unsupported fieldRef {path!r}")

    def _resource_value(self, rec: RunningPod, ref: Mapping[str, Any]) -> str:
        resource = ref["resource"]
        container = rec.main_container
        if ref.get("containerName"):
            container = next(
                (c for c in rec.spec.get("containers") or [] if c.get("name") == ref["containerName"]), container
            )
        kind, _, res = resource.partition(".")
        value = ((container.get("resources") or {}).get(kind) or {}).get(res)
        if value is None:
            # Unset limits default to the node's allocatable, as the kubelet does.
            value = {"cpu": os.cpu_count() or 1, "memory": 64 * 2**30}.get(res, 0)
        divisor = parse_quantity(ref.get("divisor", "1"))
        return str(math.ceil(parse_quantity(value) / divisor))

    async def _prepare_process(self, rec: RunningPod) -> None:
        container = rec.main_container
        env: dict[str, str] = self._base_env(rec)
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                ref = src["secretRef"]
                data = await self._secret_data(rec.namespace, ref["name"], bool(ref.get("optional")))
                values = {k: v.decode() for k, v in (data or {}).items()}
            else:
                ref = src["configMapRef"]
                cm = await self._config_map_data(rec.namespace, ref["name"], bool(ref.get("optional")))
                values = {k: v.decode() for k, v in (cm or {}).items()}
            for k, v in values.items():
                env[prefix + k] = rec.map_value(v)
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" in var:
                value = await self._env_from(rec, var["valueFrom"])
                if value is None:
                    continue
            else:
                value = expand_vars(var.get("value", ""), env)
            env[name] = rec.map_value(value)

        image = container.get("image", "")
        command = [expand_vars(a, env) for a in container.get("command") or []]
        args = [expand_vars(a, env) for a in container.get("args") or []]
        if not command:
            command = list(self.image_entrypoints.get(image, []))
        argv = [rec.map_value(a) for a in command + args]
        if not argv:
            raise EnvError(
                f'container {container["name"]} has no command or args and image "{image}" '
                "has no entrypoint in image_entrypoints"
            )
        if self.env_hook is not None:
            self.env_hook(rec, env)
        working_dir = container.get("workingDir")
        cwd = Path(rec.map_path(working_dir)) if working_dir else Path(env.get("HOME", str(rec.dir)))
        cwd.mkdir(parents=True, exist_ok=True)
        rec.env, rec.argv, rec.cwd = env, argv, cwd
        if rec.port is None:
            rec.port = _port_from_env_or_args(env, argv)

    def _base_env(self, rec: RunningPod) -> dict[str, str]:
        if self.base_env is not None:
            return dict(self.base_env)
        home = rec.map_path(self.container_home)
        if home == self.container_home:  # not under any mount: a private home per pod
            home = str(rec.dir / "home")
        Path(home).mkdir(parents=True, exist_ok=True)
        venv_bin = str(Path(sys.executable).parent)
        return {
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
            "LANG": "C.UTF-8",
            "HOME": home,
            "HOSTNAME": rec.name,
        }

    async def _env_from(self, rec: RunningPod, src: Mapping[str, Any]) -> str | None:
        if "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            data = await self._secret_data(rec.namespace, ref["name"], bool(ref.get("optional")))
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise EnvError(f'couldn\'t find key {ref["key"]} in Secret {rec.namespace}/{ref["name"]}')
            return data[ref["key"]].decode()
        if "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            cm = await self._config_map_data(rec.namespace, ref["name"], bool(ref.get("optional")))
            if cm is None or ref["key"] not in cm:
                if ref.get("optional"):
                    return None
                raise EnvError(f'couldn\'t find key {ref["key"]} in ConfigMap {rec.namespace}/{ref["name"]}')
            return cm[ref["key"]].decode()
        if "fieldRef" in src:
            return self._field_value(rec, src["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in src:
            return self._resource_value(rec, src["resourceFieldRef"])
        raise EnvError(f"unsupported valueFrom {dict(src)!r}")

    # API writes

    async def _set_status(
        self,
        rec: RunningPod,
        *,
        phase: str,
        state: dict[str, Any],
        ready: bool,
        started: bool,
    ) -> None:
        rec.phase = phase
        now = _now()

        def cond(kind: str, ok: bool, reason: str | None = None) -> dict[str, Any]:
            status = "True" if ok else "False"
            prev = rec._transitions.get(kind)
            if prev is None or prev[0] != status:
                rec._transitions[kind] = (status, now)
            c: dict[str, Any] = {"type": kind, "status": status, "lastProbeTime": None,
                                 "lastTransitionTime": rec._transitions[kind][1]}
            if not ok and reason:
                c["reason"] = reason
            return c

        main = rec.main_container
        statuses = []
        for c in rec.spec.get("containers") or []:
            image = c.get("image", "")
            if c is main:
                s: dict[str, Any] = {
                    "name": c["name"], "image": image, "imageID": f"kubebed://{image}",
                    "ready": ready, "started": started, "restartCount": rec.restart_count,
                    "state": state, "lastState": rec.last_state,
                }
                if rec.pid is not None:
                    s["containerID"] = f"kubebed://{rec.pid}"
            else:  # sidecars are not run; they just look healthy
                s = {"name": c["name"], "image": image, "imageID": f"kubebed://{image}", "ready": True,
                     "started": True, "restartCount": 0, "state": _running(), "lastState": {}}
            statuses.append(s)
        init_statuses = [
            {"name": c["name"], "image": c.get("image", ""), "imageID": f"kubebed://{c.get('image', '')}",
             "ready": True, "restartCount": 0, "lastState": {},
             "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}}
            for c in rec.spec.get("initContainers") or []
        ]
        terminal = phase in ("Succeeded", "Failed")
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": [
                cond("PodReadyToStartContainers", not terminal),
                cond("Initialized", True),
                cond("Ready", ready, "ContainersNotReady" if not terminal else "PodCompleted"),
                cond("ContainersReady", ready, "ContainersNotReady" if not terminal else "PodCompleted"),
                cond("PodScheduled", True),
            ],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": rec.ip,
            "podIPs": [{"ip": rec.ip}],
            "startTime": rec._transitions.get("PodScheduled", ("", now))[1],
            "containerStatuses": statuses,
            "qosClass": "BestEffort",
        }
        if init_statuses:
            status["initContainerStatuses"] = init_statuses
        current = await self._read_pod(rec)
        if current is None:
            return
        if current.status is not None and current.status.qos_class:
            status["qosClass"] = current.status.qos_class  # set by the apiserver, immutable
        try:
            # JSON patch replacing /status: a merge patch would merge the old and new
            # container `state` objects (waiting + running at once).
            await self.v1.patch_namespaced_pod_status(
                rec.name, rec.namespace,
                [{"op": "test", "path": "/metadata/uid", "value": rec.uid},
                 {"op": "add", "path": "/status", "value": status}],
            )
        except k8s.ApiException as exc:
            if exc.status not in (404, 409, 422):  # gone or replaced meanwhile
                raise

    async def _read_pod(self, rec: RunningPod) -> k8s.V1Pod | None:
        try:
            pod: k8s.V1Pod = await self.v1.read_namespaced_pod(rec.name, rec.namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        if pod.metadata.uid != rec.uid:
            return None  # a new pod under the same name
        return pod

    async def _event(
        self, rec: RunningPod, kind: str, reason: str, message: str, *, component: str = "kubelet"
    ) -> None:
        now = _now()
        body = {
            "metadata": {"name": f"{rec.name}.{uuid.uuid4().hex[:16]}", "namespace": rec.namespace},
            "involvedObject": {
                "apiVersion": "v1", "kind": "Pod", "name": rec.name,
                "namespace": rec.namespace, "uid": rec.uid,
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": component, "host": self.node_name},
            "reportingComponent": component,
            "reportingInstance": self.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.v1.create_namespaced_event(rec.namespace, k8s_body(body))
        except k8s.ApiException as exc:
            log.warning("could not record event %s for %s: %s", reason, rec.name, exc.reason)


class KubeletThread:
    """Runs a :class:`KubeletHarness` in a thread with its own event loop.

    For synchronous tests (a hub driven with ``requests``): there is no event loop
    running between their statements, so the harness brings its own. Arguments are
    those of KubeletHarness. ``harness.failures`` may be changed from the test's
    thread (a dict assignment); anything else goes through :meth:`call`.
    """

    def __init__(self, kubeconfig: str | os.PathLike[str], namespace: str, **options: Any) -> None:
        self._args = (kubeconfig, namespace)
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._harness: KubeletHarness | None = None

    @property
    def harness(self) -> KubeletHarness:
        if self._harness is None:
            raise RuntimeError("the kubelet thread is not started")
        return self._harness

    def start(self, timeout: float = 30.0) -> KubeletThread:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="kubelet-harness", daemon=True)
        self._thread.start()
        self._harness = self.call(lambda: KubeletHarness(*self._args, **self._options).start(), timeout)
        return self

    def call(self, make_coro: Callable[[], Any], timeout: float | None = 60.0) -> Any:
        """Run the coroutine make_coro() returns in the harness' loop; return its result."""
        if self._loop is None:
            raise RuntimeError("the kubelet thread is not started")

        async def run() -> Any:
            return await make_coro()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def wait_for_ready(self, name: str, timeout: float = 60.0) -> RunningPod:
        return self.call(lambda: self.harness.wait_for_ready(name, timeout), timeout + 5)  # type: ignore[no-any-return]

    def wait_for_gone(self, name: str, timeout: float = 30.0) -> None:
        self.call(lambda: self.harness.wait_for_gone(name, timeout), timeout + 5)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self._harness is not None:
                self.call(self._harness.stop, 60)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = self._thread = self._harness = None

    def __enter__(self) -> KubeletThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _waiting(reason: str, message: str | None = None) -> dict[str, Any]:
    w: dict[str, Any] = {"reason": reason}
    if message:
        w["message"] = message
    return {"waiting": w}


def _running(started_at: str | None = None) -> dict[str, Any]:
    return {"running": {"startedAt": started_at or _now()}}


def _container_port(container: Mapping[str, Any]) -> int | None:
    ports = container.get("ports") or []
    if ports and ports[0].get("containerPort"):
        return int(ports[0]["containerPort"])
    return None


def _port_from_env_or_args(env: Mapping[str, str], argv: Sequence[str]) -> int | None:
    if env.get("JUPYTER_PORT", "").isdigit():
        return int(env["JUPYTER_PORT"])
    for i, a in enumerate(argv):
        m = re.match(r"^--port=(\d+)$", a)
        if m:
            return int(m.group(1))
        if a == "--port" and i + 1 < len(argv) and argv[i + 1].isdigit():
            return int(argv[i + 1])
    url = env.get("JUPYTERHUB_SERVICE_URL", "")
    m = re.match(r"^\w+://[^/]*:(\d+)", url)
    return int(m.group(1)) if m else None


async def _port_open(ip: str, port: int | None) -> bool:
    if port is None:
        return True  # nothing to probe: running counts as ready, as without a readinessProbe
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 1.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _log_task_error(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not (isinstance(exc, OSError) and exc.errno == errno.ESRCH):
        log.error("kubelet task %s failed", task.get_name(), exc_info=exc)
