"""The real gen3-client in tests: the binary build.sh makes from the pinned commit, the notebook image's start-up hooks run the way docker-stacks' start.sh runs them, and the client run as the user's server would run it."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.fence import FenceStandIn

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
BUILD = HERE / "build.sh"
RUN_HOOKS = HERE / "run-hooks.sh"
HOOKS_DIR = REPO / "images" / "notebook" / "before-notebook.d"
CONFIG = Path(".gen3") / "gen3_client_config.ini"

# A workspace user who may also read the demo program's data, which gen3-client downloads.
DATA_AUTHZ = {
    "/workspace": [{"service": "jupyterhub", "method": "access"}],
    "/programs/demo": [{"service": "fence", "method": "read-storage"}],
}

_binary: Path | None = None


def binary() -> Path:
    """The built gen3-client (built now if `scripts/setup.sh test` has not built it yet)."""
    global _binary
    if _binary is None:
        result = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"tests/support/gen3client/build.sh failed:\n{result.stderr[-3000:]}")
        _binary = Path(result.stdout.strip())
    return _binary


def data_fence(user: str) -> Iterator[FenceStandIn]:
    """A running Fence stand-in with one user holding DATA_AUTHZ, for a module-scoped fixture to `yield from`."""
    f = FenceStandIn()
    f.add_user(user, authz=DATA_AUTHZ)
    f.start()
    yield f
    f.stop()


def run_hooks(env: Mapping[str, str], hooks_dir: Path = HOOKS_DIR, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a before-notebook.d folder as start.sh does, with the server's env."""
    return subprocess.run(["bash", str(RUN_HOOKS), str(hooks_dir)], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def hook_profile(output: str) -> str:
    """The profile name the hook announced ("use: gen3-client <command> --profile=NAME")."""
    match = re.search(r"--profile=([A-Za-z0-9._-]+)\)", output)
    if not match:
        raise AssertionError(f"the hook did not name a profile:\n{output}")
    return match.group(1)


def gen3_client(args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the real binary with the server's env (no `configure` anywhere): the server's own from its PATH, else the built one."""
    program = shutil.which("gen3-client", path=env.get("PATH", "")) or str(binary())
    return subprocess.run([program, *args], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def read_profile(home: Path, profile: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string((home / CONFIG).read_text())
    return dict(parser[profile])


def files_holding(folder: Path, secret: str) -> list[Path]:
    """Regular files under `folder` (symlinks not followed) that contain `secret`."""
    found = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            if not path.is_symlink() and secret.encode() in path.read_bytes():
                found.append(path)
    return found


def check_session(fence: Any, env: Mapping[str, str], drive: Path, profile: str, guid: str, content: bytes) -> dict[str, str]:
    """What a researcher does first in a fresh server, checked step by step; returns the profile gen3-client saved.

    `gen3-client auth` works with no `configure`; `download-single` writes the file into the
    drive; neither the key nor a token lands on the drive; once the saved token has expired,
    the next command gets a 401 and refreshes with the API key by itself. `fence` is the
    stand-in: it signs the expired token put in place of the saved one (what the file holds
    an hour later).
    """
    key = json.loads(Path(env["GEN3_API_KEY"]).read_text())
    before = len(fence.calls)
    auth = gen3_client(["auth", f"--profile={profile}"], env, drive)
    assert auth.returncode == 0, auth.stderr
    assert "You have access to the following resource(s)" in auth.stderr, auth.stderr
    exchanged = [c.status for c in fence.calls[before:] if c.path == "/user/credentials/api/access_token"]
    assert exchanged == [200], "the hook's placeholder token is traded for a real one"

    download = gen3_client(["download-single", f"--profile={profile}", f"--guid={guid}", "--download-path=data", "--no-prompt"], env, drive)
    assert download.returncode == 0, download.stderr
    name = fence.objects[guid]["file_name"]
    assert (drive / "data" / name).read_bytes() == content

    saved = read_profile(drive, profile)
    assert saved["key_id"] == key["key_id"] and saved["access_token"].count(".") == 2
    assert (drive / CONFIG).is_symlink(), "gen3-client's file is a link off the drive"
    assert files_holding(drive, key["api_key"].rsplit(".", 1)[1]) == [], "the API key must not be on the persistent drive"
    assert files_holding(drive, saved["access_token"].rsplit(".", 1)[1]) == []

    expired = fence.mint_access_token(fence.api_keys[key["key_id"]]["username"], lifetime=-60)
    config = drive / CONFIG
    config.write_text(config.read_text().replace(saved["access_token"], expired))  # in place, through the link
    before = len(fence.calls)
    again = gen3_client(["auth", f"--profile={profile}"], env, drive)
    assert again.returncode == 0, again.stderr
    calls = [(c.path, c.status) for c in fence.calls[before:]]
    assert calls[:3] == [("/user/user", 401), ("/user/credentials/api/access_token", 200), ("/user/user", 200)], calls
    refreshed = read_profile(drive, profile)
    assert refreshed["access_token"] not in (saved["access_token"], expired)
    return refreshed


def check_refused(fence: Any, profile: str, old: Mapping[str, str], home: Path) -> None:
    """A copy of a stopped server's profile can no longer get a token: its key was revoked."""
    (home / ".gen3").mkdir(parents=True, exist_ok=True)
    (home / CONFIG).write_text(f"[{profile}]\n" + "".join(f"{k}={v}\n" for k, v in {**old, "access_token": "expired"}.items()))
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GEN3_CLIENT_VERSION_CHECK": "false"}
    before = len(fence.calls)
    refused = gen3_client(["auth", f"--profile={profile}"], env, home)
    assert ("/user/credentials/api/access_token", 401) in [(c.path, c.status) for c in fence.calls[before:]]
    assert "You have access" not in refused.stderr
