"""Every page a researcher meets, in real Chromium: the path from login to JupyterLab and back, and the error pages, each in the commons' name with who is logged in and a working Logout.

`GEN3WS_DOCS_SCREENSHOTS=1` makes this test rewrite the screenshots in docs/img that the
README and the user guide show.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import docs_screenshot, log_in, open_notebook, run_in_notebook, start_flavor
from tests.support.fence import FenceStandIn
from tests.support.hub import Hub

pytestmark = pytest.mark.e2e
COMMONS = "Test Data Commons"
WORKSPACE = f"{COMMONS} Workspace"
# What no page may show a researcher: JupyterHub's stock words and its internals.
NEVER = ("Jupyter has lots of moons", "requires any of", "admin-ui", "scopes", "Invalid username or password", "Traceback")


@pytest.fixture(scope="module")
def hub(fence: FenceStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(tmp_path_factory.mktemp("pages"), fence=fence, extra_args=["--commons-name", COMMONS])
    # Logout goes through Fence and back to the hub's own login page (a host Fence allows: the client's).
    h.extra_args += ["--portal-url", h.url]
    h.start()
    yield h
    h.stop()


@pytest.fixture
def fence_allows_the_hub(fence: FenceStandIn, hub: Hub) -> None:
    """Fence's logout may send the browser back to the hub (its LOGIN_REDIRECT_WHITELIST; reset after each test)."""
    fence.login_redirect_whitelist = [urlparse(hub.url).netloc]


@pytest.fixture(scope="module")
def dev_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(tmp_path_factory.mktemp("pages-dev"), extra_args=["--commons-name", COMMONS]).start()
    yield h
    h.stop()


def check_page(page: Page, user: str, title: str = "") -> None:
    """The title, the commons' name, who is logged in, a Logout, and none of JupyterHub's internals."""
    expected_title = f"{title} · {WORKSPACE}" if title else WORKSPACE
    expect(page).to_have_title(expected_title)
    expect(page.locator("#gen3-brand")).to_contain_text(COMMONS)
    expect(page.locator("#jupyterhub-logo")).to_have_count(0)
    expect(page.locator("#gen3-user")).to_have_text(user)
    expect(page.locator("#logout")).to_be_visible()
    text = page.locator("body").inner_text()
    for bad in NEVER:
        assert bad not in text, (bad, page.url, text[:600])


def logout_works(page: Page, hub: Hub) -> None:
    """Logout ends the hub session (through Fence, back to the hub): the next page asks to log in."""
    page.locator("#logout").click()
    page.wait_for_url(re.compile(re.escape(hub.url) + r"hub/login"))
    page.goto(f"{hub.url}hub/home")
    expect(page.get_by_text(re.compile("^Sign in with "))).to_be_visible()


