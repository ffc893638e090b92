"""The Kubernetes path in Chromium against real Fence: the chart's hub config, Gen3KubeSpawner, real API server and kubelet harness, real Fence + arborist + PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes_asyncio import client as k8s
from playwright.sync_api import Page, expect

from tests.support.browser import log_in_real_fence, open_notebook, run_in_notebook, start_flavor, stop_server
from tests.support.chart_install import chart_configs, chart_engine_config, hub_kubeconfig, install_chart, users_namespace
from tests.support.charthub import ChartHub
from tests.support.kube_fixtures import *  # noqa: F403
from tests.support.kubebed import KubeBed
from tests.support.realfence import FenceBed

pytestmark = [pytest.mark.e2e, pytest.mark.k8s]


def read_secret(bed: KubeBed, namespace: str, name: str) -> dict[str, str]:
    async def read() -> dict[str, str]:
        async with bed.admin_client() as api:
            data = (await k8s.CoreV1Api(api).read_namespaced_secret(name, namespace)).data
            return {k: base64.b64decode(v).decode() for k, v in data.items()}

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result(60)


@pytest.fixture
def chart_hub(kube_bed: KubeBed, real_fence: FenceBed, kubelet_thread_factory: Any, tmp_path: Path) -> Iterator[tuple[ChartHub, str]]:
    ns = f"e2e-{uuid.uuid4().hex[:6]}"
    kube_bed.create_namespace_sync(ns)
    # The port (hence the callback to register) is chosen first; the chart gets the client after.
    hub = ChartHub(tmp_path, None, tmp_path / "hub-kubeconfig", "", "")  # type: ignore[arg-type]
    base = "/workspace/"
    hub.base_url = base
    client = real_fence.register_hub(f"kube-{ns}", hub.url)
    hub.fence = client  # type: ignore[assignment]
    install_chart(kube_bed, ns, values={"commons": {"url": real_fence.url}, "auth": {"clientId": client.client_id, "clientSecret": client.client_secret}})
    hub.config_yaml, hub.flavors_yaml = chart_configs(kube_bed, ns)
    hub.engine_conf = chart_engine_config(kube_bed, ns)
    assert yaml.safe_load(hub.config_yaml)["hub"]["baseUrl"] == base
    hub.kubeconfig = hub_kubeconfig(kube_bed, ns, tmp_path / "hub-kubeconfig")
    # Users' pods and key Secrets live in the chart's users' namespace.
    users = users_namespace(ns)
    kubelet_thread_factory(users)
    hub.start()
    try:
        yield hub, users
    finally:
        hub.stop()


def test_kubernetes_path_against_real_fence(page: Page, chart_hub: tuple[ChartHub, str], kube_bed: KubeBed, real_fence: FenceBed) -> None:
    hub, ns = chart_hub
    log_in_real_fence(page, hub, real_fence, "alice")
    expect(page.locator(".gen3-flavors")).to_be_visible()
    start_flavor(page, hub, "python-small")
    open_notebook(page)
    out = run_in_notebook(
        page,
        "import os, requests\nfrom gen3.auth import Gen3Auth\nauth = Gen3Auth()\n"
        "me = requests.get(os.environ['GEN3_ENDPOINT'] + '/user/user', auth=auth, timeout=30).json()\n"
        "print('USER', me['username'], '/workspace' in me['authz'])\n",
    )
    assert "USER alice True" in out, out
    state = hub.user_model("alice")["servers"][""]["state"]
    secret_names = [n for n in _secret_names(kube_bed, ns) if "alice" in n]
    assert secret_names, "the key lives in a per-user Secret"
    key = json.loads(read_secret(kube_bed, ns, secret_names[0])["credentials.json"])
    assert key["key_id"] == state["gen3_api_key_id"]
    assert not real_fence.blacklisted(key["key_id"])

    stop_server(page, hub, "alice")
    assert real_fence.blacklisted(key["key_id"])
    r = requests.post(f"{real_fence.fence_url}/credentials/api/access_token", json={"api_key": key["api_key"]}, timeout=30)
    assert r.status_code == 401
    assert secret_names[0] not in _secret_names(kube_bed, ns)


def _secret_names(bed: KubeBed, namespace: str) -> list[str]:
    async def names() -> list[str]:
        async with bed.admin_client() as api:
            return [s.metadata.name for s in (await k8s.CoreV1Api(api).list_namespaced_secret(namespace)).items]

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, names()).result(60)
