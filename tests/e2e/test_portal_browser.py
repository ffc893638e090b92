"""The data portal's Workspace page in Chromium against the embedded hub: the portal's calls in the portal's order, JupyterLab in its same-origin iframe, and a cross-site POST that must not launch anything."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.portal import BASE, portal_context, portal_state, rev, wait_portal  # noqa: F401 - rev is a fixture
from tests.support.browser import screenshot_path
from tests.support.fence import FenceStandIn
from tests.support.hub import Hub
from tests.support.revproxy import RevProxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub(fence: FenceStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    fence.add_user("pat")
    h = Hub(tmp_path_factory.mktemp("portal"), fence=fence, extra_args=["--base-url", BASE, "--commons-name", "Test Data Commons"]).start()
    yield h
    h.stop()


def workspace_calls(calls: list[dict]) -> list[str]:
    """The call sequence with consecutive repeats (polling) folded."""
    out: list[str] = []
    for c in calls:
        name = f"{c['method']} {c['path'].split('?')[0]}"
        if not out or out[-1] != name:
            out.append(name)
    return out


def test_portal_workspace_page_launches_shows_and_terminates_jupyterlab(browser: Browser, hub: Hub, fence: FenceStandIn, rev: RevProxy) -> None:
    context = portal_context(browser, fence, rev, "pat")
    page = context.new_page()
    try:
        page.goto(f"{rev.url}/portal/workspace?poll=1000&idlepoll=1500")
        state = wait_portal(page, "Not Found", timeout=60)
        assert [o["id"] for o in state["options"]] == ["python-small", "r-large"]
        assert state["payModelShown"] is False
        page.locator("#options button[data-id='python-small']").click()
        state = wait_portal(page, "Running", timeout=180)
        assert "Launching" in state["statuses"] and state["statuses"][-1] == "Running"
        # The four launch steps came from real conditions: at least one step before the proxy.
        assert state["steps"], state

        frame = page.frame_locator("iframe.workspace")
        expect(frame.locator(".jp-LabShell")).to_be_visible(timeout=180_000)
        state = portal_state(page)
        assert state["listenersAttached"] is True, "the iframe is not same-origin: the portal cannot see activity"
        page.locator("iframe.workspace").click(position={"x": 400, "y": 300})
        deadline = time.time() + 10
        while portal_state(page)["activity"] == 0 and time.time() < deadline:
            time.sleep(0.2)
        assert portal_state(page)["activity"] > 0
        # The idle monitor's fields.
        deadline = time.time() + 30
        while portal_state(page)["idle"] is None and time.time() < deadline:
            time.sleep(0.3)
        idle = portal_state(page)["idle"]
        assert idle and idle["idleTimeLimit"] == 3600 * 1000 and idle["lastActivityTime"] > 0
        assert idle["remaining"] > 50 * 60 * 1000 and not idle["banner"] and not idle["popup"]
        assert fence.active_keys("pat")
        # JupyterLab starts without asking about "Jupyter news".
        page.wait_for_timeout(3000)
        expect(frame.get_by_text(re.compile("Jupyter news"))).to_have_count(0)
        page.screenshot(path=screenshot_path("portal-workspace"))
        # The hub's home page: the commons' brand, not JupyterHub's, and the running flavor.
        home = context.new_page()
        home.goto(f"{rev.url}{BASE}hub/home")
        expect(home.locator("#gen3-brand")).to_contain_text("Test Data Commons")
        expect(home.locator("#jupyterhub-logo")).to_have_count(0)
        expect(home.locator("#gen3-running-flavor")).to_contain_text("Python — small")
        home.screenshot(path=screenshot_path("hub-home"))
        home.close()

        page.evaluate("terminateWorkspace()")
        state = wait_portal(page, "Not Found", timeout=120)
        calls = workspace_calls(state["calls"])
        # The Workspace page's order: options -> pay models -> status -> launch -> status
        # polling -> proxy/ -> idle status -> terminate -> status until Not Found.
        assert calls[:5] == ["GET options", "GET allpaymodels", "GET status", "POST launch", "GET status"], calls
        i_proxy = calls.index("GET proxy/")
        i_terminate = calls.index("POST terminate")
        assert i_proxy < i_terminate and calls[i_proxy + 1] == "GET status" and calls[-1] == "GET status", calls
        statuses = [s for i, s in enumerate(state["statuses"]) if i == 0 or state["statuses"][i - 1] != s]
        assert statuses == ["Not Found", "Launching", "Running", "Terminating", "Not Found"], statuses
        assert all(c["status"] == 200 for c in state["calls"] if c["path"] not in ("allpaymodels",)), state["calls"]
        assert fence.active_keys("pat") == []
    finally:
        context.close()


def test_cross_site_post_launches_nothing(browser: Browser, hub: Hub, fence: FenceStandIn, rev: RevProxy) -> None:
    context = portal_context(browser, fence, rev, "pat")
    page = context.new_page()
    try:
        # Logged in to the portal and the workspace (proxy/ sets the workspace session).
        page.goto(f"{rev.url}{BASE}status")
        before = len(rev.requests)
        attacker_origin = rev.url.replace("127.0.0.1", "localhost")
        rev.pages["/attack"] = f"""<!doctype html><title>attack</title>
<form id=f method=post action="{rev.url}{BASE}launch?id=python-small"></form>
<script>
fetch("{rev.url}{BASE}launch?id=python-small", {{method: "POST", credentials: "include", mode: "no-cors"}})
  .finally(() => document.getElementById("f").submit());
</script>"""
        page.goto(f"{attacker_origin}/attack")
        page.wait_for_url(re.compile(re.escape(BASE) + "launch"), timeout=30_000)
        body = page.locator("body").inner_text()
        assert "Success" not in body
        time.sleep(2)
        assert hub.user_model("pat")["servers"] == {}
        posts = [r for r in rev.requests[before:] if r[0] == "POST" and r[1].endswith("/launch")]
        assert posts and all(code in (401, 403) for _, _, code in posts), posts
    finally:
        context.close()


def test_logout_inside_the_portal_frame_leaves_the_frame(browser: Browser, hub: Hub, fence: FenceStandIn, rev: RevProxy) -> None:
    context = portal_context(browser, fence, rev, "pat")
    page = context.new_page()
    try:
        page.goto(f"{rev.url}{BASE}status")
        rev.pages["/portal/frame"] = f'<!doctype html><title>portal</title><iframe class="workspace" src="{BASE}hub/logout"></iframe>'
        page.goto(f"{rev.url}/portal/frame")
        # The whole window went through Fence's logout, to an address Fence allows: the commons.
        page.wait_for_url(f"{fence.url}/", timeout=30_000)
        logouts = fence.calls_to("/user/logout")
        assert logouts and logouts[-1].status == 302
    finally:
        context.close()


def test_forbidden_page_is_a_readable_paragraph(browser: Browser, hub: Hub) -> None:
    from tests.support.browser import log_in

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        log_in(page, hub, "nobody-ned")
        title = page.locator("#gen3-error-title")
        expect(title).to_contain_text("403")
        assert len(title.inner_text()) < 60
        expect(page.locator("#gen3-error-message")).to_contain_text("method 'access' for service 'jupyterhub' on resource '/workspace'")
        expect(page.locator("#gen3-brand")).to_contain_text("Test Data Commons")
        page.screenshot(path=screenshot_path("forbidden"), full_page=True)
    finally:
        context.close()
