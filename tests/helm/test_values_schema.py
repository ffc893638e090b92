"""values.yaml, values.schema.json and docs/values-reference.md are generated from one source and kept in step with it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from gen3workspace.spawner.flavors import catalogue_json_schema, default_catalogue_path

from .chart import BAD_VALUES_DIR, CHART, ROOT, VALUES_DIR


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gen_schema = _load_script("gen_values_schema")
gen_docs = _load_script("gen_values_docs")


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))


def test_committed_schema_and_values_are_fresh() -> None:
    assert gen_schema.main(["--check"]) == 0, "run scripts/gen_values_schema.py"


def test_committed_values_reference_is_fresh() -> None:
    assert gen_docs.main(["--check"]) == 0, "run scripts/gen_values_docs.py"


def test_check_mode_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    values, schema = tmp_path / "values.yaml", tmp_path / "values.schema.json"
    shutil.copy(CHART / "values.yaml", values)
    shutil.copy(CHART / "values.schema.json", schema)
    monkeypatch.setattr(gen_schema, "VALUES_YAML", values)
    monkeypatch.setattr(gen_schema, "SCHEMA_JSON", schema)
    monkeypatch.setattr(gen_schema, "ROOT", tmp_path)
    assert gen_schema.main(["--check"]) == 0
    schema.write_text(schema.read_text().replace('"cluster.local"', '"cluster.example"', 1))
    assert gen_schema.main(["--check"]) == 1
    assert "values.schema.json is stale" in capsys.readouterr().err
    assert gen_schema.main([]) == 0  # regenerating fixes it
    assert gen_schema.main(["--check"]) == 0


def test_docs_check_mode_fails_on_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "values-reference.md"
    page.write_text((ROOT / "docs" / "values-reference.md").read_text(encoding="utf-8").replace("egress", "egres", 1))
    monkeypatch.setattr(gen_docs, "OUTPUT", page)
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    assert gen_docs.main(["--check"]) == 1
    assert "is stale" in capsys.readouterr().err


def test_flavors_part_is_the_spawner_schema() -> None:
    want = {k: v for k, v in catalogue_json_schema().items() if k not in ("$schema", "title")}
    got = dict(_schema()["properties"]["flavors"])
    got.pop("default")
    got.pop("description")
    assert got == {k: v for k, v in want.items() if k != "description"}


def test_default_flavors_are_loaded_from_the_example() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert values["flavors"] == yaml.safe_load(default_catalogue_path().read_text(encoding="utf-8"))


def _objects(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "<root>", schema
    for key, child in (schema.get("properties") or {}).items():
        yield from _objects(child, f"{path}.{key}" if path else key)
    items = schema.get("items")
    if isinstance(items, dict) and "description" in items:
        yield from _objects(items, path + "[]")


def test_every_value_has_a_description_and_unknown_keys_fail() -> None:
    for path, node in _objects(_schema()):
        assert node.get("description"), f"{path} has no description (the docs are generated from it)"
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"


def test_values_yaml_holds_exactly_the_schema_defaults() -> None:
    schema = _schema()
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))

    def defaults(node: dict[str, Any]) -> Any:
        if "default" in node:
            return node["default"]
        return {k: defaults(v) for k, v in node["properties"].items()}

    assert values == defaults(schema)
    jsonschema.Draft7Validator(schema).validate(values)


def test_schema_is_draft7_for_helm() -> None:
    schema = _schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    text = json.dumps(schema)
    assert "2020-12" not in text, "helm 3.17 validates with gojsonschema (drafts 4-7)"
    jsonschema.Draft7Validator.check_schema(schema)


@pytest.mark.parametrize("values", sorted(p.name for p in VALUES_DIR.glob("*.yaml")))
def test_test_values_files_are_valid(values: str) -> None:
    chart_defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    merged = _merge(chart_defaults, yaml.safe_load((VALUES_DIR / values).read_text(encoding="utf-8")))
    jsonschema.Draft7Validator(_schema()).validate(merged)


def test_schema_level_bad_values_are_invalid_in_python_too() -> None:
    chart_defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(_schema())
    for bad in ("misspelled-key.yaml", "flavor-memory-with-space.yaml", "unknown-flavor-key.yaml", "wildcard-without-dot.yaml", "external-db-without-url.yaml"):
        merged = _merge(chart_defaults, yaml.safe_load((BAD_VALUES_DIR / bad).read_text(encoding="utf-8")))
        assert list(validator.iter_errors(merged)), bad


def _merge(base: Any, override: Any) -> Any:
    """Helm's values merge: maps merge key by key, everything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return override
