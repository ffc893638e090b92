"""Debian's Chromium driven by Playwright, with the flags this closed network needs, and a screenshot folder."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, expect, sync_playwright

from .hub import Hub

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
# `GEN3WS_DOCS_SCREENSHOTS=1 make test PYTEST_ARGS=tests/e2e/test_pages_browser.py` regenerates docs/img.
UPDATE_DOCS_IMG = os.environ.get("GEN3WS_DOCS_SCREENSHOTS") == "1"


@contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: the set-up (scripts/setup.sh test) installs Debian's chromium")
    # Playwright gives every launch a new, empty profile of its own.
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"


def docs_screenshot(page: Page, name: str, full_page: bool = True) -> Path:
    """A screenshot the docs show: into test-artifacts always, into docs/img with GEN3WS_DOCS_SCREENSHOTS=1."""
    path = screenshot_path(name)
    page.screenshot(path=path, full_page=full_page)
    if UPDATE_DOCS_IMG:
        shutil.copyfile(path, DOCS_IMG / f"{name}.png")
    return path


def log_in(page: Page, hub: Hub, user: str, shot: str | None = None) -> None:
    page.goto(f"{hub.url}hub/login")
    expect(page.locator("#gen3-title")).to_have_text(re.compile(r"\bWorkspace$"))
    if shot:
        page.screenshot(path=screenshot_path(shot), full_page=True)
    page.get_by_text(re.compile("^Sign in with ")).click()
    # The Fence stand-in's own login page, as a user would see their IdP.
    page.get_by_role("button", name=f"Log in as {user}").click()


def log_in_real_fence(page: Page, hub: Any, bed: Any, user: str) -> None:
    """Hub login page → real Fence's authorize → Fence's (mocked) identity provider as `user` → back.

    `bed` is a tests.support.realfence.FenceBed; `hub` anything with the hub's `url`.
    """
    page.context.add_cookies([bed.browser_cookie(user)])
    page.goto(f"{hub.url}hub/login")
    page.get_by_text(re.compile("^Sign in with ")).click()


def run_in_notebook(page: Page, code: str) -> str:
    cells = page.locator(".jp-Notebook .jp-Cell")
    cell = cells.nth(cells.count() - 1)
    cell.locator(".cm-content").click()
    page.keyboard.insert_text(code)
    output = cell.locator(".jp-OutputArea-output")
    # A run sent while the kernel is still connecting can be dropped; send it again then.
    for _ in range(6):
        cell.locator(".cm-content").click()
        page.keyboard.press("Shift+Enter")
        try:
            expect(output.first).to_be_visible(timeout=15_000)
            break
        except AssertionError:
            continue
    else:
        page.screenshot(path=screenshot_path("failed-notebook"))
        raise AssertionError("the notebook cell produced no output")
    expect(cell.locator(".jp-InputArea-prompt")).not_to_have_text(re.compile(r"\*"), timeout=60_000)
    return "\n".join(output.all_inner_texts())


def open_notebook(page: Page) -> None:
    expect(page.locator(".jp-LabShell")).to_be_visible(timeout=120_000)
    # JupyterLab restores the last layout; ?reset brings the launcher back.
    page.goto(page.url.split("/lab")[0] + "/lab?reset")
    page.locator(".jp-LauncherCard[data-category='Notebook']").first.click()
    expect(page.locator(".jp-Notebook .jp-Cell").first).to_be_visible()
    expect(page.get_by_text(re.compile(r"\| Idle"))).to_be_visible(timeout=90_000)


def start_flavor(page: Page, hub: Hub, flavor: str) -> None:
    page.goto(f"{hub.url}hub/spawn")
    page.locator(f"label[data-flavor='{flavor}']").click()
    page.get_by_role("button", name=re.compile("Start")).click()
    page.wait_for_url(re.compile(r"/user/.+/lab"), timeout=180_000)


def stop_server(page: Page, hub: Hub, user: str) -> None:
    page.goto(f"{hub.url}hub/home")
    page.locator("#stop").click()
    expect(page.locator("#start")).to_be_visible(timeout=60_000)
    hub.wait_for_server(user, ready=False)
