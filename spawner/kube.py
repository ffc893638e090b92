"""Gen3KubeSpawner: KubeSpawner with Gen3 flavors, a per-user drive, egress proxy env and a mounted Fence API key."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
from kubernetes_asyncio.client import (
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1Secret,
    V1SecretVolumeSource,
    V1Volume,
    V1VolumeMount,
)
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from traitlets import Float, Integer, Unicode, default

from .common import FlavorError, Gen3SpawnerMixin
from .flavors import parse_quantity

DRIVE_VOLUME = "gen3-drive"
# Waiting reasons after which a pod will not start without someone changing the flavor.
IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
CREDENTIALS_VOLUME = "gen3-credentials"


class Gen3KubeSpawner(Gen3SpawnerMixin, KubeSpawner):
    """Spawns a user's chosen flavor as a pod next to the commons."""

    drive_size = Unicode(
        "10Gi",
        config=True,
        help="Size of each user's persistent drive (their PVC), e.g. 10Gi.",
    )
    drive_storage_class = Unicode(
        None,
        allow_none=True,
        config=True,
        help="StorageClass of the users' drives; None: the cluster's default StorageClass.",
    )
    drive_mount_path = Unicode(
        "/home/jovyan",
        config=True,
        help="Where the drive is mounted in the user's server; by default it is their home folder.",
    )
    fatal_error_poll_seconds = Float(
        1.0,
        config=True,
        help="How often a starting pod is checked for errors it cannot recover from (image pull errors, crash loops).",
    )
    ready_poll_seconds = Float(
        0.1,
        config=True,
        help="""How often a starting pod is looked up in the pod reflector (no API call) to see whether it
        is ready, so the spawn ends as soon as it is, not at KubeSpawner's next back-off check
        (0.2 s doubling up to 5 s, which can add seconds to every spawn).""",
    )
    crash_restarts_before_failing = Integer(
        2,
        config=True,
        help="A starting server that has crashed and been restarted this many times fails the spawn with a readable message.",
    )
    credentials_secret_template = Unicode(
        "gen3-credentials-{user_server}",
        config=True,
        help="""Name of the Secret holding a server's Fence API key; {user_server} is the escaped
        username plus the server name, so each named server has its own key.""",
    )

    # --- KubeSpawner defaults that make the Gen3 pod ----------------------------------

    @default("pvc_name_template")
    def _pvc_name_template_default(self) -> str:
        # One drive per user, shared by every flavor and every named server.
        return "claim-{username}"

    @default("storage_pvc_ensure")
    def _storage_pvc_ensure_default(self) -> bool:
        return True

    @default("delete_pvc")
    def _delete_pvc_default(self) -> bool:
        # Users' files outlive their servers and their hub accounts.
        return False

    @default("storage_capacity")
    def _storage_capacity_default(self) -> str:
        return self.drive_size

    @default("storage_class")
    def _storage_class_default(self) -> str | None:
        return self.drive_storage_class

    @default("uid")
    def _uid_default(self) -> int:
        return 1000

    @default("gid")
    def _gid_default(self) -> int:
        return 100

    @default("fs_gid")
    def _fs_gid_default(self) -> int:
        return 100

    @default("allow_privilege_escalation")
    def _ape_default(self) -> bool:
        return False

    @default("container_security_context")
    def _csc_default(self) -> dict[str, Any]:
        return {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    @default("pod_security_context")
    def _psc_default(self) -> dict[str, Any]:
        return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}

    @default("automount_service_account_token")
    def _automount_default(self) -> bool:
        return False

    @default("extra_pod_config")
    def _extra_pod_config_default(self) -> dict[str, Any]:
        # Service links would put every Service of the namespace into the user's env.
        return {"enableServiceLinks": False}

    @default("working_dir")
    def _working_dir_default(self) -> str:
        return self.drive_mount_path

    # --- flavor -------------------------------------------------------------------------

    def apply_flavor(self, flavor: Any) -> None:
        """Turn a flavor into KubeSpawner traits."""
        self.flavor = flavor
        self.image = flavor.image
        self.cpu_guarantee = flavor.cpu_guarantee
        self.cpu_limit = flavor.cpu_limit
        # JupyterHub's byte traits only know K/M/G/T; exact byte counts keep Ki/Gi and K/G right.
        self.mem_guarantee = int(parse_quantity(flavor.mem_guarantee, "memory"))
        self.mem_limit = int(parse_quantity(flavor.mem_limit, "memory"))
        limits = {k: v for k, v in self.extra_resource_limits.items() if k != flavor.gpu_resource}
        guarantees = {k: v for k, v in self.extra_resource_guarantees.items() if k != flavor.gpu_resource}
        if flavor.gpu:
            limits[flavor.gpu_resource] = str(flavor.gpu)
            guarantees[flavor.gpu_resource] = str(flavor.gpu)
        self.extra_resource_limits = limits
        self.extra_resource_guarantees = guarantees
        self.node_selector = dict(flavor.node_selector)
        self.tolerations = [dict(t) for t in flavor.tolerations]

    # The flavor _start() checked; KubeSpawner's own load_user_options() call then reuses it.
    _started_flavor: Any = None
    # The Fence key being minted and stored for the spawn in progress; the pod waits for it.
    _key_task: "asyncio.Future[None] | None" = None
    # Whether this start's create request made the pod: only then is a pod in the reflector ours.
    _pod_created = False

    async def load_user_options(self) -> None:
        # Checked here, before KubeSpawner creates anything, so a forged request creates no object.
        flavor = self._started_flavor or await self.choose_flavor(self.user_options)
        self.apply_flavor(flavor)

    # --- env, pod, secret ----------------------------------------------------------------

    @property
    def credentials_secret_name(self) -> str:
        return self._expand_user_properties(self.credentials_secret_template)

    def get_credentials_secret_manifest(self, key: dict[str, str]) -> V1Secret:
        return V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=V1ObjectMeta(
                name=self.credentials_secret_name,
                labels=self._build_common_labels({"component": "gen3-credentials"}),
                annotations={"hub.jupyter.org/username": self.user.name, "gen3username": self.user.name},
            ),
            type="Opaque",
            data={"credentials.json": base64.b64encode(self.credentials_json(key).encode()).decode()},
        )

    async def get_pod_manifest(self) -> Any:
        if self._key_task is not None:
            # No pod without its key: a user Fence refuses gets a clear error and no pod, and
            # the kubelet never meets a missing Secret (it would retry the mount after 0.5 s+).
            await self._key_task
        pod = await super().get_pod_manifest()
        pod.metadata.annotations = {**(pod.metadata.annotations or {}), "gen3username": self.user.name}
        pod.metadata.annotations.setdefault("hub.jupyter.org/username", self.user.name)
        if self.flavor:
            pod.metadata.labels = {**(pod.metadata.labels or {}), "gen3.org/flavor": self.flavor.name}
        spec = pod.spec
        container = spec.containers[0]
        spec.volumes = list(spec.volumes or [])
        container.volume_mounts = list(container.volume_mounts or [])
        spec.volumes.append(
            V1Volume(name=DRIVE_VOLUME, persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(claim_name=self.pvc_name))
        )
        container.volume_mounts.append(V1VolumeMount(name=DRIVE_VOLUME, mount_path=self.drive_mount_path))
        if self._api_key_id:
            spec.volumes.append(
                V1Volume(
                    name=CREDENTIALS_VOLUME,
                    secret=V1SecretVolumeSource(secret_name=self.credentials_secret_name, default_mode=0o440),
                )
            )
            container.volume_mounts.append(
                V1VolumeMount(name=CREDENTIALS_VOLUME, mount_path=self.credentials_mount_path, read_only=True)
            )
        return pod

    # --- an API server that restarts (upgrade, failover) mid-spawn: retry, then go on -----------

    async def _retry_unreachable(self, what: str, call: Any) -> Any:
        """Run `call()`, retrying while the API server cannot be reached, for up to k8s_api_request_retry_timeout."""
        deadline = asyncio.get_running_loop().time() + self.k8s_api_request_retry_timeout
        delay = 0.2
        while True:
            try:
                return await call()
            except (aiohttp.ClientConnectionError, ConnectionError, asyncio.TimeoutError) as e:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                self.log.warning("Kubernetes API unreachable while %s for %s (%s); retrying", what, self.user.name, type(e).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _make_create_pvc_request(self, pvc: Any, request_timeout: Any) -> Any:
        try:
            return await super()._make_create_pvc_request(pvc, request_timeout)
        except (aiohttp.ClientConnectionError, ConnectionError) as e:
            self.log.warning("Kubernetes API unreachable while creating PVC %s (%s); retrying", self.pvc_name, type(e).__name__)
            return False

    async def _write_credentials_secret(self, key: dict[str, str]) -> None:
        await self._retry_unreachable("writing the credentials Secret", lambda: self._write_credentials_secret_once(key))

    async def _write_credentials_secret_once(self, key: dict[str, str]) -> None:
        manifest = self.get_credentials_secret_manifest(key)
        try:
            await self.api.create_namespaced_secret(self.namespace, manifest, _request_timeout=self.k8s_api_request_timeout)
        except ApiException as e:
            if e.status != 409:
                raise
            # Left over from a stop that could not clean up (a hub that died mid-spawn or
            # mid-stop): its key is revoked with itself, then the Secret gets the new key.
            await self._revoke_leftover_key(key["key_id"])
            await self.api.replace_namespaced_secret(
                manifest.metadata.name, self.namespace, manifest, _request_timeout=self.k8s_api_request_timeout
            )

    async def _revoke_leftover_key(self, new_key_id: str) -> None:
        """Revoke the key in a Secret a dead hub left behind (its id is in no spawner state)."""
        try:
            secret = await self.api.read_namespaced_secret(
                self.credentials_secret_name, self.namespace, _request_timeout=self.k8s_api_request_timeout
            )
            key_id = json.loads(base64.b64decode(secret.data["credentials.json"])).get("key_id")
        except Exception:
            return  # gone or unreadable: then there is no key id to revoke
        if not isinstance(key_id, str) or key_id == new_key_id:
            return
        try:
            await self._delete_key(key_id)
            self.log.info("Revoked the left-over Fence API key %s of %s", key_id, self.user.name)
        except Exception as e:
            detail = f"HTTP {e.code}" if hasattr(e, "code") else type(e).__name__
            self.log.warning("Could not revoke the left-over Fence API key %s of %s (%s); will retry at the next stop.", key_id, self.user.name, detail)
            self._pending_revocations = (*self._pending_revocations, key_id)

    async def _delete_credentials_secret(self) -> None:
        try:
            await self._retry_unreachable(
                "deleting the credentials Secret",
                lambda: self.api.delete_namespaced_secret(
                    self.credentials_secret_name, self.namespace, _request_timeout=self.k8s_api_request_timeout
                ),
            )
        except ApiException as e:
            if e.status != 404:
                self.log.warning("Could not delete Secret %s: HTTP %s", self.credentials_secret_name, e.status)
        except (aiohttp.ClientConnectionError, ConnectionError, asyncio.TimeoutError) as e:
            # Never blocks the stop; the next start finds it, revokes its key and replaces it.
            self.log.warning("Could not delete Secret %s (%s); the next start replaces it", self.credentials_secret_name, type(e).__name__)

    # --- lifecycle ---------------------------------------------------------------------

    async def _make_create_pod_request(self, pod: Any, request_timeout: float) -> bool:
        try:
            created = bool(await super()._make_create_pod_request(pod, request_timeout))
        except (aiohttp.ClientConnectionError, ConnectionError) as e:
            # False makes KubeSpawner's exponential backoff try again (an API server restarting):
            # a pod that did get created shows up as a 409, which KubeSpawner resolves itself.
            self.log.warning("Kubernetes API unreachable while creating pod %s (%s); retrying", self.pod_name, type(e).__name__)
            return False
        self._pod_created = self._pod_created or created
        return created

    async def _ready_pod_url(self) -> str:
        """The URL of this start's pod once the reflector shows it running and ready."""
        key = f"{self.namespace}/{self.pod_name}"
        while True:
            await asyncio.sleep(self.ready_poll_seconds)
            reflector = self.pod_reflector
            pod = reflector.pods.get(key) if reflector and self._pod_created else None
            if pod and self.is_pod_running(pod):
                # What KubeSpawner's start does once it sees the pod running.
                self.pod_id = pod["metadata"]["uid"]
                return str(self._get_pod_url(pod))

    async def _store_key(self) -> None:
        key = await self.mint_api_key()
        if key:
            await self._write_credentials_secret(key)

    async def _start(self) -> Any:
        async with self.spawn_scope():
            try:
                await self.load_user_options()
                self._started_flavor = self.flavor
                return await self._start_checked()
            finally:
                self._started_flavor = self._key_task = None

    async def _start_checked(self) -> Any:
        # The Fence key and its Secret need nothing from the PVC or the pod reflector: they go
        # alongside KubeSpawner's start, which is scheduled first so the PVC request leads.
        self._pod_created = False
        start = asyncio.ensure_future(super()._start())
        storing = self._key_task = asyncio.ensure_future(self._store_key())
        watchdog = asyncio.ensure_future(self._fatal_pod_error())
        waiting = {start, watchdog}
        # KubeSpawner creates a Service or runs a hook after the pod when these are on; only
        # without them is a running pod the end of its start.
        ready = None
        if not (self.internal_ssl or self.services_enabled or self.after_pod_created_hook):
            ready = asyncio.ensure_future(self._ready_pod_url())
            waiting.add(ready)
        try:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if start in done:
                return start.result()  # its pod manifest waited for the key's Secret
            if ready in done:
                start.cancel()  # it is only waiting for its next back-off check
                return ready.result()
            # KubeSpawner would wait out start_timeout on a pod that can never start.
            start.cancel()
            message = watchdog.result()
            self.log.error("Spawn of %s for %s failed: %s", self.pod_name, self.user.name, message)
            raise FlavorError(500, message, logged=True)
        except BaseException:
            # JupyterHub's start timeout cancels us, not the task we wait on: stop it too, or
            # it would go on to create a pod nobody tracks.
            if not start.done():
                start.cancel()
            # A key being minted is let finish, so it is revoked below instead of left behind.
            await asyncio.gather(storing, return_exceptions=True)
            await self._cleanup_credentials()
            raise
        finally:
            watchdog.cancel()
            if ready is not None:
                ready.cancel()

    async def _fatal_pod_error(self) -> str:
        """Wait until the pod shows it can never start (bad image, crash loop) and say why."""
        flavor = self.flavor.display_name if self.flavor else "this flavor"
        while True:
            await asyncio.sleep(self.fatal_error_poll_seconds)
            # The reflector appears once KubeSpawner starts watching; until then there is no pod.
            reflector = self.pod_reflector
            pod = reflector.pods.get(f"{self.namespace}/{self.pod_name}") if reflector else None
            if not pod:
                continue
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (status.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in IMAGE_ERRORS:
                    return (
                        f"The image of {flavor} ({status.get('image') or self.image}) could not be pulled: "
                        f"{waiting.get('reason')}: {waiting.get('message') or 'no details'}. "
                        "Ask the workspace administrators to check the flavor's image."
                    )
                terminated = (status.get("lastState") or {}).get("terminated") or (status.get("state") or {}).get("terminated")
                if terminated and (status.get("restartCount") or 0) >= self.crash_restarts_before_failing:
                    return (
                        f"Your {flavor} server keeps crashing on start (exit code {terminated.get('exitCode')}, "
                        f"{terminated.get('reason') or 'no reason given'}). Try another flavor, or ask the administrators."
                    )

    async def _cleanup_credentials(self) -> None:
        had_key = bool(self._api_key_id)
        await self.revoke_api_key()
        if had_key or self.issue_api_key:
            await self._delete_credentials_secret()
