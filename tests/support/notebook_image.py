"""The notebook image's userland without Docker: reads images/notebook/Dockerfile and assembles what its final stage adds (files, env, the Python lock, gen3-client) into a folder, refusing any step it cannot reproduce."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import gen3client

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "notebook" / "Dockerfile"
# What the base image (docker-stacks) defines and the Dockerfile refers to.
BASE_ARGS = {"NB_UID": "1000", "NB_GID": "100", "NB_USER": "jovyan", "CONDA_DIR": "/opt/conda"}


def instructions(dockerfile: Path = DOCKERFILE) -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
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


def final_stage(dockerfile: Path = DOCKERFILE) -> list[str]:
    steps = instructions(dockerfile)
    last_from = max(i for i, s in enumerate(steps) if s.startswith("FROM "))
    return steps[last_from:]


def global_args(dockerfile: Path = DOCKERFILE) -> dict[str, str]:
    steps = instructions(dockerfile)
    first_from = min(i for i, s in enumerate(steps) if s.startswith("FROM "))
    return dict(s[len("ARG "):].split("=", 1) for s in steps[:first_from] if s.startswith("ARG ") and "=" in s)


@dataclass
class Plan:
    """What the final stage does, in terms a test can reproduce."""

    env: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, str, int | None]] = field(default_factory=list)  # (source, path in image, mode)
    gen3_client: str = ""  # path in the image
    requirements: str = ""  # repository path of the pip lock
    pip_flags: list[str] = field(default_factory=list)
    import_check: str = ""
    workdir: str = ""
    user: str = ""


_COPY = re.compile(r"^COPY((?:\s+--[a-z]+=\S+)*)\s+(\S+)\s+(\S+)$")


def plan(dockerfile: Path = DOCKERFILE) -> Plan:
    """Read the final stage; any instruction this cannot reproduce is an error, so the two cannot drift."""
    result = Plan()
    staged: dict[str, str] = {}  # path in image -> repository path, for the pip step
    for step in final_stage(dockerfile)[1:]:
        word, _, rest = step.partition(" ")
        if word in ("ARG", "LABEL", "SHELL"):
            continue  # build metadata: nothing a running server sees
        if word == "ENV":
            result.env.update({k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', rest)})
        elif word == "USER":
            result.user = rest.strip()
        elif word == "WORKDIR":
            result.workdir = rest.strip()
        elif word == "COPY":
            match = _COPY.match(step)
            if not match:
                raise ValueError(f"cannot reproduce: {step}")
            flags = dict(f.lstrip("-").split("=", 1) for f in match.group(1).split())
            source, target = match.group(2), match.group(3)
            if flags.get("from") == "gen3-client":
                result.gen3_client = target
            elif "from" in flags:
                raise ValueError(f"cannot reproduce a copy from stage {flags['from']}: {step}")
            elif not (REPO / source).is_file():
                raise ValueError(f"{source} (copied by the Dockerfile) is not a file in the repository")
            elif target.startswith("/tmp/"):
                staged[target] = source
            else:
                result.files.append((source, target, int(flags["chmod"], 8) if "chmod" in flags else None))
        elif word == "RUN":
            match = re.match(r"^pip install ((?:--\S+ )+)(\S+)(.*)$", rest.strip())
            if not match or match.group(2) not in staged:
                raise ValueError(f"cannot reproduce: {step}")
            result.pip_flags = match.group(1).split()
            result.requirements = staged[match.group(2)]
            check = re.search(r'python -c "([^"]+)"', match.group(3))
            result.import_check = check.group(1) if check else ""
        else:
            raise ValueError(f"cannot reproduce: {step}")
    return result


def image_path(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def assemble_files(root: Path) -> Plan:
    """Put the files the final stage copies, and the gen3-client the build stage makes, under `root`."""
    p = plan()
    for source, target, mode in p.files:
        dest = image_path(root, target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / source, dest)
        if mode is not None:
            dest.chmod(mode)
    dest = image_path(root, p.gen3_client)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The same commit the build stage fetches: build.sh reads the pin from this Dockerfile.
    shutil.copyfile(gen3client.binary(), dest)
    dest.chmod(0o755)
    return p


def install_requirements(venv: Path, python: str) -> Path:
    """The pip step: a venv with the lock installed with the Dockerfile's flags (uv, from its cache), then its import check."""
    p = plan()
    uv = shutil.which("uv") or "uv"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    if not (venv / "bin" / "python").exists():
        subprocess.run([uv, "venv", "--quiet", "--python", python, str(venv)], env=env, cwd=venv.parent, check=True, timeout=120)
    # uv's cache is what makes a warm run fast; the lock's path is added below.
    flags = [f for f in p.pip_flags if f not in ("--no-cache-dir", "--requirement", "-r")]
    assert "--require-hashes" in flags, "the image installs the lock with hashes"
    command = [uv, "pip", "install", "--python", str(venv / "bin" / "python"), *flags, "--requirement", str(REPO / p.requirements)]
    for extra in (["--offline"], []):
        done = subprocess.run(command + extra, env=env, cwd=venv.parent, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode == 0:
            break
    else:
        raise RuntimeError(f"installing {p.requirements} failed:\n{done.stderr[-3000:]}")
    if p.import_check:
        subprocess.run([str(venv / "bin" / "python"), "-c", p.import_check], check=True, timeout=300)
    return venv / "bin" / "python"
