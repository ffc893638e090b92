"""Origin isolation in Chromium (issues 15, 18): a user's server serves script at paths she controls, and it never runs in another user's browser, neither by link nor inside the portal's iframe; through the proxy engine, embedded and on the Kubernetes test bed.

Mallory's server is hostile (tests/support/evil_server.py answers every path with a page whose
script reads cookies, calls the hub API, Fence and the launcher as whoever opened it, tries Bob's
server, and reports to a collector). Mallory opening her own page proves the script runs; Bob
and a Fence admin opening the same addresses must produce no report at all. Every case runs
twice: `gen3-workspace up` (nginx started by the hub) and the chart installed on the real
API server, its engine ConfigMap run by the real nginx, users' servers as pods.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import Browser, expect

from tests.e2e.portal import BASE, Collector, portal_context, rev, wait_portal  # noqa: F401 - rev is a fixture
import yaml

from tests.support.browser import screenshot_path
from tests.support.chart_install import chart_configs, chart_engine_config, hub_kubeconfig, install_chart
from tests.support.charthub import ChartHub
from tests.support.fence import FenceStandIn
from tests.support.hub import REPO, Hub
from tests.support.kube_fixtures import kube_bed  # noqa: F401 - a fixture
from tests.support.kubelet import KubeletThread
from tests.support.revproxy import RevProxy

pytestmark = pytest.mark.e2e

HOSTILE = """
import sys
def _hostile_server(spawner):
    # Mallory controls her server completely: here it is a page server, not JupyterLab.
    if spawner.user.name == "mallory":
        spawner.cmd = [sys.executable, {evil!r}]
        spawner.args = []
        spawner.environment = dict(spawner.environment, GEN3_TEST_COLLECTOR={collector!r}, GEN3_TEST_BASE={base!r}, GEN3_TEST_VICTIM="bob")
