"""The hub's page templates (titles, error pages, token page in the commons' name and the user's words) and the values they read, for every way the hub is configured."""

from __future__ import annotations

import html
import json
import re
from functools import partial
from pathlib import Path
from typing import Any

from tornado import web

TEMPLATES = Path(__file__).with_name("templates")

# JupyterHub's `needs_scope` refusal: "Action is not authorized with current scopes; requires any of [a, b]".
_SCOPE_REFUSAL = re.compile(r"requires any of \[([^\]]*)\]")
# JupyterHub's answer for a path under /hub/user/<name>/ the caller may not reach (it hides whether it exists).
_NO_ACCESS_OR_NOT_FOUND = "No access to resources or resources not found"
# The gate's refusal of another user's server address (hub/gate.py).
_NOT_YOUR_SERVER = "another user's workspace"


class WorkspaceRefused(web.HTTPError):
    """403 for a person Fence knows but the workspace permission does not admit.

    They are not logged in to the hub, yet they are logged in to the commons: the page names
    that account (`gen3_username`) and offers the logout through Fence to switch accounts.
    """

    def __init__(self, username: str, message: str):
        super().__init__(403, message)
        self.gen3_username = username
        # JupyterHub's error page shows this instead of the bare status line.
        self.jupyterhub_message = message


def workspace_name(commons_name: str) -> str:
    """What every page calls this service: "<commons name> Workspace"."""
    return f"{commons_name} Workspace" if commons_name else "Gen3 Workspace"


def configure_pages(c: Any, commons_name: str = "", logo_url: str = "", portal_url: str = "", **template_vars: Any) -> None:
    """Put our templates in front of JupyterHub's and give them the commons' name, logo and portal."""
    c.JupyterHub.template_paths = [str(TEMPLATES)]
    c.JupyterHub.template_vars = {
        "gen3_commons_name": commons_name,
        "gen3_workspace_name": workspace_name(commons_name),
        "gen3_logo_url": logo_url,
        "gen3_portal_url": portal_url,
        # JupyterHub calls a callable template variable with the page's user: the templates get
        # `gen3_explain_error(status_code, message, exception)` bound to that user.
        "gen3_explain_error": _bind_user,
        **template_vars,
    }


def _bind_user(user: Any) -> Any:
    return partial(explain_error, getattr(user, "name", "") or "")


def _scope_words(scopes: list[str]) -> tuple[str, str]:
    names = {s.split("!", 1)[0] for s in scopes}
    if names & {"admin-ui"} or any(n.startswith("admin:") for n in names):
        return (
            "This page is for administrators of this workspace",
            "Your account can use the workspace as usual; only the workspace's administrators can open this page.",
        )
    if any(n.endswith("servers") for n in names):
        return (
            "This is not your workspace",
            "This address belongs to another person's workspace. You can open and start only your own.",
        )
    if any(n.endswith("tokens") for n in names):
        return ("API tokens are not available to your account", "Ask the commons administrators if you need one for a script.")
    return ("Your account cannot open this page", "Ask the commons administrators if you think you should have access.")


def explain_error(username: str, status_code: int, message: str = "", exception: Any = None) -> dict[str, str]:
    """The heading and paragraph of an error page, in the user's terms: never a scope string.

    One place decides which situation a refusal is, from what JupyterHub, the gate and our
    authenticator raise: a missing page, a page for administrators, another user's server, a
    missing workspace permission (whose message already names the permission), or a fault.
    """
    message = str(message or "")
    refused = _SCOPE_REFUSAL.search(message)
    if refused:
        heading, text = _scope_words([s.strip() for s in refused.group(1).split(",") if s.strip()])
        return {"heading": heading, "text": text}
    if _NOT_YOUR_SERVER in message:
        return {
            "heading": "This is not your workspace",
            "text": "This address belongs to another user's workspace. A workspace opens only for the person it belongs to: yours is on your home page.",
        }
    if status_code == 404 and message == _NO_ACCESS_OR_NOT_FOUND:
        return {
            "heading": "Not yours, or not here",
            "text": "There is nothing at this address that your account can open: it belongs to another user's workspace, or it does not exist. Yours is on your home page.",
        }
    if status_code == 404:
        return {"heading": "Page not found", "text": message if message and message != "Not Found" else "There is no page at this address. It may have moved, or the link may be incomplete."}
    if status_code == 403:
        if isinstance(exception, WorkspaceRefused) or "not allowed to use the Workspace" in message or "blocked from the Workspace" in message:
            return {"heading": "You cannot use the Workspace yet", "text": message}
        return {"heading": "Access refused", "text": message or "Your account cannot do this here."}
    if status_code == 503:
        return {"heading": "Temporarily unavailable", "text": message or "A service the workspace needs is not answering. Try again in a few minutes."}
    if status_code >= 500:
        return {
            "heading": "Something went wrong",
            "text": message or "The workspace hit an unexpected problem. Try again in a minute; if it keeps happening, tell the commons administrators the time it happened.",
        }
    return {"heading": "This did not work", "text": message}


def error_page(handler: Any, status_code: int, message: str, exception: Any = None) -> str:
    """Our error page (templates/error.html) for a JupyterHub handler that writes its own errors,
    such as the gate in front of users' servers: the same words, user and Logout as every hub page."""
    from jupyterhub import orm
    from tornado.httputil import responses

    # A service's token (an operator's script) is no person: the page's user menu is for users.
    user = handler.current_user
    return handler.render_template(
        "error.html",
        sync=True,
        user=None if isinstance(user, orm.Service) else user,
        status_code=status_code,
        status_message=responses.get(status_code, "Error"),
        message=message,
        message_html="",
        extra_error_html="",
        exception=exception,
    )


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
