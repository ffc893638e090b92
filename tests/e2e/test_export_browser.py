"""Export to Workspace in Chromium against the real data plane: the portal's POST to manifestservice with the user's session, then the Workspace page, then the files in JupyterLab's file browser, complete and md5-checked; a second export while the server runs arrives too."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from gen3workspace.spawner.local import safe_name
from gen3workspace.spawner.singleuser import gen3ws_export as ex
from tests.e2e.portal import BASE, wait_portal
from tests.support.browser import screenshot_path
from tests.support.hub import Hub
from tests.support.realdata import DataBed, Record
from tests.support.realfence import FenceBed
from tests.support.revproxy import RevProxy

# The session's real Fence and data-plane beds start inside the first test that asks for them.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

EXPORT_PAGE = Path(__file__).resolve().parents[1] / "support" / "portal_export.html"


@pytest.fixture(scope="module")
def hub(real_data: DataBed, real_fence: FenceBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(tmp_path_factory.mktemp("export-e2e"), extra_args=["--base-url", BASE, "--commons-name", "Real Data Commons"])
    h.fence = real_fence.register_hub("export-e2e", h.url)
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def commons(real_fence: FenceBed, hub: Hub) -> Iterator[RevProxy]:
    """The commons' one origin: the bed's routes (Fence, indexd, manifestservice, sheepdog) plus the workspace; like Gen3's revproxy, the access_token cookie becomes the bearer on every route."""
    front = real_fence.front
    rev = RevProxy(
        {**front.routes, BASE: f"http://127.0.0.1:{hub.port}"},
        regex_routes=[(p.pattern, t) for p, t in front.regex_routes],
        workspace_prefix="/",
    ).start()
    rev.pages["/portal/discovery"] = EXPORT_PAGE.read_text()
    yield rev
    rev.stop()


