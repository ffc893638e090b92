"""The real gen3-client (built from the pinned commit) in a server the embedded mode spawned, against the Fence stand-in: no `configure`, download into the drive, token refresh, key rotation and revocation."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from gen3workspace.spawner.local import safe_name
from tests.support.fence import FenceStandIn
from tests.support.gen3client import CONFIG, files_holding, gen3_client, hook_profile, read_profile, run_hooks
from tests.support.hub import Hub

DATA_AUTHZ = {
    "/workspace": [{"service": "jupyterhub", "method": "access"}],
    "/programs/demo": [{"service": "fence", "method": "read-storage"}],
}


@pytest.fixture(scope="module")
def fence() -> Iterator[FenceStandIn]:
    f = FenceStandIn()
    f.add_user("rita", authz=DATA_AUTHZ)
    f.start()
    yield f
    f.stop()


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


def start_server(hub: Hub, user: str) -> dict[str, str]:
    r = hub.api("POST", f"users/{user}/server", json={"flavor": "python-small"})
    assert r.status_code in (201, 202), r.text
    hub.wait_for_server(user)
    return server_env(hub, user)


def stop_server(hub: Hub, user: str) -> None:
    r = hub.api("DELETE", f"users/{user}/server")
    assert r.status_code in (202, 204), r.text
    hub.wait_for_server(user, ready=False)


def test_gen3_client_works_in_a_spawned_server_and_its_key_stays_off_the_drive(hub: Hub, fence: FenceStandIn) -> None:
    user = "rita"
    drive = hub.data_dir / "drives" / safe_name(user)
    guid = fence.add_object("cohort.csv", b"id,age\n1,42\n", authz=["/programs/demo"])
    hub.login(user)
    env = start_server(hub, user)
    assert env["GEN3_CLIENT_VERSION_CHECK"] == "false"

    # start.sh runs the image's hooks with the server's env before the server starts.
    hooks = run_hooks(env, cwd=drive)
    assert hooks.returncode == 0, hooks.stderr
    profile = hook_profile(hooks.stdout)
    key = json.loads(Path(env["GEN3_API_KEY"]).read_text())
    signature = key["api_key"].rsplit(".", 1)[1]

    # Tokens from the key live 4 s here, so the refresh below happens within the test.
    fence.access_token_lifetime = 4
    auth = gen3_client(["auth", f"--profile={profile}"], env, drive)
    assert auth.returncode == 0, auth.stderr
    assert "You have access to the following resource(s)" in auth.stderr and "/programs/demo" in auth.stderr
    assert [c.status for c in fence.calls_to("/user/credentials/api/access_token")] == [200], "the placeholder token is traded for a real one"

    download = gen3_client(["download-single", f"--profile={profile}", f"--guid={guid}", "--download-path=data", "--no-prompt"], env, drive)
    assert download.returncode == 0, download.stderr
    assert (drive / "data" / "cohort.csv").read_bytes() == b"id,age\n1,42\n"

    # The file gen3-client rewrote holds the key and a real token, and is not on the drive.
    saved = read_profile(drive, profile)
    assert saved["key_id"] == key["key_id"] and saved["access_token"].count(".") == 2
    assert (drive / CONFIG).is_symlink()
    assert files_holding(drive, signature) == [], "the API key must not be on the persistent drive"
    assert files_holding(drive, saved["access_token"].rsplit(".", 1)[1]) == []

    # The token expires: gen3-client gets a 401 and refreshes with the key by itself.
    short = saved["access_token"]
    time.sleep(max(0.0, jwt.decode(short, options={"verify_signature": False})["exp"] - time.time() + 1))
    before = len(fence.calls)
    again = gen3_client(["auth", f"--profile={profile}"], env, drive)
    assert again.returncode == 0, again.stderr
    statuses = [(c.path, c.status) for c in fence.calls[before:]]
    assert statuses[:3] == [("/user/user", 401), ("/user/credentials/api/access_token", 200), ("/user/user", 200)], statuses
    assert read_profile(drive, profile)["access_token"] != short
    fence.access_token_lifetime = 1200

    # Restart: a new key; the hook and the client agree on it at once.
    old_profile = read_profile(drive, profile)
    stop_server(hub, user)
    assert not Path(env["GEN3_CLIENT_RUNTIME_DIR"]).exists(), "the file with the key goes with the server"
    env = start_server(hub, user)
    hooks = run_hooks(env, cwd=drive)
    assert hooks.returncode == 0, hooks.stderr
    assert hook_profile(hooks.stdout) == profile
    new_key = json.loads(Path(env["GEN3_API_KEY"]).read_text())
    assert new_key["key_id"] != old_profile["key_id"]
    assert read_profile(drive, profile)["key_id"] == new_key["key_id"]
    auth = gen3_client(["auth", f"--profile={profile}"], env, drive)
    assert auth.returncode == 0, auth.stderr
    stop_server(hub, user)

    # After stop the old keys no longer work: a copy of the old profile cannot get a token.
    elsewhere = hub.tmp / "old-profile-home"
    (elsewhere / ".gen3").mkdir(parents=True, exist_ok=True)
    (elsewhere / CONFIG).write_text(
        f"[{profile}]\n" + "".join(f"{k}={v}\n" for k, v in {**old_profile, "access_token": "expired-placeholder"}.items())
    )
    old_env = {"PATH": os.environ["PATH"], "HOME": str(elsewhere), "GEN3_CLIENT_VERSION_CHECK": "false"}
    before = len(fence.calls)
    refused = gen3_client(["auth", f"--profile={profile}"], old_env, elsewhere)
    assert ("/user/credentials/api/access_token", 401) in [(c.path, c.status) for c in fence.calls[before:]]
    assert "You have access" not in refused.stderr
    assert fence.active_keys(user) == []
