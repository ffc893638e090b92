"""Browser-test helpers for the portal path: a commons origin (revproxy stand-in) in front of Fence and the hub, a logged-in portal user, the Workspace page's run."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from gen3workspace.hub.cli import free_port
from tests.support.fence import FenceStandIn
from tests.support.hub import Hub
from tests.support.revproxy import RevProxy

BASE = "/lw-workspace/"


def commons(fence: FenceStandIn, hub: Hub) -> RevProxy:
    """One origin, as a Gen3 commons: Fence under /user/, the workspace under /lw-workspace/."""
    return RevProxy({"/user/": fence.url, BASE: f"http://127.0.0.1:{hub.port}"}).start()


@pytest.fixture(scope="module")
def rev(fence: FenceStandIn, hub: Hub) -> Iterator[RevProxy]:
    """The commons' revproxy in front of the module's `fence` and `hub` fixtures (import it into the module)."""
    r = commons(fence, hub)
    yield r
    r.stop()


def portal_context(browser: Browser, fence: FenceStandIn, rev: RevProxy, user: str) -> BrowserContext:
    """A browser logged in to the portal as `user`: Fence's access_token cookie (HttpOnly) and the portal's csrftoken."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies(
        [
            {"name": "access_token", "value": fence.mint_access_token(user), "url": rev.url, "httpOnly": True, "sameSite": "Lax"},
            {"name": "csrftoken", "value": secrets.token_hex(16), "url": rev.url, "sameSite": "Lax"},
        ]
    )
    context.set_default_timeout(60_000)
    return context


def portal_state(page: Page) -> dict[str, Any]:
    return page.evaluate("() => JSON.parse(JSON.stringify(window.__portal))")


def wait_portal(page: Page, state: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.time() + timeout
    current: dict[str, Any] = {}
    while time.time() < deadline:
        current = portal_state(page)
        if current["state"] == state:
            return current
        time.sleep(0.3)
    raise AssertionError(f"portal page never reached {state!r}: {current}")


class Collector:
    """Where a hostile page sends what its script managed to read (another origin, any CORS)."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.port = free_port()
        reports = self.reports

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    reports.append(json.loads(self.rfile.read(length) or b"{}"))
                except ValueError:
                    reports.append({"unparsed": True})
                self.send_response(204)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        # "localhost", not 127.0.0.1: another site than the commons, as an attacker's would be.
        return f"http://localhost:{self.port}/report"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
