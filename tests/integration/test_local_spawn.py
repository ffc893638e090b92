"""Spawning through a real hub's REST API with the local spawner: flavor checks, env, credentials, drive, hot reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gen3workspace.spawner.flavors import default_catalogue_path
from gen3workspace.spawner.local import safe_name
from tests.support.fence import FenceStandIn
from tests.support.hub import Hub


@pytest.fixture(scope="module")
def flavor_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flavors") / "flavors.yaml"
    path.write_text(default_catalogue_path().read_text())
    return path


@pytest.fixture(scope="module")
def hub(fence: FenceStandIn, flavor_file: Path, tmp_path_factory: pytest.TempPathFactory):
    h = Hub(
        tmp_path_factory.mktemp("spawnhub"),
        fence=fence,
        extra_args=["--flavors", str(flavor_file), "--egress-proxy", "http://egress.test:3128", "--no-proxy", "internal.commons.test"],
    ).start()
    yield h
    h.stop()


def drive(hub: Hub, user: str) -> Path:
    return hub.data_dir / "drives" / safe_name(user)


def start(hub: Hub, user: str, flavor: str | None):
    body = {"flavor": flavor} if flavor is not None else {}
    return hub.api("POST", f"users/{user}/server", json=body)


def stop(hub: Hub, user: str) -> None:
    r = hub.api("DELETE", f"users/{user}/server")
    assert r.status_code in (202, 204), r.text
    hub.wait_for_server(user, ready=False)


@pytest.mark.parametrize("flavor, status, words", [("python-gpu", 403, "not allowed"), ("no-such-flavor", 400, "no flavor called")])
def test_forbidden_and_unknown_flavors_via_rest_are_refused_and_create_nothing(hub: Hub, fence: FenceStandIn, flavor: str, status: int, words: str) -> None:
    hub.login("alice")
    keys_before = len(fence.api_keys)
    r = start(hub, "alice", flavor)
    assert r.status_code == status, r.text
    assert words in r.json()["message"]
    assert len(fence.api_keys) == keys_before, "no API key may be minted for a refused flavor"
    assert not drive(hub, "alice").exists()
    assert not (hub.data_dir / "credentials" / safe_name("alice")).exists()
    assert hub.user_model("alice")["servers"] == {}


def test_spawn_env_credentials_drive_and_revocation(hub: Hub, fence: FenceStandIn) -> None:
    hub.login("alice")
    r = start(hub, "alice", "r-large")
    assert r.status_code in (201, 202), r.text
    hub.wait_for_server("alice")
    keys = fence.active_keys("alice")
    assert len(keys) == 1

    # Ask the running server itself for its env, through the hub's proxy, like a notebook would.
    token = hub.api("POST", "users/alice/tokens", json={"scopes": ["access:servers!user=alice"], "note": "test"}).json()["token"]
    import requests

    env = requests.get(f"{hub.url}user/alice/api/status", headers={"Authorization": f"token {token}"}, timeout=30)
    assert env.status_code == 200
    proc_env = server_env(hub, "alice")
    assert proc_env["WORKSPACE_FLAVOR"] == "r-large"
    assert proc_env["GEN3_ENDPOINT"] == fence.url
    assert proc_env["HTTPS_PROXY"] == proc_env["http_proxy"] == "http://egress.test:3128"
    assert "internal.commons.test" in proc_env["NO_PROXY"].split(",") and "localhost" in proc_env["no_proxy"].split(",")
    creds = Path(proc_env["GEN3_API_KEY"])
    assert creds.exists() and oct(creds.stat().st_mode & 0o777) == "0o400"

    code = "from gen3.auth import Gen3Auth; a = Gen3Auth(); print('TOKEN-OK' if a.get_access_token() else 'none')"
    run_env = {"PATH": os.environ["PATH"], "HOME": proc_env["HOME"], "GEN3_API_KEY": str(creds), "NO_PROXY": proc_env["NO_PROXY"]}
    out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True, timeout=60)
    assert "TOKEN-OK" in out.stdout, out.stderr

    (drive(hub, "alice") / "results.csv").write_text("a,b\n1,2\n")
    stop(hub, "alice")
    assert fence.active_keys("alice") == [], "stopping must revoke the key"
    assert not creds.exists()
    assert (drive(hub, "alice") / "results.csv").exists()

    # Another flavor, same drive.
    assert start(hub, "alice", "python-small").status_code in (201, 202)
    hub.wait_for_server("alice")
    assert server_env(hub, "alice")["HOME"] == str(drive(hub, "alice"))
    assert (drive(hub, "alice") / "results.csv").read_text() == "a,b\n1,2\n"
    stop(hub, "alice")


def test_group_member_launches_the_gpu_flavor(hub: Hub, fence: FenceStandIn) -> None:
    hub.login("gpu-gabi")
    assert start(hub, "gpu-gabi", "python-gpu").status_code in (201, 202)
    hub.wait_for_server("gpu-gabi")
    assert server_env(hub, "gpu-gabi")["WORKSPACE_FLAVOR"] == "python-gpu"
    stop(hub, "gpu-gabi")


def test_removing_a_user_keeps_their_drive(hub: Hub) -> None:
    hub.login("admin-ada")
    assert start(hub, "admin-ada", None).status_code in (201, 202)
    hub.wait_for_server("admin-ada")
    (drive(hub, "admin-ada") / "keep.txt").write_text("x")
    stop(hub, "admin-ada")
    assert hub.api("DELETE", "users/admin-ada").status_code == 204
    assert (drive(hub, "admin-ada") / "keep.txt").exists()


def test_catalogue_edit_is_hot_reloaded_and_a_broken_edit_keeps_the_last_good(hub: Hub, flavor_file: Path) -> None:
    s, _ = hub.login("alice")
    form = s.get(f"{hub.url}hub/spawn", timeout=30).text
    assert 'value="r-large"' in form

    good = yaml.safe_load(flavor_file.read_text())
    broken = json.loads(json.dumps(good))
    broken["flavors"][1]["memory"]["limit"] = "2 GB"
    flavor_file.write_text(yaml.safe_dump(broken))
    time.sleep(0.05)
    form = s.get(f"{hub.url}hub/spawn", timeout=30).text
    assert 'value="r-large"' in form, "the last good catalogue keeps serving"
    assert hub.log().count("Flavor catalogue edit rejected") == 1
    s.get(f"{hub.url}hub/spawn", timeout=30)
    assert hub.log().count("Flavor catalogue edit rejected") == 1, "one error per broken edit, not per request"

    fixed = json.loads(json.dumps(good))
    fixed["flavors"] = [f for f in fixed["flavors"] if f["name"] != "r-large"]
    fixed["flavors"][0]["display_name"] = "Python hot-reloaded"
    flavor_file.write_text(yaml.safe_dump(fixed))
    form = s.get(f"{hub.url}hub/spawn", timeout=30).text
    assert 'value="r-large"' not in form
    assert "Python hot-reloaded" in form
    assert start(hub, "alice", "r-large").status_code == 400
    flavor_file.write_text(yaml.safe_dump(good))


def test_no_token_or_key_in_the_hub_log(hub: Hub, fence: FenceStandIn) -> None:
    log = hub.log()
    assert "Issued Fence API key" in log
    assert fence.client_secret not in log
    for entry in fence.api_keys.values():
        assert entry["api_key"] not in log
        assert entry["api_key"].split(".")[2] not in log
    assert not [t for t in fence.issued_tokens if t.split(".")[2] in log]


def server_env(hub: Hub, user: str) -> dict[str, str]:
    """The environment of the user's running server process, read from /proc."""
    pid = hub.user_model(user)["servers"][""]["state"]["pid"]
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
