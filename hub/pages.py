"""The hub's page templates (Gen3 Workspace login page) and the values they read, for every way the hub is configured."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).with_name("templates")


def configure_pages(c: Any, commons_name: str = "", logo_url: str = "", portal_url: str = "", **template_vars: Any) -> None:
    """Put our templates in front of JupyterHub's and give them the commons' name, logo and portal."""
    c.JupyterHub.template_paths = [str(TEMPLATES)]
    c.JupyterHub.template_vars = {"gen3_commons_name": commons_name, "gen3_logo_url": logo_url, "gen3_portal_url": portal_url, **template_vars}


def leave_frame(handler: Any, target: str) -> bool:
    """Inside a frame (the portal's iframe), send the whole window to `target` and return True.

    A redirect would only move the frame: the portal would show Fence's logout, or the portal
    itself, inside its own Workspace page.
    """
    if handler.request.headers.get("Sec-Fetch-Dest") not in ("iframe", "frame"):
        return False
    handler.set_header("Content-Type", "text/html; charset=utf-8")
    handler.set_header("Cache-Control", "no-store")
    url = json.dumps(target).replace("<", "\\u003c")
    handler.finish(
        "<!doctype html><meta charset=utf-8><title>Logging out</title>"
        f'<p>Logging out… <a href="{html.escape(target)}" target="_top">continue</a></p>'
        f"<script>window.top.location.href = {url};</script>"
    )
    return True
