"""The workspace in real Chromium: Fence login, the flavor page, JupyterLab, the Gen3 SDK inside, the drive, the 403 page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.support.browser import log_in, open_notebook, run_in_notebook, screenshot_path, start_flavor, stop_server
from tests.support.fence import FenceStandIn
from tests.support.hub import Hub

pytestmark = pytest.mark.e2e
BASE = "/lw-workspace/"
PORTAL = "https://portal.commons.test"
PROXY = "http://egress.commons.test:3128"


@pytest.fixture(scope="module")
def hub(fence: FenceStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(
        tmp_path_factory.mktemp("e2e"),
        fence=fence,
        extra_args=["--base-url", BASE, "--frame-ancestor", PORTAL, "--portal-url", PORTAL + "/", "--egress-proxy", PROXY, "--commons-name", "Test Data Commons"],
    ).start()
    yield h
    h.stop()


def test_login_flavors_jupyterlab_gen3_sdk_and_drive(page: Page, hub: Hub, fence: FenceStandIn) -> None:
    log_in(page, hub, "alice", shot="login")
    # Straight to the flavor page, with only what alice may launch.
    expect(page.locator(".gen3-flavors")).to_be_visible()
    expect(page.locator("h1")).to_have_text("Choose your workspace flavor")
    flavors = page.locator("label[data-flavor]").evaluate_all("els => els.map(e => e.dataset.flavor)")
    assert flavors == ["python-small", "r-large"], flavors
    expect(page.locator("#gen3-local-note")).to_contain_text("image, CPU, memory and GPU are not applied")
    page.screenshot(path=screenshot_path("flavor-page"), full_page=True)

    start_flavor(page, hub, "python-small")
    # The portal may embed the user's server too, not only the hub.
    csp = page.request.get(page.url).headers.get("content-security-policy", "")
    assert f"frame-ancestors 'self' {PORTAL}" in csp, csp
    open_notebook(page)
    out = run_in_notebook(
        page,
        "import os\nfrom gen3.auth import Gen3Auth\ntoken = Gen3Auth().get_access_token()\n"
        "print('ENDPOINT', os.environ['GEN3_ENDPOINT'])\nprint('PROXY', os.environ['HTTPS_PROXY'], os.environ['http_proxy'])\n"
        "print('FLAVOR', os.environ['WORKSPACE_FLAVOR'])\nprint('TOKEN', len(token.split('.')) == 3)\n"
        "open('from-the-browser.txt', 'w').write('kept across flavors')\n",
    )
    assert f"ENDPOINT {fence.url}" in out
    assert f"PROXY {PROXY} {PROXY}" in out
    assert "FLAVOR python-small" in out
    assert "TOKEN True" in out, out
    key_exchanges = fence.calls_to("/user/credentials/cdis/access_token")
    assert key_exchanges and key_exchanges[-1].status == 200 and key_exchanges[-1].username == "alice"
    news = page.get_by_role("button", name="No", exact=True)
    if news.is_visible():
        news.click()
    page.screenshot(path=screenshot_path("jupyterlab"))

    stop_server(page, hub, "alice")
    assert fence.active_keys("alice") == []
    start_flavor(page, hub, "r-large")
    expect(page.locator(".jp-LabShell")).to_be_visible(timeout=120_000)
    expect(page.locator(".jp-DirListing-content").get_by_text("from-the-browser.txt")).to_be_visible()
    open_notebook(page)
    out = run_in_notebook(page, "import os\nprint(open('from-the-browser.txt').read(), os.environ['WORKSPACE_FLAVOR'])\n")
    assert "kept across flavors r-large" in out
    stop_server(page, hub, "alice")


def test_user_without_permission_sees_the_403_page(page: Page, hub: Hub) -> None:
    log_in(page, hub, "nobody-ned")
    body = page.locator("body")
    expect(body).to_contain_text("403")
    expect(body).to_contain_text("method 'access' for service 'jupyterhub' on resource '/workspace'")
    assert "Traceback" not in page.content()
    page.screenshot(path=screenshot_path("forbidden"), full_page=True)


def test_behind_the_portal_base_url_csp_and_logout(hub: Hub, fence: FenceStandIn) -> None:
    r = requests.get(f"{hub.url}hub/login", timeout=30)
    assert r.url.startswith(f"http://127.0.0.1:{hub.port}{BASE}")
    assert r.headers["Content-Security-Policy"] == f"frame-ancestors 'self' {PORTAL}"
    s, r = hub.login("alice")
    assert r.status_code == 200
    # Logout: hub -> Fence logout -> back to the portal.
    r = s.get(f"{hub.url}hub/logout", allow_redirects=False, timeout=30)
    fence_logout = r.headers["Location"]
    assert fence_logout.startswith(f"{fence.url}/user/logout?next=")
    # Fence redirects only to hosts it knows: a portal on another host must be in its
    # LOGIN_REDIRECT_WHITELIST (docs/authentication.md).
    assert s.get(fence_logout, allow_redirects=False, timeout=30).status_code == 400
    fence.login_redirect_whitelist = ["portal.commons.test"]
    r = s.get(fence_logout, allow_redirects=False, timeout=30)
    assert r.status_code == 302 and r.headers["Location"] == PORTAL + "/"
