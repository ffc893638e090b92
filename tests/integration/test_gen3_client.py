"""The data workflows in a server the embedded mode spawned, against the real data-plane bed (real Fence, indexd, sheepdog, moto S3): gen3-client on PATH and logged in by the spawner with no `configure`, download-single and download-multiple, the SDK examples, token refresh, key rotation and revocation."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gen3workspace.spawner.local import safe_name
from tests.support.gen3client import check_refused, check_session, check_workflows, gen3_client, hook_profile, read_profile
from tests.support.hub import Hub
from tests.support.realdata import DataBed

USER = "dana"  # may read and download the bed's project (tests/support/realfence.py)


@pytest.fixture(scope="module")
def hub(real_data: DataBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = Hub(tmp_path_factory.mktemp("g3chub"))
    h.fence = real_data.fence.register_hub("gen3-client-embedded", h.url)
    h.start()
    yield h
    h.stop()


def server_env(hub: Hub, user: str) -> dict[str, str]:
    """The environment of the user's running server process, read from /proc."""
    pid = hub.user_model(user)["servers"][""]["state"]["pid"]
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def start_server(hub: Hub, user: str) -> tuple[dict[str, str], str]:
    """Spawn as the user does; (the server's env, the profile the spawner's start hook announced in the hub log)."""
    before = len(hub.log())
    r = hub.api("POST", f"users/{user}/server", json={"flavor": "python-small"})
    assert r.status_code in (201, 202), r.text
    hub.wait_for_server(user)
    return server_env(hub, user), hook_profile(hub.log()[before:])


def stop_server(hub: Hub, user: str) -> None:
    r = hub.api("DELETE", f"users/{user}/server")
    assert r.status_code in (202, 204), r.text
    hub.wait_for_server(user, ready=False)


def test_data_workflows_in_an_embedded_mode_server(hub: Hub, real_data: DataBed) -> None:
    drive = hub.data_dir / "drives" / safe_name(USER)
    # Keys other tests of the session minted for the same user with the bed's helpers.
    keys_before = set(real_data.active_keys(USER))
    hub.login(USER)
    env, profile = start_server(hub, USER)
    assert env["GEN3_CLIENT_VERSION_CHECK"] == "false"
    assert env["GEN3_ENDPOINT"] == real_data.commons_url
    # gen3-client is on the server's PATH (scripts/setup.sh puts it next to the hub's Python).
    assert shutil.which("gen3-client", path=env["PATH"]) == str(Path(sys.executable).with_name("gen3-client"))

    record = real_data.add_object("embedded-first.csv", b"id,age\n1,42\n")
    old = check_session(real_data, env, drive, profile, record)
    # The kernel's Python is the server's own (jupyterhub-singleuser's environment).
    check_workflows(real_data, env, drive, profile, Path(sys.executable), "embedded")

    # Restart: a new key; the spawner's hook and the client agree on it at once.
    stop_server(hub, USER)
    assert not Path(env["GEN3_CLIENT_RUNTIME_DIR"]).exists(), "the file with the key goes with the server"
    env, again = start_server(hub, USER)
    assert again == profile
    new_key = json.loads(Path(env["GEN3_API_KEY"]).read_text())
    assert new_key["key_id"] != old["key_id"]
    assert read_profile(drive, profile)["key_id"] == new_key["key_id"]
    auth = gen3_client(["auth", f"--profile={profile}"], env, drive)
    assert auth.returncode == 0, auth.stderr
    stop_server(hub, USER)

    # After stop the old key no longer works.
    check_refused(real_data, profile, old, hub.tmp / "old-profile-home")
    assert set(real_data.active_keys(USER)) - keys_before == set(), "every key the servers had is revoked"
