"""Tests of tests/support/gen3client/build.sh: the pinned gen3-client the tests run is the commit the notebook image builds."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.images.helpers import NOTEBOOK, REPO_ROOT

BUILD = REPO_ROOT / "tests" / "support" / "gen3client" / "build.sh"
BINARY = REPO_ROOT / ".cache" / "gen3-client" / "bin" / "gen3-client"


def pin(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", (NOTEBOOK / "Dockerfile").read_text(), re.MULTILINE)
    assert match
    return match.group(1)


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUILD), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=False)


def test_the_built_binary_is_the_pinned_version() -> None:
    result = run()  # cached after `scripts/setup.sh test`: prints the path and returns

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(BINARY)
    version = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, env={"HOME": str(BINARY.parent)}, check=True)
    assert version.stdout.strip() == f"gen3-client version {pin('GEN3_CLIENT_VERSION')}"
    assert pin("GEN3_CLIENT_COMMIT") in BINARY.with_name("gen3-client.stamp").read_text()


def test_a_missing_archive_says_how_to_get_it(tmp_path: Path) -> None:
    result = run("--force", GEN3_CLIENT_SOURCE=str(tmp_path / "nope.tar.gz"))

    assert result.returncode == 1
    assert "is missing" in result.stderr and pin("GEN3_CLIENT_COMMIT") in result.stderr and "git -C cdis-data-client archive" in result.stderr
    assert BINARY.exists(), "a failed build leaves the cached binary alone"


def test_an_archive_of_another_commit_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "main.go").write_text("package main\nfunc main() {}\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.test"]
    subprocess.run([*git, "init", "--quiet"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "x"], check=True)
    archive = tmp_path / "other.tar.gz"
    subprocess.run([*git, "archive", "--format=tar.gz", "--prefix=x/", "-o", str(archive), "HEAD"], check=True)

    result = run("--force", GEN3_CLIENT_SOURCE=str(archive))

    assert result.returncode == 1
    assert "refusing to build it" in result.stderr
    assert BINARY.exists()


@pytest.mark.parametrize("name", ["GEN3_CLIENT_VERSION", "GEN3_CLIENT_COMMIT"])
def test_the_pin_lives_only_in_the_dockerfile(name: str) -> None:
    assert pin(name) not in BUILD.read_text(), "build.sh reads the pin from the Dockerfile"