def portal_user(browser: Browser, real_data: DataBed, rev: RevProxy, user: str) -> BrowserContext:
    """A browser logged in to the portal: Fence's access_token cookie (HttpOnly) and the portal's csrftoken."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    token = real_data.access_token(user, ("openid", "user", "data", "credentials"))
    context.add_cookies(
        [
            {"name": "access_token", "value": token, "url": rev.url, "httpOnly": True, "sameSite": "Lax"},
            {"name": "csrftoken", "value": secrets.token_hex(16), "url": rev.url, "sameSite": "Lax"},
        ]
    )
    context.set_default_timeout(60_000)
    return context


def study(records: list[Record], commons_url: str) -> dict[str, Any]:
    """A Discovery study as the portal holds it: its `__manifest` entries."""
    return {
        "_hdp_uid": "study-1",
        "commons_url": commons_url,
        "__manifest": [{"md5sum": r.md5, "file_name": r.file_name, "file_size": r.size, "object_id": r.guid, "commons_url": commons_url} for r in records],
    }


def export(page: Page, rev: RevProxy, selected: list[dict[str, Any]]) -> str:
    """Press Export to Workspace on the Discovery page; return the manifest's name from manifestservice's answer."""
    page.goto(f"{rev.url}/portal/discovery")
    page.evaluate("(s) => { window.__selected = s; }", selected)
    with page.expect_response(lambda r: r.url == f"{rev.url}/manifests/" and r.request.method == "POST") as answer:
        page.get_by_role("button", name="Export to Workspace").click()
    response = answer.value
    assert response.status == 200, response.text()
    request = response.request
    headers = request.all_headers()
    assert headers["content-type"] == "application/json" and headers["accept"] == "application/json" and headers["x-csrf-token"]
    assert "access_token=" in headers.get("cookie", ""), "the portal's session went with the POST"
    assert json.loads(request.post_data or "[]") == [e for s in selected for e in s["__manifest"]]
    page.wait_for_url(f"{rev.url}/portal/workspace**")
    return json.loads(page.evaluate("() => sessionStorage.getItem('gen3-export-answer')"))["filename"]


def wait_for_files(folder: Path, records: list[Record], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all((folder / r.file_name).is_file() for r in records):
            return
        time.sleep(0.5)
    status = folder / ex.STATUS_NAME
    raise AssertionError(f"files did not arrive in {folder}: {status.read_text() if status.exists() else 'no status'}")


def lab_folder(context: BrowserContext, rev: RevProxy, user: str, folder: str) -> Page:
    lab = context.new_page()
    lab.goto(f"{rev.url}{BASE}user/{user}/lab/tree/{folder}")
    expect(lab.locator(".jp-LabShell")).to_be_visible(timeout=120_000)
    return lab


def listed(lab: Page, name: str) -> Any:
    return lab.locator(".jp-FileBrowser .jp-DirListing-content .jp-DirListing-itemText", has_text=name)


def test_portal_export_appears_in_jupyterlab_verified_and_a_second_export_while_running(browser: Browser, real_data: DataBed, hub: Hub, commons: RevProxy) -> None:
    user = real_data.reader
    first = [real_data.add_object("reads-1.fastq", secrets.token_bytes(300_000)), real_data.add_object("clinical.tsv", b"case\tage\ncase-1\t42\n")]
    context = portal_user(browser, real_data, commons, user)
    page = context.new_page()
    try:
        name = export(page, commons, [study(first, real_data.commons_url)])
        # The Workspace page: the user opens the workspace.
        wait_portal(page, "Not Found", timeout=60)
        page.locator("#options button[data-id='python-small']").click()
        wait_portal(page, "Running", timeout=180)
        expect(page.frame_locator("iframe.workspace").locator(".jp-LabShell")).to_be_visible(timeout=180_000)

        host = real_data.commons_url.split("://", 1)[1].replace(":", "_")
        drive = hub.data_dir / "drives" / safe_name(user)
        folder = drive / "data" / host / name.removesuffix(".json")
        wait_for_files(folder, first)
        for r in first:
            data = (folder / r.file_name).read_bytes()
            assert len(data) == r.size and hashlib.md5(data).hexdigest() == r.md5, "complete and what indexd says"
        assert "**2 of 2 files done**" in (folder / ex.STATUS_NAME).read_text()
        assert not any((folder / ex.PARTIAL_DIR).iterdir())

        rel = f"data/{host}/{name.removesuffix('.json')}"
        lab = lab_folder(context, commons, user, rel)
        for r in first:
            expect(listed(lab, r.file_name)).to_be_visible()
        expect(listed(lab, ex.STATUS_NAME)).to_be_visible()
        expect(listed(lab, ex.PARTIAL_DIR)).to_have_count(0)  # the unfinished files' folder is hidden
        listed(lab, ex.STATUS_NAME).dblclick()
        expect(lab.locator(".jp-FileEditor, .jp-RenderedMarkdown").first).to_contain_text("2 of 2 files done")
        lab.wait_for_timeout(1500)
        lab.screenshot(path=screenshot_path("export-to-workspace"))

        # A second export while the server runs, from another tab, as a user goes back to the portal.
        second = [real_data.add_object("reads-2.fastq", secrets.token_bytes(120_000))]
        again = context.new_page()
        name2 = export(again, commons, [study(second, real_data.commons_url)])
        assert name2 != name
        folder2 = drive / "data" / host / name2.removesuffix(".json")
        wait_for_files(folder2, second)
        data = (folder2 / "reads-2.fastq").read_bytes()
        assert hashlib.md5(data).hexdigest() == second[0].md5
        lab2 = lab_folder(context, commons, user, f"data/{host}")
        expect(listed(lab2, name.removesuffix(".json"))).to_be_visible()
        expect(listed(lab2, name2.removesuffix(".json"))).to_be_visible()
        listed(lab2, name2.removesuffix(".json")).dblclick()
        expect(listed(lab2, "reads-2.fastq")).to_be_visible()
        lab2.screenshot(path=screenshot_path("export-to-workspace-second"))
        # The hub kept serving through all of it.
        assert hub.api("GET", "").status_code == 200
    finally:
        context.close()
