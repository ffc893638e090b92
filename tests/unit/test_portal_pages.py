"""Small pieces of the pages a portal user sees: the embedded mode's progress text and the frame-leaving logout answer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gen3workspace.hub.pages import leave_frame
from gen3workspace.spawner.flavors import load_catalogue, default_catalogue_path
from gen3workspace.spawner.local import Gen3LocalSpawner


class FakeHandler:
    def __init__(self, dest: str | None):
        self.request = SimpleNamespace(headers={"Sec-Fetch-Dest": dest} if dest else {})
        self.headers: dict[str, str] = {}
        self.body = ""

    def set_header(self, k: str, v: str) -> None:
        self.headers[k] = v

    def finish(self, body: Any) -> None:
        self.body = body


def test_local_progress_does_not_claim_cpu_or_memory() -> None:
    flavor = load_catalogue(default_catalogue_path()).get("r-large")
    spawner = Gen3LocalSpawner.__new__(Gen3LocalSpawner)
    spawner.flavor = flavor
    message = Gen3LocalSpawner.progress_intro(spawner)["message"]
    assert "R — large" in message and "not applied" in message
    assert "4 CPU" not in message and "16 GiB" not in message


def test_logout_in_a_frame_moves_the_whole_window() -> None:
    target = "https://data.example.org/user/logout?next=https%3A%2F%2Fdata.example.org%2F</script>"
    framed = FakeHandler("iframe")
    assert leave_frame(framed, target) is True
    assert "window.top.location.href" in framed.body
    assert "</script>\"" not in framed.body  # the target cannot close the script early
    top = FakeHandler("document")
    assert leave_frame(top, target) is False and top.body == ""


def test_error_words_fit_the_situation_and_never_show_a_scope() -> None:
    from tornado import web

    from gen3workspace.hub.pages import WorkspaceRefused, explain_error

    scope_refusal = "Action is not authorized with current scopes; requires any of [{}]"
    admin = explain_error("alice", 403, scope_refusal.format("admin-ui"))
    assert admin["heading"] == "This page is for administrators of this workspace"
    other = explain_error("alice", 403, scope_refusal.format("servers!user=bob"))
    assert other["heading"] == "This is not your workspace"
    tokens = explain_error("alice", 403, scope_refusal.format("tokens"))
    anything = explain_error("alice", 403, scope_refusal.format("read:groups"))
    for words in (admin, other, tokens, anything):
        assert "requires" not in words["text"] and "[" not in words["text"] and "cannot use the Workspace" not in words["heading"]
    # The missing workspace permission keeps its own heading and the message naming the permission.
    refusal = WorkspaceRefused("ned", "Your account ned is not allowed to use the Workspace: it needs the method 'access' …")
    missing = explain_error("", 403, refusal.log_message, refusal)
    assert missing == {"heading": "You cannot use the Workspace yet", "text": refusal.log_message}
    assert refusal.status_code == 403 and refusal.gen3_username == "ned"
    assert explain_error("alice", 404, "No access to resources or resources not found")["heading"] == "Not yours, or not here"
    assert explain_error("alice", 404, "")["heading"] == "Page not found"
    assert explain_error("alice", 403, "This address belongs to another user's workspace. You can only open your own.")["heading"] == "This is not your workspace"
    assert explain_error("alice", 503, "")["heading"] == "Temporarily unavailable"
    assert explain_error("alice", 500, "", web.HTTPError(500))["heading"] == "Something went wrong"


def test_dev_login_names_are_unicode_nfc_and_a_refusal_says_the_rule() -> None:
    import pytest
    from tornado import web

    from gen3workspace.hub.devauth import USERNAME_RULE, dev_username

    assert dev_username("Zoe\u0308") == dev_username("Zo\u00eb") == "Zo\u00eb"
    assert dev_username(" 张伟 ") == "张伟"
    for bad in ("Anne Marie", "a/b", "..", "", "🦄", "x" * 65):
        with pytest.raises(web.HTTPError) as e:
            dev_username(bad)
        assert e.value.status_code == 400 and USERNAME_RULE in e.value.log_message


def render_hub_template(name: str, **ns: Any) -> str:
    """One of our templates rendered the way JupyterHub loads them (ours first, stock under templates/)."""
    from pathlib import Path

    from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader
    from jupyterhub._data import DATA_FILES_PATH
    from traitlets.config import Config

    from gen3workspace.hub.pages import TEMPLATES, configure_pages

    stock = Path(DATA_FILES_PATH) / "templates"
    loader = ChoiceLoader([PrefixLoader({"templates": FileSystemLoader([str(stock)])}, "/"), FileSystemLoader([str(TEMPLATES), str(stock)])])
    c = Config()
    configure_pages(c, "Test Data Commons")
    user = ns.pop("user", None)
    template_vars = {k: (v(user) if callable(v) else v) for k, v in c.JupyterHub.template_vars.items()}
    base = dict(base_url="/hub/", prefix="/", user=user, login_url="/hub/login", logout_url="/hub/logout", static_url=lambda p, **kw: "/hub/static/" + p,
                version_hash="", services=[], parsed_scopes={}, expanded_scopes=set(), xsrf="x", xsrf_token="x", message_html="", extra_error_html="", exception=None)
    return Environment(loader=loader, autoescape=True).get_template(name).render(**{**base, **template_vars, **ns})


def test_every_error_status_renders_in_the_commons_style_with_the_user_and_logout() -> None:
    import re

    alice = SimpleNamespace(name="alice", json_escaped_name="alice", spawner=SimpleNamespace(options_form=""))
    for template, status, message, heading in (
        ("404.html", 404, "", "Page not found"),
        ("error.html", 403, "Action is not authorized with current scopes; requires any of [admin-ui]", "This page is for administrators of this workspace"),
        ("error.html", 500, "", "Something went wrong"),
        ("error.html", 503, "", "Temporarily unavailable"),
    ):
        page = render_hub_template(template, user=alice, status_code=status, status_message="x", message=message)
        title = re.search(r"<title>(.*?)</title>", page, re.S).group(1).strip()
        assert title == f"{heading} · Test Data Commons Workspace", (status, title)
        assert 'id="gen3-user">alice<' in page and 'id="logout"' in page and 'href="/hub/logout"' in page, status
        assert "JupyterHub" not in title and "moons" not in page and "requires any of" not in page, status


def test_every_other_page_has_the_commons_title() -> None:
    import re

    alice = SimpleNamespace(name="alice", json_escaped_name="alice", spawner=SimpleNamespace(options_form=""))
    for template, title, ns in (
        ("logout.html", "Logged out · ", {"user": None}),
        ("stop_pending.html", "Stopping · ", {"user": alice, "server_name": ""}),
        ("spawn_pending.html", "Starting · ", {"user": alice, "server_name": "", "progress_url": "/p", "spawner": SimpleNamespace(name="")}),
        ("not_running.html", "Not running · ", {"user": alice, "server_name": "", "spawn_url": "/hub/spawn", "failed": False}),
        ("login.html", "", {"user": None, "authenticator": SimpleNamespace(login_service="Fence"), "next": "", "authenticator_login_url": "/o"}),
    ):
        page = render_hub_template(template, **ns)
        got = re.search(r"<title>(.*?)</title>", page, re.S).group(1).strip()
        assert got == f"{title}Test Data Commons Workspace", (template, got)
