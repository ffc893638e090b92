"""The embedded workspace in real Chromium against real Fence, arborist and PostgreSQL: login, flavors, spawn, the Gen3 SDK inside, key revocation, 403, permission loss, logout."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from gen3workspace.spawner.flavors import default_catalogue_path, load_catalogue
from tests.support.browser import log_in_real_fence, open_notebook, run_in_notebook, screenshot_path, start_flavor, stop_server
from tests.support.hub import Hub
from tests.support.realfence import FenceBed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub(real_fence: FenceBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("realfence-e2e")
    # The shipped example catalogue as it is: its GPU flavor is restricted by arborist resource.
    h = Hub(tmp, extra_args=["--commons-name", "Real Fence Commons", "--flavors", str(default_catalogue_path())])
    # Logout ends at the hub's own login page: allowed because it is the client's redirect host.
    h.extra_args += ["--portal-url", h.url]
    h.fence = real_fence.register_hub("workspace-e2e", h.url)
    h.start()
    yield h
    h.stop()


def test_login_spawn_sdk_against_real_fence_then_stop_revokes_the_key(page: Page, hub: Hub, real_fence: FenceBed) -> None:
    log_in_real_fence(page, hub, real_fence, "alice")
    expect(page.locator(".gen3-flavors")).to_be_visible()
    start_flavor(page, hub, "python-small")
    open_notebook(page)
    out = run_in_notebook(
        page,
        "import json, os, requests\nfrom gen3.auth import Gen3Auth\nauth = Gen3Auth()\n"
        "me = requests.get(os.environ['GEN3_ENDPOINT'] + '/user/user', auth=auth, timeout=30).json()\n"
        "print('USER', me['username'])\nprint('WS', '/workspace' in me['authz'])\n"
        "print('KEYFILE', os.environ['GEN3_API_KEY'])\n",
    )
    assert "USER alice" in out and "WS True" in out, out
    keyfile = Path(re.search(r"KEYFILE (\S+)", out).group(1))
    key = json.loads(keyfile.read_text())
    assert real_fence.psql("fence", f"SELECT count(*) FROM user_refresh_token WHERE jti = '{key['key_id']}'") == [["1"]]
    assert not real_fence.blacklisted(key["key_id"])

    stop_server(page, hub, "alice")
    assert real_fence.blacklisted(key["key_id"]), "stopping the server revokes the key in Fence"
    r = requests.post(f"{real_fence.fence_url}/credentials/api/access_token", json={"api_key": key["api_key"]}, timeout=30)
    assert r.status_code == 401
    assert key["api_key"] not in hub.log()


def test_the_example_gpu_flavor_is_offered_by_the_workspace_gpu_policy(hub: Hub, real_fence: FenceBed) -> None:
    example = load_catalogue(default_catalogue_path())
    gpu = example.get("python-gpu")
    assert gpu and gpu.authz_resource == "/workspace-flavors/gpu" and not gpu.allowed_groups, "the shipped example restricts by resource"
    assert real_fence.user_yaml()["users"]["gpu-gabi"]["policies"] == ["workspace", "workspace-gpu"]
    assert real_fence.user_yaml()["users"]["test"]["policies"] == ["workspace"]
    # userinfo `groups` is empty for both; only gpu-gabi holds /workspace-flavors/gpu in arborist.
    bearer = {}
    for user, sees_gpu in (("gpu-gabi", True), ("test", False)):
        s, r = hub.login(user)
        assert r.status_code == 200, r.text[:300]
        form = s.get(f"{hub.url}hub/spawn", timeout=30).text
        assert ('value="python-gpu"' in form) is sees_gpu, user
        assert hub.user_model(user)["groups"] == []
        # The portal's options API: a Fence access token of the user, as revproxy forwards it.
        bearer[user] = requests.Session()
        bearer[user].headers["Authorization"] = f"bearer {hub.api('GET', f'users/{user}').json()['auth_state']['access_token']}"
        options = bearer[user].get(f"{hub.url}lw-workspace/options", timeout=30)
        assert options.status_code == 200, options.text[:300]
        assert ("python-gpu" in [o["id"] for o in options.json()]) is sees_gpu, (user, options.json())
    # A forged launch of the GPU flavor by the user without the policy, and through the hub's API: refused.
    # ("test", not alice: the other tests of this module use alice's server.)
    forged = bearer["test"].post(f"{hub.url}lw-workspace/launch?id=python-gpu", timeout=60)
    assert forged.status_code == 403 and "not allowed to launch the flavor 'python-gpu'" in forged.text, forged.text[:300]
    r = hub.api("POST", "users/test/server", json={"flavor": "python-gpu"})
    assert r.status_code == 403 and "not allowed" in r.json()["message"]
    assert hub.user_model("test")["servers"] == {}, "nothing started"


def test_user_without_the_policy_gets_our_403_page(page: Page, hub: Hub, real_fence: FenceBed) -> None:
    log_in_real_fence(page, hub, real_fence, "nobody-ned")
    body = page.locator("body")
    expect(body).to_contain_text("403")
    expect(body).to_contain_text("method 'access' for service 'jupyterhub' on resource '/workspace'")
    assert "Traceback" not in page.content()
    # Logged in to real Fence as nobody-ned: the page names the account, and Logout ends Fence's
    # session too, so the next login can be someone else.
    expect(page.locator("#gen3-user")).to_have_text("nobody-ned")
    assert page.request.get(f"{real_fence.fence_url}/user", max_redirects=0).status == 200, "logged in to Fence"
    page.locator("#logout").click()
    page.wait_for_url(re.compile(re.escape(hub.url)))
    assert page.request.get(f"{real_fence.fence_url}/user", max_redirects=0).status == 401


def test_permission_removed_while_logged_in_is_lost_at_the_next_refresh(page: Page, hub: Hub, real_fence: FenceBed) -> None:
    log_in_real_fence(page, hub, real_fence, "test")
    expect(page.locator(".gen3-flavors")).to_be_visible()
    real_fence.set_policies("test", [])
    try:
        time.sleep(1.5)  # past auth_refresh_age (1 s in the test config)
        page.goto(f"{hub.url}hub/home")
        # The refresh sees /workspace gone from Fence's authz: the hub session ends...
        expect(page.get_by_text(re.compile("^Sign in with "))).to_be_visible()
        assert "/hub/login" in page.url
        # ...and logging in again (Fence's own session is still alive) is refused.
        page.get_by_text(re.compile("^Sign in with ")).click()
        body = page.locator("body")
        expect(body).to_contain_text("403")
        expect(body).to_contain_text("not allowed to use the Workspace")
    finally:
        real_fence.set_policies("test", ["workspace"])


def test_logout_goes_through_fence_to_an_allowed_url(page: Page, hub: Hub, real_fence: FenceBed) -> None:
    log_in_real_fence(page, hub, real_fence, "admin-ada")
    expect(page.locator(".gen3-flavors")).to_be_visible()
    assert page.request.get(f"{real_fence.fence_url}/user", max_redirects=0).status == 200, "logged in to Fence"
    fence_hops: list[str] = []
    page.on("request", lambda req: fence_hops.append(req.url) if req.url.startswith(f"{real_fence.fence_url}/logout") else None)
    page.goto(f"{hub.url}hub/logout")
    page.wait_for_url(re.compile(re.escape(hub.url)))
    assert fence_hops, "logout went through Fence"
    # Fence's session is gone too: the next login goes back to its identity provider.
    r = page.request.get(f"{real_fence.fence_url}/user", max_redirects=0)
    assert r.status == 401
    page.screenshot(path=screenshot_path("real-fence-logged-out"))