c.Spawner.pre_spawn_hook = _hostile_server
"""


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.stop()


@pytest.fixture(scope="module", params=["embedded", pytest.param("kube", marks=pytest.mark.k8s)])
def hub(request: pytest.FixtureRequest, fence: FenceStandIn, collector: Collector, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    for name in ("mallory", "bob"):
        fence.add_user(name)
    config = HOSTILE.format(evil=str(REPO / "tests" / "support" / "evil_server.py"), collector=collector.url, base=BASE)
    tmp = tmp_path_factory.mktemp(f"isolation-{request.param}")
    if request.param == "embedded":
        h = Hub(tmp, fence=fence, extra_args=["--base-url", BASE], extra_config=config).start()
        yield h
        h.stop()
        return
    bed = request.getfixturevalue("kube_bed")
    ns = f"iso-{uuid.uuid4().hex[:6]}"
    bed.create_namespace_sync(ns)
    # One path for the hub and the launcher, as the operator guide suggests.
    install_chart(bed, ns, values={"commons": {"url": fence.url}, "auth": {"clientId": fence.client_id, "clientSecret": fence.client_secret}, "hub": {"baseUrl": BASE}})
    chart_config, flavors = chart_configs(bed, ns)
    # The notebook image installs spawner/singleuser/jupyter_server_config.py (frame ancestors);
    # the harness runs this venv's server, so point it there.
    singleuser = str(REPO / "spawner" / "singleuser")
    kubelet = KubeletThread(
        bed.kubeconfig, yaml.safe_load(chart_config)["spawner"]["namespace"], state_dir=tmp / "kubelet",
        env_hook=lambda pod, env: env.__setitem__("JUPYTER_CONFIG_PATH", singleuser),
    ).start()
    kubeconfig = hub_kubeconfig(bed, ns, tmp / "hub-kubeconfig")
    h = ChartHub(tmp, fence, kubeconfig, chart_config, flavors, base_url=BASE, extra_config=config, engine_conf=chart_engine_config(bed, ns)).start()
    try:
        yield h
    finally:
        h.stop()
        kubelet.stop()


@pytest.fixture(scope="module")
def servers(hub: Hub, fence: FenceStandIn, rev: RevProxy) -> Iterator[None]:
    """Mallory's hostile server and Bob's JupyterLab, both launched through the portal API."""
    sessions = {}
    for user, flavor in (("mallory", "python-small"), ("bob", "python-small")):
        s = requests.Session()
        s.headers["Authorization"] = f"bearer {fence.mint_access_token(user)}"
        assert s.post(f"{rev.url}{BASE}launch?id={flavor}", timeout=60).status_code == 200
        sessions[user] = s
    for user in sessions:
        hub.wait_for_server(user)
    yield
    for s in sessions.values():
        s.post(f"{rev.url}{BASE}terminate", timeout=60)


def wait_reports(collector: Collector, count: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(collector.reports) >= count:
            return True
        time.sleep(0.2)
    return False


ADDRESSES = [
    f"{BASE}user/mallory/evil",
    f"{BASE}user/mallory/",
    f"{BASE}user/mallory",
    f"{BASE}user/mallory/lab/tree/evil.html",
    f"{BASE}hub/user/mallory/evil",
    f"{BASE}user/MALLORY/evil",
    f"{BASE}user/mall%6Fry/evil",
    f"{BASE}user/bob/../mallory/evil",
]


def test_mallorys_page_runs_script_for_mallory_only(browser: Browser, hub: Hub, fence: FenceStandIn, rev: RevProxy, collector: Collector, servers: None) -> None:
    # Positive control: the page and its script are real, for the one person who owns them.
    before = len(collector.reports)
    mallory = portal_context(browser, fence, rev, "mallory")
    page = mallory.new_page()
    try:
        page.goto(f"{rev.url}{BASE}user/mallory/evil")
        expect(page.locator("#evil")).to_be_visible()
        assert wait_reports(collector, before + 1, 20), "the hostile page's script did not run even for its owner"
    finally:
        mallory.close()
    own = collector.reports[-1]
    assert own["href"].endswith(f"{BASE}user/mallory/evil") and "hubUser" in own and "fenceUser" in own, own
    # Even for its owner the script cannot reach Bob's server.
    assert own["victimServer"].get("status") != 200, own

    seen = len(collector.reports)
    for user in ("bob", "admin-ada"):
        context = portal_context(browser, fence, rev, user)
        page = context.new_page()
        try:
            # Bob is fully logged in: portal cookie, the workspace session, his JupyterLab.
            page.goto(f"{rev.url}{BASE}proxy/")
            if user == "bob":
                expect(page.locator(".jp-LabShell")).to_be_visible(timeout=120_000)
            cookies = {c["name"] for c in context.cookies()}
            assert {"access_token", "gen3ws-session", "jupyterhub-hub-login"} <= cookies, cookies
            for address in ADDRESSES:
                response = page.goto(f"{rev.url}{address}")
                assert page.locator("#evil").count() == 0, (user, address)
                assert page.title() != "evil-ran", (user, address)
                assert response is None or response.status in (200, 302, 403, 404), (user, address, response.status)
                if address == ADDRESSES[0]:
                    expect(page.locator("#gen3-error-message")).to_contain_text("belongs to another user's workspace")
                    page.screenshot(path=screenshot_path(f"isolation-{user}"))
        finally:
            context.close()
    assert not wait_reports(collector, seen + 1, 5), f"the hostile script ran in another user's browser: {collector.reports[seen:]}"


def test_the_portal_iframe_never_shows_another_users_server(browser: Browser, hub: Hub, fence: FenceStandIn, rev: RevProxy, collector: Collector, servers: None) -> None:
    seen = len(collector.reports)
    context = portal_context(browser, fence, rev, "bob")
    page = context.new_page()
    try:
        page.goto(f"{rev.url}/portal/workspace?poll=500")
        wait_portal(page, "Running", timeout=60)
        frame = page.frame_locator("iframe.workspace")
        expect(frame.locator(".jp-LabShell")).to_be_visible(timeout=120_000)
        # A link Mallory could send Bob: the portal's own frame path is always the caller's server.
        for src in (f"{BASE}proxy/evil", f"{BASE}proxy/", f"{BASE}user/mallory/evil", f"{BASE}proxy/../user/mallory/evil"):
            page.evaluate("src => { const f = document.querySelector('iframe.workspace'); f.src = src; }", src)
            page.wait_for_timeout(1500)
            assert frame.locator("#evil").count() == 0, src
        assert page.evaluate("() => window.__portal.listenersAttached") is True
    finally:
        context.close()
    assert not wait_reports(collector, seen + 1, 5), f"the hostile script ran in Bob's portal: {collector.reports[seen:]}"


def test_websocket_to_another_users_server_is_refused(hub: Hub, fence: FenceStandIn, rev: RevProxy, servers: None) -> None:
    import asyncio

    import aiohttp

    async def connect(user: str) -> int:
        headers = {"Authorization": f"bearer {fence.mint_access_token(user)}", "Origin": rev.url}
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(f"{rev.url.replace('http', 'ws')}{BASE}user/mallory/api/events/subscribe", headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    # Playwright's sync API owns this thread's event loop; the client runs in its own thread.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, connect("bob")).result(60) == 403


def test_gate_answers_do_not_leak_the_other_users_name_of_server(hub: Hub, fence: FenceStandIn, rev: RevProxy, servers: None) -> None:
    r = requests.get(f"{rev.url}{BASE}user/mallory/evil", headers={"Authorization": f"bearer {fence.mint_access_token('bob')}"}, allow_redirects=False, timeout=30)
    assert r.status_code == 403 and "innocent" not in r.text
    # Anonymous: sent to log in, never forwarded.
    r = requests.get(f"{rev.url}{BASE}user/mallory/evil", allow_redirects=False, timeout=30)
    assert r.status_code == 302 and "/hub/gen3-session" in r.headers["Location"]
    assert "innocent" not in requests.post(f"{rev.url}{BASE}user/mallory/evil", timeout=30).text

