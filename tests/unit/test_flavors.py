"""The flavor catalogue: schema errors that name file, flavor and field; hot reload; the CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gen3workspace.spawner.flavors import (
    CatalogueError,
    FENCE_GROUPS_WHY,
    CatalogueWatcher,
    catalogue_json_schema,
    default_catalogue_path,
    group_warnings,
    load_catalogue,
    parse_catalogue,
    parse_quantity,
    user_may_launch,
)

EXAMPLE = default_catalogue_path()


def example_data() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def errors_of(data: dict, source: str = "flavors.yaml") -> str:
    with pytest.raises(CatalogueError) as e:
        parse_catalogue(yaml.safe_dump(data), source)
    return str(e.value)


def test_example_catalogue_has_python_r_and_a_restricted_gpu_flavor() -> None:
    cat = load_catalogue(EXAMPLE)
    images = {f.name: f.image for f in cat.flavors}
    assert any("python" in i for i in images.values()) and any("notebook-r" in i for i in images.values())
    gpu = [f for f in cat.flavors if f.gpu]
    # Restricted by arborist resource outside /workspace, never by group (Fence fills no groups
    # for policy access): see docs/authentication.md.
    assert gpu and all(f.authz_resource and not f.allowed_groups for f in gpu)
    assert all(not f.authz_resource.startswith("/workspace/") and f.authz_resource != "/workspace" for f in gpu)
    assert group_warnings(cat) == []
    assert cat.get(cat.default) is not None


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda d: d["flavors"][0].update(colour="red"), "flavor \"python-small\"", "colour"),
        (lambda d: d["flavors"][1]["memory"].update(limit="2 GB"), "flavor \"r-large\", field 'memory.limit'", "'2 GB'"),
        (lambda d: d["flavors"][1]["cpu"].update(limit="-1"), "flavor \"r-large\", field 'cpu.limit'", "'-1'"),
        (lambda d: d["flavors"][0]["cpu"].update(limit=-1), "flavor \"python-small\", field 'cpu.limit'", "-1"),
        (lambda d: d["flavors"][2].update(gpu=-2), "flavor \"python-gpu\", field 'gpu'", "-2"),
        (lambda d: d.pop("default"), "top level", "default"),
        (lambda d: d.update(default="nope"), "field 'default'", "nope"),
        (lambda d: d["flavors"].append(dict(d["flavors"][0])), "flavor \"python-small\", field 'name'", "duplicate"),
        (lambda d: d["flavors"][0].update(name="Bad Name"), "field 'name'", "Bad Name"),
        (lambda d: d["flavors"][0]["memory"].update(guarantee="4Gi"), "field 'memory.guarantee'", "larger"),
    ],
)
def test_bad_catalogues_name_file_flavor_and_field(mutate, field: str, words: str) -> None:
    data = example_data()
    mutate(data)
    message = errors_of(data, "/etc/flavors.yaml")
    assert message.startswith("/etc/flavors.yaml: ")
    assert field in message
    assert words in message


def test_not_yaml_is_a_clear_error() -> None:
    with pytest.raises(CatalogueError, match=r"^f\.yaml: line 2, column 1: not valid YAML"):
        parse_catalogue("flavors: [\n", "f.yaml")


def test_quantities() -> None:
    assert parse_quantity("500m", "cpu") == 0.5
    assert parse_quantity(2, "cpu") == 2
    assert parse_quantity("1Gi", "memory") == 2**30
    assert parse_quantity("1G", "memory") == 10**9
    for bad in ("2 GB", "-1", "1.5.2Gi", ""):
        with pytest.raises(ValueError):
            parse_quantity(bad, "memory")


def test_group_and_authz_restrictions() -> None:
    cat = load_catalogue(EXAMPLE)
    from dataclasses import replace

    gpu = next(f for f in cat.flavors if f.gpu)
    small = cat.get("python-small")
    access = [{"service": "jupyterhub", "method": "access"}]
    assert user_may_launch(gpu, [], {"/workspace": access, "/workspace-flavors/gpu": access})
    assert not user_may_launch(gpu, [], {"/workspace": access})
    assert not user_may_launch(gpu, ["gpu-users"], {"/workspace": access}), "a group is no way around the resource"
    grouped = replace(small, allowed_groups=("gpu-users",))
    assert not user_may_launch(grouped, ["analysts"], {})
    assert user_may_launch(grouped, ["gpu-users"], {})
    assert user_may_launch(small, [], {})

    locked = replace(small, authz_resource="/workspace/special")
    assert not user_may_launch(locked, [], {"/workspace": [{"service": "jupyterhub", "method": "access"}]})
    assert user_may_launch(locked, [], {"/workspace/special": [{"service": "jupyterhub", "method": "access"}]})
    assert user_may_launch(locked, [], {"/workspace/special": [{"service": "*", "method": "*"}]})


def test_hot_reload_keeps_last_good_and_logs_one_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "flavors.yaml"
    path.write_text(EXAMPLE.read_text())
    watcher = CatalogueWatcher(path, logging.getLogger("test.flavors"))
    assert [f.name for f in watcher.current().flavors] == ["python-small", "r-large", "python-gpu"]

    broken = example_data()
    broken["flavors"][0]["memory"]["limit"] = "2 GB"
    path.write_text(yaml.safe_dump(broken))
    os.utime(path, ns=(1, 1))  # a new mtime even on coarse clocks
    with caplog.at_level(logging.ERROR, "test.flavors"):
        for _ in range(5):
            assert [f.name for f in watcher.current().flavors] == ["python-small", "r-large", "python-gpu"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "2 GB" in errors[0].getMessage() and "keeping the last good" in errors[0].getMessage()

    fixed = example_data()
    fixed["flavors"] = fixed["flavors"][:2]
    fixed["flavors"][0]["display_name"] = "Python — tiny"
    path.write_text(yaml.safe_dump(fixed))
    os.utime(path, ns=(2, 2))
    cat = watcher.current()
    assert [f.name for f in cat.flavors] == ["python-small", "r-large"]
    assert cat.flavors[0].display_name == "Python — tiny"


def test_first_load_of_a_broken_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "flavors.yaml"
    path.write_text("default: x\nflavors: []\n")
    with pytest.raises(CatalogueError):
        CatalogueWatcher(path).current()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gen3workspace.hub.cli", *args], capture_output=True, text=True, timeout=60)


def test_cli_validate_list_and_schema(tmp_path: Path) -> None:
    ok = cli("flavors", "validate", str(EXAMPLE))
    assert ok.returncode == 0 and "OK, 3 flavors" in ok.stdout
    listed = cli("flavors", "list", str(EXAMPLE), "--json")
    assert [r["name"] for r in json.loads(listed.stdout)] == ["python-small", "r-large", "python-gpu"]
    table = cli("flavors", "list", str(EXAMPLE)).stdout
    assert "/workspace-flavors/gpu" in table and "(default)" in table
    assert ok.stderr == "", "the example gives no warning"
    bad = tmp_path / "bad.yaml"
    data = example_data()
    data["flavors"][0]["memory"]["limit"] = "2 GB"
    bad.write_text(yaml.safe_dump(data))
    res = cli("flavors", "validate", str(bad))
    assert res.returncode == 1
    assert f"{bad}: flavor \"python-small\", field 'memory.limit'" in res.stderr
    schema = json.loads(cli("flavors", "schema").stdout)
    assert schema == catalogue_json_schema()


def test_numeric_cpu_of_any_size_is_a_quantity_not_a_crash(tmp_path: Path) -> None:
    data = example_data()
    data["flavors"][0]["cpu"] = {"limit": 0.0000001}
    cat = parse_catalogue(yaml.safe_dump(data), "f.yaml")
    assert cat.flavors[0].cpu_limit == 1e-07


def _grouped_catalogue(tmp_path: Path) -> Path:
    data = example_data()
    gpu = next(f for f in data["flavors"] if f.get("gpu"))
    del gpu["authz_resource"]
    gpu["allowed_groups"] = ["gpu-users"]
    path = tmp_path / "grouped.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def test_allowed_groups_gets_a_warning_saying_why(tmp_path: Path) -> None:
    path = _grouped_catalogue(tmp_path)
    (warning,) = group_warnings(load_catalogue(path))
    assert warning.startswith(f'{path}: flavor "python-gpu", field \'allowed_groups\' (gpu-users): ')
    assert "userinfo `groups`" in warning and "empty for access granted by arborist policies" in warning and "authz_resource" in warning
    assert group_warnings(load_catalogue(path), ["gpu-users"]) == [], "a group the hub makes from a resource is fine"


def test_cli_validate_warns_about_allowed_groups_but_accepts_the_catalogue(tmp_path: Path) -> None:
    path = _grouped_catalogue(tmp_path)
    res = cli("flavors", "validate", str(path))
    assert res.returncode == 0 and "OK, 3 flavors" in res.stdout
    assert res.stderr.startswith("warning: ") and FENCE_GROUPS_WHY in res.stderr, res.stderr
    known = cli("flavors", "validate", str(path), "--known-group", "gpu-users")
    assert known.returncode == 0 and known.stderr == ""


def test_the_watcher_warns_at_the_first_load_and_at_each_reload_not_per_request(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _grouped_catalogue(tmp_path)
    watcher = CatalogueWatcher(path, logging.getLogger("test-flavors-warn"))
    watcher.warnings = group_warnings
    with caplog.at_level(logging.WARNING, logger="test-flavors-warn"):
        for _ in range(3):
            watcher.current()
        assert [r.getMessage().count("allowed_groups") for r in caplog.records] == [1]
        caplog.clear()
        data = yaml.safe_load(path.read_text())
        data["flavors"][0]["display_name"] = "Python, small"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        os.utime(path, ns=(1, 1))  # a new mtime even on a coarse clock
        watcher.current()
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and FENCE_GROUPS_WHY in warned[0].getMessage()
