"""The notebook image's userland without Docker: what images/notebook/Dockerfile's final stage adds, assembled from that Dockerfile, run as a user's server by the embedded mode's hub."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gen3workspace.spawner.local import safe_name
from tests.images.helpers import HOOK, JUPYTER_CONFIG, REQUIREMENTS
from tests.support import notebook_image
from tests.support.gen3client import RUN_HOOKS, check_session, hook_profile
from tests.support.hub import Hub
from tests.support.realdata import DataBed

def test_the_assembly_reproduces_every_step_of_the_final_stage() -> None:
    plan = notebook_image.plan()  # raises on any step it could not reproduce

    assert plan.env == {"GEN3_CLIENT_VERSION_CHECK": "false"}
    assert sorted((s, t) for s, t, _ in plan.files) == sorted(
        [
            (str(HOOK.relative_to(notebook_image.REPO)), "/usr/local/bin/before-notebook.d/50-gen3-client-profile.py"),
            (str(JUPYTER_CONFIG.relative_to(notebook_image.REPO)), "/usr/local/etc/jupyter/jupyter_server_config.py"),
            ("spawner/singleuser/labconfig/page_config.json", "/usr/local/etc/jupyter/labconfig/page_config.json"),
            ("spawner/singleuser/gen3ws_export.py", "/usr/local/etc/jupyter/gen3ws_export.py"),
        ]
    )
    assert plan.gen3_client == "/usr/local/bin/gen3-client"
    assert notebook_image.REPO / plan.requirements == REQUIREMENTS
    assert "--require-hashes" in plan.pip_flags and "from gen3.auth import Gen3Auth" in plan.import_check
    assert plan.user == "${NB_UID}"


@pytest.mark.parametrize(
    "extra",
    ["RUN apt-get install -y curl", "COPY images/hub/Dockerfile /etc/x", "COPY --from=builder /a /b", "ADD https://example.test/x /x", "COPY no/such/file /x"],
)
def test_a_step_the_assembly_cannot_reproduce_is_an_error(tmp_path: Path, extra: str) -> None:
    dockerfile = tmp_path / "Dockerfile"
    text = notebook_image.DOCKERFILE.read_text()
    dockerfile.write_text(text.replace("WORKDIR /home/${NB_USER}", f"{extra}\nWORKDIR /home/${{NB_USER}}"))
    if extra.startswith("COPY images/hub"):
        # A new file copied from the repository is reproduced, not refused: it shows up in the plan.
        assert ("images/hub/Dockerfile", "/etc/x", None) in notebook_image.plan(dockerfile).files
        return
    with pytest.raises(ValueError):
        notebook_image.plan(dockerfile)


def find_python(version: str) -> str:
    uv = shutil.which("uv") or "uv"
    found = subprocess.run([uv, "python", "find", "--no-project", version], capture_output=True, text=True, env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"}, check=False)
    if found.returncode != 0:
        pytest.fail(f"Python {version} not found by uv")
    return found.stdout.strip()


@pytest.fixture(scope="module")
def userland(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(root with the image's files, the notebook Python with the image's lock installed)."""
    root = tmp_path_factory.mktemp("notebook-root")
    notebook_image.assemble_files(root)
    python = notebook_image.install_requirements(tmp_path_factory.mktemp("notebook-venv") / "venv", find_python("3.11"))
    return root, python


@pytest.fixture(scope="module")
def hub(real_data: DataBed, userland: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root, python = userland
    image = notebook_image.plan()
    hooks = notebook_image.image_path(root, "/usr/local/bin/before-notebook.d")
    path = f"{notebook_image.image_path(root, '/usr/local/bin')}:{python.parent}:{os.environ['PATH']}"
    singleuser = Path(sys.executable).with_name("jupyterhub-singleuser")
    # The image's entrypoint in miniature: start.sh's hooks, then the server, with the image's
    # ENV, its /usr/local/bin first on PATH and its Jupyter config folder.
    config = f"""
c.Gen3LocalSpawner.cmd = ["env", "JUPYTER_CONFIG_PATH={notebook_image.image_path(root, '/usr/local/etc/jupyter')}", "bash", "{RUN_HOOKS}", "{hooks}", "{singleuser}"]
c.Gen3LocalSpawner.environment = {dict(image.env, PATH=path)!r}
"""
    # The image's start.sh runs the hooks here, not the embedded spawner's own start hooks.
    h = Hub(tmp_path_factory.mktemp("userland-hub"), extra_config=config + "c.Gen3LocalSpawner.start_hooks = []\n")
    h.fence = real_data.fence.register_hub("userland", h.url)
    h.start()
    yield h
    h.stop()


def test_the_userland_runs_as_a_users_server(hub: Hub, real_data: DataBed, userland: tuple[Path, Path]) -> None:
    root, python = userland
    user = "nora"
    drive = hub.data_dir / "drives" / safe_name(user)
    record = real_data.add_object("samples.tsv", b"s\tv\n1\t2\n")
    hub.login(user)
    r = hub.api("POST", f"users/{user}/server", json={"flavor": "python-small"})
    assert r.status_code in (201, 202), r.text
    hub.wait_for_server(user)
    pid = hub.user_model(user)["servers"][""]["state"]["pid"]
    env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item)

    # The server's own command ran the hook, as start.sh does in the image.
    assert "gen3-client-profile: gen3-client profile" in hub.log()
    profile = hook_profile(hub.log())
    assert shutil.which("gen3-client", path=env["PATH"]) == str(notebook_image.image_path(root, "/usr/local/bin/gen3-client"))
    assert env["JUPYTER_CONFIG_PATH"] == str(notebook_image.image_path(root, "/usr/local/etc/jupyter"))

    # A notebook cell: the Gen3 SDK of the image's lock, authenticated from GEN3_API_KEY.
    cell = "from gen3.auth import Gen3Auth; print('TOKEN-OK' if Gen3Auth().get_access_token() else 'none')"
    out = subprocess.run([str(python), "-c", cell], env=env, cwd=drive, capture_output=True, text=True, timeout=120, check=False)
    assert "TOKEN-OK" in out.stdout, out.stderr[-3000:]

    # A terminal: the image's gen3-client, logged in by the hook.
    check_session(real_data, env, drive, profile, record)

    r = hub.api("DELETE", f"users/{user}/server")
    assert r.status_code in (202, 204)
    hub.wait_for_server(user, ready=False)
    assert real_data.active_keys(user) == []
