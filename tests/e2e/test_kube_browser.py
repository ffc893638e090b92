"""The full Kubernetes path in Chromium: the chart's hub config, Fence stand-in, Gen3KubeSpawner, real API server, kubelet harness."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Page, expect

from tests.support.browser import log_in, open_notebook, run_in_notebook, screenshot_path, start_flavor, stop_server
from tests.support.chart_install import chart_configs, chart_engine_config, hub_kubeconfig, install_chart
from tests.support.charthub import ChartHub
from tests.support.fence import FenceStandIn
from tests.support.kube_fixtures import *  # noqa: F403
from tests.support.kubebed import KubeBed

pytestmark = [pytest.mark.e2e, pytest.mark.k8s]


def root_mount_options(pid: int) -> set[str]:
    """The mount options of / as process `pid` sees it."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return set(fields[5].split(","))
    raise AssertionError(f"no root mount in /proc/{pid}/mountinfo")


@pytest.fixture
def chart_hub(kube_bed: KubeBed, fence: FenceStandIn, kubelet_thread_factory: Any, tmp_path: Path) -> Iterator[tuple[ChartHub, Any]]:
    ns = f"e2e-{uuid.uuid4().hex[:6]}"
    kube_bed.create_namespace_sync(ns)
    install_chart(kube_bed, ns, values={"commons": {"url": fence.url}, "auth": {"clientId": fence.client_id, "clientSecret": fence.client_secret}})
    config, flavors = chart_configs(kube_bed, ns)
    # Users' pods live in the chart's users' namespace (Pod Security "restricted"); the harness
    # runs their command as a local process, so the checks are the API server's admission only.
    kubelet = kubelet_thread_factory(yaml.safe_load(config)["spawner"]["namespace"])
    kubeconfig = hub_kubeconfig(kube_bed, ns, tmp_path / "hub-kubeconfig")
    # The chart runs the hub and the proxy with read-only root file systems: so does this test.
    hub = ChartHub(tmp_path, fence, kubeconfig, config, flavors, base_url=yaml.safe_load(config)["hub"]["baseUrl"], read_only_root=True, engine_conf=chart_engine_config(kube_bed, ns)).start()
    try:
        yield hub, kubelet
    finally:
        hub.stop()


def test_jupyterlab_and_gen3_sdk_through_the_kubernetes_path(page: Page, chart_hub: tuple[ChartHub, Any], fence: FenceStandIn) -> None:
    hub, kubelet = chart_hub
    assert hub.proc is not None
    assert root_mount_options(hub.proc.pid) & {"ro"}, "the hub must run on a read-only root file system"
    log_in(page, hub, "alice")
    expect(page.locator(".gen3-flavors")).to_be_visible()
    # The Kubernetes spawner applies the image: no local-mode note here.
    expect(page.locator("#gen3-local-note")).to_have_count(0)
    start_flavor(page, hub, "python-small")
    open_notebook(page)
    out = run_in_notebook(
        page,
        "import os\nfrom gen3.auth import Gen3Auth\ntoken = Gen3Auth().get_access_token()\n"
        "print('KEYFILE', os.environ['GEN3_API_KEY'])\nprint('FLAVOR', os.environ['WORKSPACE_FLAVOR'])\n"
        "print('PROXY', os.environ['HTTPS_PROXY'])\nprint('TOKEN', len(token.split('.')) == 3)\n",
    )
    assert "TOKEN True" in out, out
    assert "FLAVOR python-small" in out
    assert ".svc.cluster.local:3128" in out, "the proxy env points at the chart's egress proxy Service"
    assert fence.calls_to("/user/credentials/cdis/access_token")[-1].username == "alice"
    page.screenshot(path=screenshot_path("jupyterlab-kubernetes"))
    stop_server(page, hub, "alice")
    assert fence.active_keys("alice") == []
