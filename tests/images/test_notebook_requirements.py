"""Tests that the notebook images' Python lock installs in a fresh venv and gives a working Gen3 SDK: `import gen3` and `Gen3Auth()` from GEN3_API_KEY."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.images.helpers import COMMONS, NOTEBOOK, REQUIREMENTS, make_api_key, write_credentials

# The lock is universal; these cover both sides of its python_full_version forks
# (< 3.12, < 3.13, >= 3.13). 3.11 is the project's own Python and is always required;
# the others run where the machine has them (never downloaded: UV_PYTHON_DOWNLOADS=never).
PYTHONS = ["3.11", "3.12", "3.13"]
INSTALL_TIMEOUT = 900  # cold uv cache: a few hundred MB of wheels from the package index

CHECK_SCRIPT = r"""
import importlib.metadata as md, json, sys
from packaging.markers import Marker
from packaging.requirements import Requirement

import gen3
from gen3.auth import Gen3Auth

pinned, wrong = 0, []
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.strip()
    if not line or line.startswith(("#", "--")):
        continue
    req = Requirement(line.rstrip("\\ ").strip())
    if req.marker is not None and not req.marker.evaluate():
        continue
    pinned += 1
    (version,) = [s.version for s in req.specifier]
    if md.version(req.name) != version:
        wrong.append(f"{req.name} {md.version(req.name)} != {version}")

