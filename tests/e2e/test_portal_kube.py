"""The portal launcher API on the Kubernetes path: the chart's hub config, Gen3KubeSpawner, the real API server and the kubelet harness; statuses from the real pod, Errored on a bad image, and the portal's Workspace page in Chromium."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from playwright.sync_api import Browser, expect

from tests.e2e.portal import portal_context, portal_state, wait_portal
from tests.support.chart_install import chart_configs, chart_engine_config, hub_kubeconfig, install_chart
from tests.support.charthub import ChartHub
from tests.support.fence import FenceStandIn
from tests.support.hub import REPO
from tests.support.kube_fixtures import *  # noqa: F403
from tests.support.kubebed import KubeBed
from tests.support.revproxy import RevProxy

pytestmark = [pytest.mark.e2e, pytest.mark.k8s]
PREFIX = "/lw-workspace/"


@pytest.fixture
def commons_on_kube(kube_bed: KubeBed, fence: FenceStandIn, kubelet_thread_factory: Any, tmp_path: Path) -> Iterator[tuple[ChartHub, Any, RevProxy]]:
    for name in ("kim", "kip"):
        fence.add_user(name)
    ns = f"lw-{uuid.uuid4().hex[:6]}"
    kube_bed.create_namespace_sync(ns)
    install_chart(kube_bed, ns, values={"commons": {"url": fence.url}, "auth": {"clientId": fence.client_id, "clientSecret": fence.client_secret}})
    config, flavors = chart_configs(kube_bed, ns)
    assert yaml.safe_load(config)["portal"]["prefix"] == PREFIX
    # The notebook image installs spawner/singleuser/jupyter_server_config.py (frame
    # ancestors, idle shutdown); the harness runs this venv's server, so point it there.
    singleuser_config = str(REPO / "spawner" / "singleuser")
    # Users' pods live in the chart's users' namespace.
    kubelet = kubelet_thread_factory(yaml.safe_load(config)["spawner"]["namespace"], env_hook=lambda pod, env: env.__setitem__("JUPYTER_CONFIG_PATH", singleuser_config))
    kubeconfig = hub_kubeconfig(kube_bed, ns, tmp_path / "hub-kubeconfig")
    base = yaml.safe_load(config)["hub"]["baseUrl"]
    hub = ChartHub(tmp_path, fence, kubeconfig, config, flavors, base_url=base, engine_conf=chart_engine_config(kube_bed, ns)).start()
    # The commons' revproxy: Fence, the hub's base URL and the launcher prefix on one origin.
    rev = RevProxy({"/user/": fence.url, base: f"http://127.0.0.1:{hub.port}", PREFIX: f"http://127.0.0.1:{hub.port}"}, workspace_prefix="/").start()
    try:
        yield hub, kubelet, rev
    finally:
        rev.stop()
        hub.stop()


def test_portal_api_and_page_on_kubernetes(commons_on_kube: tuple[ChartHub, Any, RevProxy], fence: FenceStandIn, browser: Browser) -> None:
    hub, kubelet, rev = commons_on_kube
    api = f"{rev.url}{PREFIX}"
    s = requests.Session()
    s.headers["Authorization"] = f"bearer {fence.mint_access_token('kim')}"

    def status() -> dict[str, Any]:
        r = s.get(api + "status", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def wait(want: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.time() + timeout
        last: dict[str, Any] = {}
        while time.time() < deadline:
            last = status()
            if last["status"] == want:
                return last
            time.sleep(0.3)
        raise AssertionError(f"never {want}: {last}")

    assert [o["id"] for o in s.get(api + "options", timeout=30).json()] == ["python-small", "r-large"]
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def poll() -> None:
        p = requests.Session()
        p.headers.update(s.headers)
        while not stop.is_set():
            st = p.get(api + "status", timeout=30).json()
            if not seen or seen[-1]["status"] != st["status"] or st["conditions"] != seen[-1]["conditions"]:
                seen.append(st)
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        while not seen:
            time.sleep(0.05)
        assert s.post(api + "launch?id=python-small", timeout=60).status_code == 200
        running = wait("Running")
        assert running["workspaceType"] == "Kubernetes" and running["idleTimeLimit"] == 3600 * 1000 and running["lastActivityTime"] > 0
        # Once Running, the pod's own conditions and container states from the reflector.
        conditions = {c["type"]: c["status"] for c in running["conditions"]}
        assert conditions.get("Ready") == "True" and conditions.get("PodScheduled") == "True", running
        notebook = [cs for cs in running["containerStates"] if cs["name"] == "notebook"]
        assert notebook and notebook[0]["ready"] is True and "running" in notebook[0]["state"], running
        assert s.get(api + "proxy/", timeout=60).status_code == 200
        assert s.post(api + "terminate", timeout=60).status_code == 200
        wait("Not Found")
        deadline = time.time() + 10
        while seen[-1]["status"] != "Not Found" and time.time() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        poller.join(10)
    statuses = [st["status"] for i, st in enumerate(seen) if i == 0 or seen[i - 1]["status"] != st["status"]]
    assert statuses == ["Not Found", "Launching", "Running", "Terminating", "Not Found"], statuses
    # Launching showed the real pod's conditions, as the kubelet reported them.
    launching = [st for st in seen if st["status"] == "Launching"]
    types = {c["type"] for st in launching for c in st["conditions"]}
    assert {"PodScheduled"} <= types, launching
    assert any(cs["name"] == "notebook" for st in launching for cs in st["containerStates"]), launching
    assert fence.active_keys("kim") == []

    # A flavor whose image cannot be pulled: Errored, with the reason, and Cancel clears it.
    kubelet.harness.failures["jupyter-kim"] = "image_pull_error"
    try:
        assert s.post(api + "launch?id=python-small", timeout=60).status_code == 200
        errored = wait("Errored", timeout=120)
        assert "could not be pulled" in errored["message"], errored
    finally:
        kubelet.harness.failures.pop("jupyter-kim", None)
    assert s.post(api + "terminate", timeout=60).status_code == 200
    assert status()["status"] == "Not Found"
    assert fence.active_keys("kim") == []

    # The portal's Workspace page in Chromium, JupyterLab in its same-origin iframe.
    context = portal_context(browser, fence, rev, "kip")
    page = context.new_page()
    try:
        page.goto(f"{rev.url}/portal/workspace?poll=1000&idlepoll=1500")
        wait_portal(page, "Not Found", timeout=60)
        page.locator("#options button[data-id='python-small']").click()
        state = wait_portal(page, "Running", timeout=240)
        assert state["steps"], state
        expect(page.frame_locator("iframe.workspace").locator(".jp-LabShell")).to_be_visible(timeout=180_000)
        assert portal_state(page)["listenersAttached"] is True
        page.evaluate("terminateWorkspace()")
        wait_portal(page, "Not Found", timeout=180)
    finally:
        context.close()
    assert fence.active_keys("kip") == []
