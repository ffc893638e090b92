"""A Fence admin in a real hub: the admin page and server status, never another user's server unless the explicit setting grants it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gen3workspace.hub.auth import FENCE_ADMIN_GROUP, FENCE_ADMIN_ROLE
from gen3workspace.spawner.flavors import default_catalogue_path
from tests.support.fence import FenceStandIn
from tests.support.hub import Hub


def make_hub(tmp: Path, fence: FenceStandIn, extra_config: str = "") -> Hub:
    flavors = tmp / "flavors.yaml"
    flavors.write_text(default_catalogue_path().read_text())
    return Hub(tmp, fence=fence, extra_args=["--flavors", str(flavors)], extra_config=extra_config).start()


@pytest.fixture(scope="module")
def hub(fence: FenceStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = make_hub(tmp_path_factory.mktemp("adminhub"), fence)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def open_hub(fence: FenceStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """The same hub with the explicit setting that gives Fence admins every user's server."""
    h = make_hub(tmp_path_factory.mktemp("openadminhub"), fence, "c.Gen3OAuthenticator.fence_admin_server_access = True\n")
    yield h
    h.stop()


def start_alice(hub: Hub) -> None:
    hub.login("alice")
    r = hub.api("POST", "users/alice/server", json={"flavor": "python-small"})
    assert r.status_code in (201, 202), r.text
    hub.wait_for_server("alice")


def token_of(hub: Hub, user: str, scopes: list[str] | None = None) -> dict[str, str]:
    """An API token of `user` (made by the test's admin service): everything `user` may do, or only `scopes`."""
    r = hub.api("POST", f"users/{user}/tokens", json={"note": "test", **({"scopes": scopes} if scopes else {})})
    assert r.status_code == 201, r.text
    return {"Authorization": f"token {r.json()['token']}"}


def test_a_fence_admin_gets_the_admin_page_but_not_other_users_servers(hub: Hub, fence: FenceStandIn) -> None:
    start_alice(hub)
    # Her own JupyterHub API token opens her own server, as scripts use it.
    own = requests.get(f"{hub.url}user/alice/api/status", headers=token_of(hub, "alice"), timeout=30, allow_redirects=False)
    assert own.status_code == 200 and "started" in own.json(), (own.status_code, own.headers.get("Location"), own.text[:300])
    session, r = hub.login("admin-ada")
    assert r.status_code == 200
    model = hub.user_model("admin-ada")
    assert model["admin"] is False
    assert FENCE_ADMIN_GROUP in model["groups"]
    assert hub.api("GET", f"groups/{FENCE_ADMIN_GROUP}").json()["roles"] == [FENCE_ADMIN_ROLE]

    # What the role is for: the admin page, who is using the workspace, stop a server.
    assert session.get(f"{hub.url}hub/admin", timeout=30).status_code == 200
    ada = token_of(hub, "admin-ada")
    users = requests.get(f"{hub.url}hub/api/users", headers=ada, timeout=30)
    assert users.status_code == 200 and "alice" in {u["name"] for u in users.json()}
    alice = requests.get(f"{hub.url}hub/api/users/alice", headers=ada, timeout=30).json()
    assert alice["servers"][""]["ready"] is True
    assert "auth_state" not in alice, "alice's Fence tokens must stay hidden"

    # What it is not for: alice's server, in the browser and with a token.
    page = session.get(f"{hub.url}user/alice/api/status", timeout=30)
    assert page.status_code == 403, (page.status_code, page.url)
    assert requests.get(f"{hub.url}user/alice/api/status", headers=ada, timeout=30, allow_redirects=False).status_code == 403
    # Nor a token of alice's, her login state, or a share of her server.
    assert requests.post(f"{hub.url}hub/api/users/alice/tokens", headers=ada, json={}, timeout=30).status_code == 403
    assert requests.post(f"{hub.url}hub/api/shares/alice/", headers=ada, json={"user": "admin-ada"}, timeout=30).status_code in (403, 404)
    assert requests.patch(f"{hub.url}hub/api/users/admin-ada", headers=ada, json={"admin": True}, timeout=30).status_code == 403

    stopped = requests.delete(f"{hub.url}hub/api/users/alice/server", headers=ada, timeout=30)
    assert stopped.status_code in (202, 204), stopped.text
    hub.wait_for_server("alice", ready=False)
    assert fence.active_keys("alice") == []


def test_a_fence_group_named_like_the_admin_group_grants_nothing(hub: Hub, fence: FenceStandIn) -> None:
    fence.users["alice"].groups = ["analysts", FENCE_ADMIN_GROUP]
    try:
        session, _ = hub.login("alice")
        assert FENCE_ADMIN_GROUP not in hub.user_model("alice")["groups"]
        assert session.get(f"{hub.url}hub/admin", timeout=30).status_code == 403
    finally:
        fence.users["alice"].groups = ["analysts"]


def test_losing_is_admin_in_fence_takes_the_role_away(hub: Hub, fence: FenceStandIn) -> None:
    hub.login("admin-ada")
    fence.users["admin-ada"].is_admin = False
    try:
        session, _ = hub.login("admin-ada")
        assert FENCE_ADMIN_GROUP not in hub.user_model("admin-ada")["groups"]
        assert session.get(f"{hub.url}hub/admin", timeout=30).status_code == 403
    finally:
        fence.users["admin-ada"].is_admin = True


def test_the_explicit_setting_gives_fence_admins_every_server(open_hub: Hub) -> None:
    start_alice(open_hub)
    session, _ = open_hub.login("admin-ada")
    assert open_hub.user_model("admin-ada")["admin"] is True
    # A full admin token is refused at another user's server: forwarded, alice's server could
    # replay it against the hub's whole API (docs/security.md).
    full = requests.get(f"{open_hub.url}user/alice/api/status", headers=token_of(open_hub, "admin-ada"), timeout=30, allow_redirects=False)
    assert full.status_code == 403 and "access:servers" in full.text, (full.status_code, full.text[:300])
    # By a token that carries only access:servers (a script, no browser): served, and the
    # server itself checks the token.
    ada = token_of(open_hub, "admin-ada", ["access:servers"])
    by_token = requests.get(f"{open_hub.url}user/alice/api/status", headers=ada, timeout=30, allow_redirects=False)
    assert by_token.status_code == 200 and "started" in by_token.json(), by_token.text
    # In a browser, never: alice's script would run with ada's admin session (docs/architecture.md).
    page = session.get(f"{open_hub.url}user/alice/api/status", timeout=30)
    assert page.status_code == 403 and 'id="gen3-error-message"' in page.text, (page.status_code, page.url)
    assert open_hub.api("DELETE", "users/alice/server").status_code in (202, 204)
    open_hub.wait_for_server("alice", ready=False)