@pytest.mark.usefixtures("fence_allows_the_hub")
def test_researcher_path_and_error_pages(page: Page, hub: Hub, fence: FenceStandIn) -> None:
    page.goto(f"{hub.url}hub/login")
    expect(page).to_have_title(WORKSPACE)
    expect(page.locator("#gen3-title")).to_have_text(WORKSPACE)
    docs_screenshot(page, "login")
    log_in(page, hub, "alice")

    # The flavor page.
    expect(page.locator(".gen3-flavors")).to_be_visible()
    check_page(page, "alice")
    # API tokens are not a tab for everyone; the home page links them.
    expect(page.locator("#thenavbar").get_by_role("link", name=re.compile("Token"))).to_have_count(0)
    docs_screenshot(page, "flavor-page")

    # JupyterLab with the Gen3 SDK.
    start_flavor(page, hub, "python-small")
    open_notebook(page)
    out = run_in_notebook(page, "from gen3.auth import Gen3Auth\nprint('TOKEN', Gen3Auth().get_access_token().count('.') == 2)\n")
    assert "TOKEN True" in out, out
    news = page.get_by_role("button", name="No", exact=True)
    if news.is_visible():
        news.click()
    docs_screenshot(page, "jupyterlab", full_page=False)

    # The home page names the running flavor, and after Stop says so without a reload.
    page.goto(f"{hub.url}hub/home")
    check_page(page, "alice")
    flavor_line = page.locator("#gen3-running-flavor")
    expect(flavor_line).to_contain_text("running the flavor Python — small")
    expect(page.locator("#gen3-token-link")).to_be_visible()
    docs_screenshot(page, "hub-home")
    page.evaluate("window.gen3NoReload = true")
    page.locator("#stop").click()
    expect(flavor_line).to_contain_text("stopped", timeout=60_000)
    expect(flavor_line).not_to_contain_text("Python — small")
    assert page.evaluate("window.gen3NoReload") is True, "the page was reloaded"
    hub.wait_for_server("alice", ready=False)
    logout_works(page, hub)

    # Your own server's address while it is stopped.
    log_in(page, hub, "alice")
    page.goto(f"{hub.url}hub/user/alice/lab")
    expect(page.locator("#gen3-not-running")).to_have_text("Your workspace is not running")
    check_page(page, "alice", "Not running")
    expect(page.locator("#start")).to_have_text("Start my workspace")
    logout_works(page, hub)

    # The token page: what a token is for here.
    log_in(page, hub, "alice")
    page.goto(f"{hub.url}hub/token")
    check_page(page, "alice", "API tokens")
    intro = page.locator("#gen3-token-intro")
    expect(intro).to_contain_text("VS Code")
    expect(intro).to_contain_text("already logged in")
    docs_screenshot(page, "token-page")
    logout_works(page, hub)

    # A page that does not exist: not JupyterHub's moons.
    log_in(page, hub, "alice")
    r = page.goto(f"{hub.url}hub/no-such-page")
    assert r is not None and r.status == 404
    expect(page.locator("#gen3-error-title")).to_contain_text("Page not found")
    check_page(page, "alice", "Page not found")
    docs_screenshot(page, "not-found")
    logout_works(page, hub)

    # The admin page for someone who can use the workspace: not "you cannot use the Workspace".
    log_in(page, hub, "alice")
    r = page.goto(f"{hub.url}hub/admin")
    assert r is not None and r.status == 403
    heading = "This page is for administrators of this workspace"
    expect(page.locator("#gen3-error-title")).to_contain_text(heading)
    expect(page.locator("body")).not_to_contain_text("cannot use the Workspace")
    check_page(page, "alice", heading)
    docs_screenshot(page, "admin-only")
    logout_works(page, hub)

    # Another user's server, through the gate and through the hub.
    log_in(page, hub, "alice")
    r = page.goto(f"{hub.url}user/gpu-gabi/lab")
    assert r is not None and r.status == 403
    expect(page.locator("#gen3-error-title")).to_contain_text("This is not your workspace")
    expect(page.locator("#gen3-error-message")).to_contain_text("belongs to another user's workspace")
    check_page(page, "alice", "This is not your workspace")
    docs_screenshot(page, "not-your-workspace")
    r = page.goto(f"{hub.url}hub/user/gpu-gabi/lab")
    assert r is not None and r.status == 404
    expect(page.locator("#gen3-error-message")).to_contain_text("another user's workspace")
    check_page(page, "alice", "Not yours, or not here")
    logout_works(page, hub)
    assert fence.calls_to("/user/logout"), "logout went through Fence"


@pytest.mark.usefixtures("fence_allows_the_hub")
def test_missing_workspace_permission_names_the_account_and_lets_it_switch(page: Page, hub: Hub) -> None:
    log_in(page, hub, "nobody-ned")
    heading = "You cannot use the Workspace yet"
    expect(page.locator("#gen3-error-title")).to_contain_text(heading)
    expect(page.locator("#gen3-error-message")).to_contain_text("method 'access' for service 'jupyterhub' on resource '/workspace'")
    # Not logged in to the hub, but logged in to the commons as nobody-ned: named, with Logout.
    check_page(page, "nobody-ned", heading)
    docs_screenshot(page, "forbidden")
    logout_works(page, hub)


def test_dev_login_takes_unicode_names_and_says_what_it_refuses(page: Page, dev_hub: Hub) -> None:
    page.goto(f"{dev_hub.url}hub/login")
    expect(page).to_have_title(WORKSPACE)
    expect(page.locator("#gen3-dev-banner")).to_be_visible()
    # Typed decomposed (e + combining diaeresis): the same user as the composed "zoë".
    page.fill("#username_input", "Zoe\u0308")
    page.locator("#login_submit").click()
    expect(page.locator(".gen3-flavors")).to_be_visible()
    check_page(page, "zoë")
    assert "zoë" in [u["name"] for u in dev_hub.api("GET", "users").json()]
    page.locator("#logout").click()
    page.wait_for_url(re.compile(r"/hub/(login|logout)"))

    page.goto(f"{dev_hub.url}hub/login")
    page.fill("#username_input", "Anne Marie")
    page.locator("#login_submit").click()
    error = page.locator(".login_error, #login_error, .alert-danger").filter(has_text="dev login username")
    expect(error).to_contain_text("letters of any language")
    expect(page.locator("body")).not_to_contain_text("Invalid username or password")
    expect(page.locator("#username_input")).to_have_value("Anne Marie")
