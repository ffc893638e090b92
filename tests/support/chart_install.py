"""Install the gen3-workspace Helm chart into the real test API server and read back what it made.

Builds on :mod:`tests.support.kubebed` (the control plane) and :mod:`tests.helm.chart`
(the pinned helm binary with isolated HELM_* dirs). There is no controller-manager in the
bed, so nothing here waits for Deployments to become ready: ``helm install`` only has to
get every object accepted by the API server.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import subprocess
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client as k8s

from tests.helm.chart import CHART, VALUES_DIR, helm
from tests.support.kubebed import KubeBed

DEFAULT_RELEASE = "ws"
DEFAULT_VALUES = VALUES_DIR / "defaults.yaml"

__all__ = [
    "deep_merge",
    "fullname",
    "chart_engine_config",
    "generated_secret_values",
    "hub_kubeconfig",
    "hub_service_account",
    "install_chart",
    "users_namespace",
]


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's merge of values files: maps merge key by key, anything else (lists too) replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def fullname(release: str = DEFAULT_RELEASE) -> str:
    """The chart's ``gen3ws.fullname`` for a release (no name overrides)."""
    return f"{release}-gen3-workspace"


def hub_service_account(release: str = DEFAULT_RELEASE) -> str:
    """Name of the hub's ServiceAccount (templates/hub/rbac.yaml); the Role and RoleBinding share it."""
    return f"{fullname(release)}-hub"


def _hub_secret_name(release: str) -> str:
    return f"{fullname(release)}-hub"


def install_chart(
    bed: KubeBed,
    namespace: str,
    release: str = DEFAULT_RELEASE,
    values: dict[str, Any] | None = None,
    upgrade: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``helm install`` (or ``helm upgrade``) the chart into ``namespace`` of the bed.

    The values are tests/helm/values/defaults.yaml deep-merged with ``values``. No
    ``--wait``: with no controller-manager, Deployments never get pods. Raises
    AssertionError carrying helm's stderr when helm fails.
    """
    merged = deep_merge(yaml.safe_load(DEFAULT_VALUES.read_text(encoding="utf-8")) or {}, values or {})
    with tempfile.TemporaryDirectory(prefix="chart-values-") as tmp:
        # A values file, not --set: --set re-types strings such as "2Gi" or "true".
        values_file = Path(tmp) / "values.yaml"
        values_file.write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
        verb = "upgrade" if upgrade else "install"
        proc = helm(
            verb, release, str(CHART),
            "--namespace", namespace,
            "--kubeconfig", str(bed.kubeconfig),
            "-f", str(values_file),
        )
    if proc.returncode != 0:
        raise AssertionError(f"helm {verb} {release} into {namespace} failed (exit {proc.returncode}):\n{proc.stderr}")
    # The bed has no service-account controller: give the users' namespace the "default"
    # ServiceAccount a real cluster would, or no user's pod could be admitted there.
    bed.create_service_account_sync(users_namespace(namespace, merged))
    return proc


def users_namespace(namespace: str, values: Mapping[str, Any] | None = None) -> str:
    """The chart's users' namespace for a release in `namespace` with these values (gen3ws.userNamespace)."""
    return ((values or {}).get("spawner") or {}).get("namespace") or f"{namespace}-workspace-users"


def hub_kubeconfig(bed: KubeBed, namespace: str, path: Path, release: str = DEFAULT_RELEASE) -> Path:
    """Write a kubeconfig that authenticates as the chart's hub ServiceAccount; returns ``path``.

    The token comes from the TokenRequest API, like a projected token in the hub pod, so
    whatever uses this kubeconfig has exactly the chart's RBAC and nothing more.
    """
    token = bed.service_account_token_sync(namespace, hub_service_account(release))
    ca = base64.b64encode(Path(bed.ca_cert).read_bytes()).decode("ascii")
    name = f"{fullname(release)}-hub"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubebed", "cluster": {"server": bed.server, "certificate-authority-data": ca}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "kubebed", "user": name, "namespace": namespace}}],
        "current-context": name,
        "preferences": {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    # It holds a bearer token.
    path.chmod(0o600)
    return path


def generated_secret_values(bed: KubeBed, namespace: str, release: str = DEFAULT_RELEASE) -> dict[str, str]:
    """The decoded ``data`` of the chart's hub Secret, read with the admin identity."""
    # The bed's own synchronous admin request (what its *_sync helpers use): callers may
    # be sync tests or already inside an event loop, so no asyncio here.
    status, body = bed._request("GET", f"/api/v1/namespaces/{namespace}/secrets/{_hub_secret_name(release)}")
    if status != 200:
        raise AssertionError(f"reading Secret {namespace}/{_hub_secret_name(release)} gave HTTP {status}: {body[:300]!r}")
    data = json.loads(body).get("data") or {}
    return {k: base64.b64decode(v).decode("utf-8") for k, v in data.items()}


def read_configmap(bed: KubeBed, namespace: str, name: str) -> dict[str, str]:
    """The ``data`` of a ConfigMap, read with the admin identity through the Kubernetes client."""

    async def read() -> dict[str, str]:
        async with bed.admin_client() as api:
            return (await k8s.CoreV1Api(api).read_namespaced_config_map(name, namespace)).data

    # Playwright's sync API owns the calling thread's event loop; run the client in another thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result(60)


def chart_configs(bed: KubeBed, namespace: str, release: str = DEFAULT_RELEASE) -> tuple[str, str]:
    """The installed chart's hub config.yaml and flavors.yaml, as the hub pod would mount them."""
    config = read_configmap(bed, namespace, f"{fullname(release)}-hub-config")["config.yaml"]
    flavors = read_configmap(bed, namespace, f"{fullname(release)}-flavors")["flavors.yaml"]
    return config, flavors


def chart_engine_config(bed: KubeBed, namespace: str, release: str = DEFAULT_RELEASE) -> str:
    """The installed chart's engine nginx.conf (the proxy ConfigMap), as the proxy pods mount it."""
    return read_configmap(bed, namespace, f"{fullname(release)}-proxy")["nginx.conf"]
