"""The real gen3-client (built from the pinned commit) in a server the embedded mode spawned, against the Fence stand-in: no `configure`, download into the drive, token refresh, key rotation and revocation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gen3workspace.spawner.local import safe_name
from tests.support.fence import FenceStandIn
from tests.support.gen3client import check_refused, check_session, data_fence, gen3_client, hook_profile, read_profile, run_hooks
from tests.support.hub import Hub

@pytest.fixture(scope="module")
def fence() -> Iterator[FenceStandIn]:
    yield from data_fence("rita")


@pytest.fixture(scope="module")
def hub(fence: FenceStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(tmp_path_factory.mktemp("g3chub"), fence=fence).start()
    yield h
    h.stop()


def server_env(hub: Hub, user: str) -> dict[str, str]:
    """The environment of the user's running server process, read from /proc."""
    pid = hub.user_model(user)["servers"][""]["state"]["pid"]
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def start_server(hub: Hub, user: str, drive: Path) -> tuple[dict[str, str], str]:
    """Spawn, then run the image's start-up hooks with the server's env as start.sh would; (env, profile)."""
    r = hub.api("POST", f"users/{user}/server", json={"flavor": "python-small"})
    assert r.status_code in (201, 202), r.text
    hub.wait_for_server(user)
    env = server_env(hub, user)
    hooks = run_hooks(env, cwd=drive)
    assert hooks.returncode == 0, hooks.stderr
    return env, hook_profile(hooks.stdout)


def stop_server(hub: Hub, user: str) -> None:
    r = hub.api("DELETE", f"users/{user}/server")
    assert r.status_code in (202, 204), r.text
    hub.wait_for_server(user, ready=False)


def test_gen3_client_in_an_embedded_mode_server(hub: Hub, fence: FenceStandIn) -> None:
    user = "rita"
    drive = hub.data_dir / "drives" / safe_name(user)
    guid = fence.add_object("cohort.csv", b"id,age\n1,42\n", authz=["/programs/demo"])
    hub.login(user)
    env, profile = start_server(hub, user, drive)
    assert env["GEN3_CLIENT_VERSION_CHECK"] == "false"

    old = check_session(fence, env, drive, profile, guid, b"id,age\n1,42\n")

    # Restart: a new key; the hook and the client agree on it at once.
    stop_server(hub, user)
    assert not Path(env["GEN3_CLIENT_RUNTIME_DIR"]).exists(), "the file with the key goes with the server"
    env, again = start_server(hub, user, drive)
    assert again == profile
    new_key = json.loads(Path(env["GEN3_API_KEY"]).read_text())
    assert new_key["key_id"] != old["key_id"]
    assert read_profile(drive, profile)["key_id"] == new_key["key_id"]
    auth = gen3_client(["auth", f"--profile={profile}"], env, drive)
    assert auth.returncode == 0, auth.stderr
    stop_server(hub, user)

    # After stop the old key no longer works.
    check_refused(fence, profile, old, hub.tmp / "old-profile-home")
    assert fence.active_keys(user) == []


def test_the_stand_in_refuses_what_fence_refuses(fence: FenceStandIn) -> None:
    import requests

    guid = fence.add_object("secret.csv", b"x", authz=["/programs/other"])
    token = fence.mint_access_token("rita")
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{fence.url}/user/data/download/{guid}", headers=bearer, timeout=10).status_code == 403
    assert requests.get(f"{fence.url}/user/data/download/{guid}", timeout=10).status_code == 401
    assert requests.get(f"{fence.url}/index/index/no-such-guid", timeout=10).status_code == 404
    assert requests.post(f"{fence.url}/user/data/upload", json={"file_name": "a"}, headers=bearer, timeout=10).status_code == 403, "no /data_file file_upload"
    url = fence.presigned_url("GET", guid, "secret.csv")
    assert requests.get(url, timeout=10).content == b"x"
    assert requests.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"), timeout=10).status_code == 403