auth = Gen3Auth()  # reads GEN3_API_KEY, like a notebook in the workspace
print(json.dumps({"gen3": md.version("gen3"), "endpoint": auth.endpoint, "pinned": pinned, "wrong": wrong}))
"""


def uv() -> str:
    found = shutil.which("uv")
    if not found:
        pytest.fail("uv is not on PATH; it is the project's package tool (see README)")
    return found


def uv_env() -> dict[str, str]:
    env = dict(os.environ)
    env["UV_PYTHON_DOWNLOADS"] = "never"
    # Whatever venv runs pytest must not leak into the one under test.
    env.pop("VIRTUAL_ENV", None)
    env.pop("UV_PROJECT_ENVIRONMENT", None)
    return env


def find_python(version: str) -> str | None:
    """An installed interpreter for `version`: what uv finds, else a pyenv-installed one."""
    result = subprocess.run(
        [uv(), "python", "find", "--no-project", version],
        env=uv_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode == 0 and result.stdout.strip():
        return result.stdout.strip()
    # uv stops at a pyenv shim for a version that is installed but not activated.
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="module", params=PYTHONS, ids=[f"py{v}" for v in PYTHONS])
def venv_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with images/notebook/requirements.txt installed, as the image's pip step does."""
    version: str = request.param
    interpreter = find_python(version)
    if interpreter is None:
        if version == PYTHONS[0]:
            pytest.fail(f"Python {version} not found by uv")
        pytest.skip(f"Python {version} is not installed here")
    venv = tmp_path_factory.mktemp(f"notebook-venv-{version}") / "venv"
    work = venv.parent  # outside the repository: no project settings apply
    subprocess.run(
        [uv(), "venv", "--quiet", "--python", interpreter, str(venv)], env=uv_env(), cwd=work, check=True, timeout=120
    )
    python = venv / "bin" / "python"
    command = [uv(), "pip", "install", "--python", str(python), "--require-hashes", "--requirement", str(REQUIREMENTS)]
    # From the cache alone first (a warm run then takes a second, not the index round trips);
    # the hashes in the lock check whatever the cache hands out.
    for extra in (["--offline"], []):
        install = subprocess.run(
            command + extra,
            env=uv_env(),
            cwd=work,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
        if install.returncode == 0:
            return python
    pytest.fail(f"uv pip install -r {REQUIREMENTS.name} failed:\n{install.stderr[-4000:]}")


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
def test_lock_installs_and_the_sdk_authenticates_from_gen3_api_key(venv_python: Path, tmp_path: Path) -> None:
    key = write_credentials(tmp_path / "credentials.json", "key-id", make_api_key(issuer=f"{COMMONS}/user"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "GEN3_API_KEY": str(key)}

    result = subprocess.run(
        [str(venv_python), "-c", CHECK_SCRIPT, str(REQUIREMENTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["gen3"] == pinned_gen3_version(venv_python)
    assert report["endpoint"] == COMMONS  # from the key's issuer: no network call was needed
    assert report["pinned"] > 10
    assert report["wrong"] == []


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
def test_installed_set_is_consistent(venv_python: Path) -> None:
    result = subprocess.run(
        [uv(), "pip", "check", "--python", str(venv_python)],
        env=uv_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def pinned_gen3_versions() -> dict[str, str]:
    """Marker ("" for none) -> the exact gen3 version requirements.in pins under it."""
    found = dict(
        (marker.strip(), version)
        for version, marker in re.findall(r"^gen3==([^\s;\\]+)\s*(?:;(.*))?$", (NOTEBOOK / "requirements.in").read_text(encoding="utf-8"), re.MULTILINE)
    )
    assert found, "requirements.in must pin gen3 exactly"
    return found


def pinned_gen3_version(python: Path) -> str:
    """The gen3 version requirements.in pins for the venv's Python."""
    version = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"], capture_output=True, text=True, check=True).stdout.strip()
    marker_cls = pytest.importorskip("packaging.markers").Marker
    (pin,) = [v for m, v in pinned_gen3_versions().items() if not m or marker_cls(m).evaluate({"python_full_version": version, "python_version": version.rsplit(".", 1)[0]})]
    return pin


def test_the_sdk_is_the_newest_major_where_python_allows() -> None:
    # gen3 5.x needs Python >= 3.13: the lock must carry it there, and 4.x below.
    pins = pinned_gen3_versions()
    assert any(v.startswith("5.") and ">= \"3.13\"" in m for m, v in pins.items()), pins


def locked_versions() -> dict[str, list[str]]:
    """Name -> pinned versions in requirements.txt (a universal lock may pin one per Python)."""
    versions: dict[str, list[str]] = {}
    for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", REQUIREMENTS.read_text(encoding="utf-8"), re.MULTILINE):
        versions.setdefault(canonical(name), []).append(version)
    return versions


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_is_fully_pinned_and_hashed() -> None:
    text = REQUIREMENTS.read_text(encoding="utf-8")
    # One block per requirement: its continuation lines (hashes, "# via") are indented.
    blocks = [b for b in re.split(r"\n(?=\S)", text) if b.strip() and not b.startswith("#")]

    assert len(blocks) > 10
    for block in blocks:
        first = block.splitlines()[0]
        assert re.match(r"^[A-Za-z0-9_.-]+==[^\s;]+", first), f"not an exact pin: {first}"
        assert "--hash=sha256:" in block, f"no hash: {first}"


def test_lock_matches_requirements_in() -> None:
    # Catches an edit of requirements.in that was not re-locked.
    specifier_set = pytest.importorskip("packaging.specifiers").SpecifierSet
    locked = locked_versions()
    declared = [
        line.split("#", 1)[0].strip()
        for line in (NOTEBOOK / "requirements.in").read_text(encoding="utf-8").splitlines()
        if line.split("#", 1)[0].strip()
    ]

    assert declared
    for line in declared:
        name, spec = re.match(r"^([A-Za-z0-9_.-]+)([^;]*)", line).groups()  # type: ignore[union-attr]
        assert canonical(name) in locked, f"{name} is in requirements.in but not in the lock"
        if ";" in line:  # a per-Python pin: the lock carries exactly that version among its forks
            assert spec.strip().lstrip("=") in locked[canonical(name)], f"lock lacks {line}"
            continue
        for version in locked[canonical(name)]:
            assert version in specifier_set(spec), f"lock pins {name}=={version}, requirements.in says {spec}"
    assert sorted(locked["gen3"]) == sorted(pinned_gen3_versions().values())
