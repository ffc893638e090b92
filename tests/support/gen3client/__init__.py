"""The real gen3-client in tests: the binary build.sh makes from the pinned commit, the notebook image's start-up hooks run the way docker-stacks' start.sh runs them, and the client run as the user's server would run it."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
BUILD = HERE / "build.sh"
RUN_HOOKS = HERE / "run-hooks.sh"
HOOKS_DIR = REPO / "images" / "notebook" / "before-notebook.d"
CONFIG = Path(".gen3") / "gen3_client_config.ini"

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
    """Run the real binary with the server's env (no `configure` anywhere)."""
    return subprocess.run([str(binary()), *args], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


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
