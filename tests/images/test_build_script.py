"""Tests of images/build.sh against a fake `docker` that records its calls, and of the images CI workflow."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.images.helpers import BUILD_SCRIPT, IMAGES, REPO_ROOT

# Just what the script needs besides docker: bash, coreutils, awk, git. Not /usr/local/bin,
# where a real docker CLI may live.
BASE_PATH = "/usr/bin:/bin"

FAKE_DOCKER = """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_DOCKER_LOG"
if [ "$1" = info ]; then exit "${FAKE_DOCKER_INFO_RC:-0}"; fi
if [ "$1" = build ] && [ -n "$FAKE_DOCKER_BUILD_RC" ]; then exit "$FAKE_DOCKER_BUILD_RC"; fi
exit 0
"""


def project_version() -> str:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


@pytest.fixture
def fake_docker(tmp_path: Path) -> dict[str, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER, encoding="utf-8")
    docker.chmod(0o755)
    return {"bin": bin_dir, "log": tmp_path / "docker.log"}


# What a release's CI gives for the notebook bases, whose committed default carries the
# placeholder digest (build.sh refuses it; see test_unpinned_images_are_refused_before_any_build).
RELEASE_BASES = {
    "NOTEBOOK_PYTHON_BASE_IMAGE": "quay.io/jupyter/scipy-notebook:2025-07-07@sha256:" + "a" * 64,
    "NOTEBOOK_R_BASE_IMAGE": "quay.io/jupyter/r-notebook:2025-07-07@sha256:" + "d" * 64,
}


def run_build(fake: dict[str, Path] | None, *args: str, release_bases: bool = True, **env_overrides: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("bash") is None:
        pytest.skip("bash is needed for images/build.sh")
    env = {"PATH": BASE_PATH, "HOME": os.environ.get("HOME", "/tmp"), **(RELEASE_BASES if release_bases else {})}
    if fake is not None:
        env["PATH"] = f"{fake['bin']}{os.pathsep}{BASE_PATH}"
        env["FAKE_DOCKER_LOG"] = str(fake["log"])
    env.update(env_overrides)
    return subprocess.run(
        ["bash", str(BUILD_SCRIPT), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def calls(fake: dict[str, Path]) -> list[str]:
    return fake["log"].read_text(encoding="utf-8").splitlines() if fake["log"].exists() else []


def builds(fake: dict[str, Path]) -> dict[str, str]:
    """Image tag -> the whole `docker build` command line."""
    result = {}
    for line in calls(fake):
        if line.startswith("build "):
            tag = re.search(r"--tag (\S+)", line)
            assert tag, line
            result[tag.group(1)] = line
    return result


def test_without_a_docker_engine_it_exits_2(fake_docker: dict[str, Path]) -> None:
    result = run_build(fake_docker, FAKE_DOCKER_INFO_RC="1")

    assert result.returncode == 2
    assert "docker info" in result.stderr
    assert [c for c in calls(fake_docker) if not c.startswith("info")] == []


def test_without_a_docker_cli_it_exits_2() -> None:
    if shutil.which("docker", path=BASE_PATH):
        pytest.skip("a docker CLI is installed in /usr/bin")

    result = run_build(None)

    assert result.returncode == 2
    assert "'docker' is not installed" in result.stderr


def test_builds_all_images_with_the_default_registry_and_project_version(fake_docker: dict[str, Path]) -> None:
    result = run_build(fake_docker)

    assert result.returncode == 0, result.stderr
    version = project_version()
    built = builds(fake_docker)
    assert set(built) == {
        f"quay.io/gen3-workspace/hub:{version}",
        f"quay.io/gen3-workspace/notebook-python:{version}",
        f"quay.io/gen3-workspace/notebook-r:{version}",
    }
    hub = built[f"quay.io/gen3-workspace/hub:{version}"]
    assert f"--file {IMAGES}/hub/Dockerfile" in hub
    assert hub.endswith(f" {REPO_ROOT}")  # the repository root is the build context
    python = built[f"quay.io/gen3-workspace/notebook-python:{version}"]
    r = built[f"quay.io/gen3-workspace/notebook-r:{version}"]
    for line in (python, r):
        assert f"--file {IMAGES}/notebook/Dockerfile" in line
        assert "GEN3_CLIENT" not in line, "gen3-client is pinned in the Dockerfile only"
    assert "--build-arg BASE_IMAGE=quay.io/jupyter/scipy-notebook:" in python
    assert "--build-arg BASE_IMAGE=quay.io/jupyter/r-notebook:" in r
    assert not any(c.startswith("push") for c in calls(fake_docker))


@pytest.mark.parametrize(
    "target,env,says",
    [
        ("notebook-python", {}, "NOTEBOOK_PYTHON_BASE_IMAGE 'quay.io/jupyter/scipy-notebook:2025-07-07' still has the placeholder digest"),
        ("notebook-r", {}, "docker buildx imagetools inspect quay.io/jupyter/r-notebook:2025-07-07"),
        ("hub", {"HUB_PYTHON_IMAGE": "python:3.11.13-slim-bookworm"}, "HUB_PYTHON_IMAGE 'python:3.11.13-slim-bookworm' is not pinned by digest"),
        ("notebook-python", {"NOTEBOOK_PYTHON_BASE_IMAGE": "quay.io/jupyter/scipy-notebook@sha256:" + "a" * 64}, "is not pinned by digest"),
        ("notebook-r", {"NOTEBOOK_R_BASE_IMAGE": RELEASE_BASES["NOTEBOOK_R_BASE_IMAGE"], "NOTEBOOK_GO_IMAGE": "golang:1.26.8-bookworm"}, "NOTEBOOK_GO_IMAGE 'golang:1.26.8-bookworm' is not pinned"),
    ],
)
def test_unpinned_images_are_refused_before_any_build(fake_docker: dict[str, Path], target: str, env: dict[str, str], says: str) -> None:
    result = run_build(fake_docker, target, release_bases=False, **env)

    assert result.returncode == 64
    assert says in result.stderr
    assert calls(fake_docker) == [], "nothing ran, not even docker info"


def test_the_committed_hub_base_passes_the_pin_check(fake_docker: dict[str, Path]) -> None:
    result = run_build(fake_docker, "hub", release_bases=False)

    assert result.returncode == 0, result.stderr
    assert list(builds(fake_docker)) == [f"quay.io/gen3-workspace/hub:{project_version()}"]


def test_registry_and_tag_come_from_the_environment(fake_docker: dict[str, Path]) -> None:
    result = run_build(fake_docker, "hub", IMAGE_REGISTRY="registry.example.test/team/", IMAGE_TAG="1.2.3-rc1")

    assert result.returncode == 0, result.stderr
    assert list(builds(fake_docker)) == ["registry.example.test/team/hub:1.2.3-rc1"]
    assert "--build-arg VERSION=1.2.3-rc1" in builds(fake_docker)["registry.example.test/team/hub:1.2.3-rc1"]


def test_release_overrides_are_passed_through(fake_docker: dict[str, Path]) -> None:
    pinned = "quay.io/jupyter/r-notebook:2025-07-07@sha256:" + "b" * 64

    go = "golang:1.26.8-bookworm@sha256:" + "c" * 64

    result = run_build(fake_docker, "notebook-r", NOTEBOOK_R_BASE_IMAGE=pinned, NOTEBOOK_GO_IMAGE=go)

    assert result.returncode == 0, result.stderr
    (line,) = builds(fake_docker).values()
    assert f"--build-arg BASE_IMAGE={pinned}" in line
    assert f"--build-arg GO_IMAGE={go}" in line


def test_push_pushes_exactly_what_was_built(fake_docker: dict[str, Path]) -> None:
    result = run_build(fake_docker, "--push", IMAGE_TAG="9.9.9")

    assert result.returncode == 0, result.stderr
    pushed = [c.split(" ", 1)[1] for c in calls(fake_docker) if c.startswith("push ")]
    assert sorted(pushed) == sorted(builds(fake_docker))
    assert len(pushed) == 3


def test_a_failed_build_pushes_nothing(fake_docker: dict[str, Path]) -> None:
    result = run_build(fake_docker, "--push", FAKE_DOCKER_BUILD_RC="1")

    assert result.returncode != 0
    assert not any(c.startswith("push") for c in calls(fake_docker))


@pytest.mark.parametrize("args", [("--bogus",), ("notebook-julia",)])
def test_unknown_arguments_are_usage_errors(fake_docker: dict[str, Path], args: tuple[str, ...]) -> None:
    result = run_build(fake_docker, *args)

    assert result.returncode == 64
    assert "Usage:" in result.stderr


def test_python_flavor_default_matches_the_dockerfile_and_r_shares_its_date() -> None:
    script = BUILD_SCRIPT.read_text(encoding="utf-8")
    python_default = re.search(r'^DEFAULT_NOTEBOOK_PYTHON_BASE_IMAGE="([^"]+)"', script, re.MULTILINE)
    r_default = re.search(r'^DEFAULT_NOTEBOOK_R_BASE_IMAGE="([^"]+)"', script, re.MULTILINE)
    dockerfile_default = re.search(
        r"^ARG BASE_IMAGE=(\S+)$", (IMAGES / "notebook" / "Dockerfile").read_text(encoding="utf-8"), re.MULTILINE
    )
    assert python_default and r_default and dockerfile_default

    assert python_default.group(1) == dockerfile_default.group(1)
    assert r_default.group(1).startswith("quay.io/jupyter/r-notebook:")
    assert python_default.group(1).split(":")[1] == r_default.group(1).split(":")[1]


# --- the CI workflow -----------------------------------------------------------------------


def test_ci_workflow_lints_then_builds_and_pushes_only_on_tags() -> None:
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "images.yml").read_text(encoding="utf-8"))
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    jobs = workflow["jobs"]

    assert "v*" in triggers["push"]["tags"]
    assert "pull_request" in triggers
    lint_steps = " ".join(step.get("run", "") for step in jobs["lint"]["steps"])
    assert "hadolint" in lint_steps
    assert jobs["build"]["needs"] == "lint"
    build_run = " ".join(step.get("run", "") for step in jobs["build"]["steps"])
    assert "images/build.sh --push" in build_run
    assert 'if [ "${GITHUB_REF_TYPE}" = "tag" ]; then\n  images/build.sh --push' in build_run
