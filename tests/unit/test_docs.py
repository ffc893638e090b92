"""The generated reference docs match the code they are generated from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_reference_docs_are_fresh() -> None:
    r = subprocess.run([sys.executable, "scripts/gen_reference_docs.py", "--check"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_every_trait_of_ours_has_help_text() -> None:
    from gen3workspace.hub.auth import Gen3OAuthenticator
    from gen3workspace.hub.devauth import DevAuthenticator
    from gen3workspace.hub.launcher import Gen3Launcher
    from gen3workspace.spawner.common import Gen3SpawnerMixin
    from gen3workspace.spawner.kube import Gen3KubeSpawner
    from gen3workspace.spawner.local import Gen3LocalSpawner

    ours = (Gen3OAuthenticator, DevAuthenticator, Gen3SpawnerMixin, Gen3KubeSpawner, Gen3LocalSpawner, Gen3Launcher)
    for cls in ours:
        for name, trait in cls.class_own_traits().items():
            assert (trait.help or "").strip(), f"{cls.__name__}.{name} has no help text"


def test_readme_commands_exist() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make up" in readme and "make test" in readme
    makefile = (REPO / "Makefile").read_text()
    assert "\nup:" in makefile and "\ntest:" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()
    for img in ("login", "flavor-page", "jupyterlab", "hub-home", "token-page", "forbidden", "admin-only", "not-your-workspace", "not-found"):
        assert f"docs/img/{img}.png" in readme and (REPO / "docs" / "img" / f"{img}.png").exists()


def test_tests_the_docs_cite_exist() -> None:
    """Each claim in the guides names the test behind it; a renamed or deleted test must not leave a dangling claim."""
    import re

    cited = 0
    for doc in (REPO / "docs").glob("*.md"):
        for path, name in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", doc.read_text()):
            target = REPO / path
            assert target.exists(), f"{doc.name} cites missing {path}"
            if name:
                assert re.search(rf"def {name}\b", target.read_text()), f"{doc.name} cites missing test {path}::{name}"
            cited += 1
    assert cited >= 10
