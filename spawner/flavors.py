"""The flavor catalogue: its one schema, loading and validation, per-user filtering and hot reload."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import yaml

# Kubernetes quantities, restricted to what makes sense for a flavor. Written once here and
# embedded in the JSON Schema so the Helm chart rejects the same strings the hub does.
CPU_PATTERN = r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$"
MEMORY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}

_CPU_SCHEMA: dict[str, Any] = {
    "description": "CPU cores: a positive number (0.5, 2) or millicores ('500m').",
    "oneOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": CPU_PATTERN},
    ],
}
_MEMORY_SCHEMA: dict[str, Any] = {
    "description": "Memory as a Kubernetes quantity without spaces: '512Mi', '4Gi', '1G'.",
    "type": "string",
    "pattern": MEMORY_PATTERN,
}


def _resource(item: dict[str, Any], what: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"{what} for the user's server. `limit` is the most it may use; "
        "`guarantee` (default: the limit) is what the scheduler reserves.",
        "additionalProperties": False,
        "required": ["limit"],
        "properties": {"guarantee": item, "limit": item},
    }


FLAVOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One flavor: a size and a tool image a user can launch.",
    "additionalProperties": False,
    "required": ["name", "image", "cpu", "memory"],
    "properties": {
        "name": {
            "type": "string",
            "pattern": NAME_PATTERN,
            "description": "Stable identifier (a DNS label). Users' requests name this; "
            "keep it when you change anything else about the flavor.",
        },
        "display_name": {"type": "string", "minLength": 1, "description": "Title on the flavor page (default: the name)."},
        "description": {"type": "string", "description": "One or two sentences for the flavor page."},
        "image": {"type": "string", "minLength": 1, "description": "Container image of the user's server, with a tag."},
        "cpu": _resource(_CPU_SCHEMA, "CPU cores"),
        "memory": _resource(_MEMORY_SCHEMA, "Memory"),
        "gpu": {"type": "integer", "minimum": 0, "description": "Number of GPUs (default 0)."},
        "gpu_resource": {
            "type": "string",
            "minLength": 1,
            "description": "Extended resource name the GPUs are requested as (default nvidia.com/gpu).",
        },
        "node_selector": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Node labels the server must be placed on.",
        },
        "tolerations": {
            "type": "array",
            "description": "Kubernetes tolerations, e.g. for tainted GPU nodes.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["Exists", "Equal"]},
                    "value": {"type": "string"},
                    "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                    "tolerationSeconds": {"type": "integer"},
                },
            },
        },
        "env": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Extra environment variables for the server. Gen3 and proxy variables "
            "set by the workspace take precedence.",
        },
        "allowed_groups": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "description": "Only members of one of these groups (synced from Fence) may launch it. "
            "Empty or absent: every user with workspace access.",
        },
        "authz_resource": {
            "type": "string",
            "pattern": "^/",
            "description": "Fence authz resource path the user must hold the workspace "
            "permission on (in addition to allowed_groups), e.g. /workspace-flavors/gpu. Not under "
            "/workspace: arborist grants every subresource of /workspace to whoever holds it.",
        },
    },
}

CATALOGUE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Gen3 Workspace flavor catalogue",
    "type": "object",
    "additionalProperties": False,
    "required": ["default", "flavors"],
    "properties": {
        "default": {"type": "string", "description": "Name of the flavor preselected on the flavor page."},
        "flavors": {"type": "array", "minItems": 1, "items": FLAVOR_SCHEMA, "description": "The flavors on offer."},
    },
}


def catalogue_json_schema() -> dict[str, Any]:
    """A copy of the catalogue's JSON Schema, for the Helm chart and the docs."""
    return copy.deepcopy(CATALOGUE_SCHEMA)


class CatalogueError(ValueError):
    """A catalogue that cannot be used; the message names the file, flavor and field."""


def parse_quantity(value: str | int | float, kind: str) -> float:
    """Kubernetes quantity → cores (kind='cpu') or bytes (kind='memory')."""
    if kind == "cpu":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        s = str(value)
        if not re.match(CPU_PATTERN, s):
            raise ValueError(f"{value!r} is not a CPU quantity")
        return int(s[:-1]) / 1000 if s.endswith("m") else float(s)
    s = str(value)
    m = re.match(MEMORY_PATTERN, s)
    if not m:
        raise ValueError(f"{value!r} is not a memory quantity")
    suffix = m.group(2) or ""
    number = float(s[: len(s) - len(suffix)])
    return number * (_BINARY.get(suffix) or _DECIMAL.get(suffix) or 1)


def format_memory(num_bytes: float) -> str:
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        unit = _BINARY[suffix]
        if num_bytes >= unit:
            value = num_bytes / unit
            return f"{value:g} {suffix}B"
    return f"{num_bytes:g} B"


@dataclass(frozen=True)
class Flavor:
    """One validated flavor."""

    name: str
    display_name: str
    description: str
    image: str
    cpu_guarantee: float
    cpu_limit: float
    mem_guarantee: str
    mem_limit: str
    gpu: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    allowed_groups: tuple[str, ...] = ()
    authz_resource: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Flavor":
        cpu, mem = d["cpu"], d["memory"]
        return cls(
            name=d["name"],
            display_name=d.get("display_name") or d["name"],
            description=d.get("description", ""),
            image=d["image"],
            cpu_guarantee=parse_quantity(cpu.get("guarantee", cpu["limit"]), "cpu"),
            cpu_limit=parse_quantity(cpu["limit"], "cpu"),
            mem_guarantee=str(mem.get("guarantee", mem["limit"])),
            mem_limit=str(mem["limit"]),
            gpu=int(d.get("gpu", 0)),
            gpu_resource=d.get("gpu_resource", "nvidia.com/gpu"),
            node_selector=dict(d.get("node_selector") or {}),
            tolerations=tuple(dict(t) for t in d.get("tolerations") or ()),
            env=dict(d.get("env") or {}),
            allowed_groups=tuple(d.get("allowed_groups") or ()),
            authz_resource=d.get("authz_resource"),
        )

    @property
    def memory_limit_bytes(self) -> float:
        return parse_quantity(self.mem_limit, "memory")

    def summary(self) -> dict[str, Any]:
        """What the flavor page and `flavors list` show."""
        return {
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "image": self.image,
            "cpu": f"{self.cpu_guarantee:g}–{self.cpu_limit:g}" if self.cpu_guarantee != self.cpu_limit else f"{self.cpu_limit:g}",
            "memory": format_memory(self.memory_limit_bytes),
            "gpu": self.gpu,
            "restricted_to": list(self.allowed_groups),
        }


@dataclass(frozen=True)
class Catalogue:
    """A validated flavor catalogue."""

    default: str
    flavors: tuple[Flavor, ...]
    source: str = "<memory>"

    def get(self, name: str) -> Flavor | None:
        return next((f for f in self.flavors if f.name == name), None)


def _where(path: Iterable[Any], data: Mapping[str, Any]) -> str:
    """Turn a jsonschema error path into 'flavor "x", field "cpu.limit"'."""
    parts = list(path)
    if len(parts) >= 2 and parts[0] == "flavors" and isinstance(parts[1], int):
        flavors = data.get("flavors") or []
        item = flavors[parts[1]] if parts[1] < len(flavors) else {}
        name = item.get("name") if isinstance(item, dict) else None
        label = f'flavor "{name}"' if name else f"flavor #{parts[1] + 1}"
        rest = ".".join(str(p) for p in parts[2:])
        return f"{label}, field '{rest}'" if rest else label
    return f"field '{'.'.join(str(p) for p in parts)}'" if parts else "top level"


def validate_catalogue(data: Any, source: str = "<memory>") -> Catalogue:
    """Validate a parsed catalogue; raise CatalogueError listing every problem found."""
    if not isinstance(data, dict):
        raise CatalogueError(f"{source}: the catalogue must be a mapping with 'default' and 'flavors'")
    validator = jsonschema.Draft202012Validator(CATALOGUE_SCHEMA)
    problems: list[str] = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        message = err.message
        if err.validator == "additionalProperties":
            message = f"unknown key(s): {message.split('(')[-1].rstrip(')').replace(' were unexpected', '').replace(' was unexpected', '')}"
        elif err.validator in ("pattern", "oneOf") and err.instance is not None:
            message = f"{err.instance!r} is not valid here ({err.schema.get('description') or (err.schema.get('oneOf') and _CPU_SCHEMA['description']) or err.message})"
        problems.append(f"{source}: {_where(err.absolute_path, data)}: {message}")
    if problems:
        raise CatalogueError("\n".join(problems))

    flavors = []
    seen: set[str] = set()
    for raw in data["flavors"]:
        name = raw["name"]
        if name in seen:
            problems.append(f'{source}: flavor "{name}", field \'name\': duplicate flavor name')
        seen.add(name)
        try:
            flavor = Flavor.from_dict(raw)
        except ValueError as e:
            problems.append(f'{source}: flavor "{name}": {e}')
            continue
        if flavor.cpu_guarantee > flavor.cpu_limit:
            problems.append(f'{source}: flavor "{name}", field \'cpu.guarantee\': larger than cpu.limit')
        if parse_quantity(flavor.mem_guarantee, "memory") > flavor.memory_limit_bytes:
            problems.append(f'{source}: flavor "{name}", field \'memory.guarantee\': larger than memory.limit')
        if flavor.memory_limit_bytes <= 0:
            problems.append(f'{source}: flavor "{name}", field \'memory.limit\': must be more than 0')
        flavors.append(flavor)
    if data["default"] not in seen:
        problems.append(f"{source}: field 'default': no flavor is named {data['default']!r}")
    if problems:
        raise CatalogueError("\n".join(problems))
    return Catalogue(default=data["default"], flavors=tuple(flavors), source=source)


def load_catalogue(path: str | os.PathLike[str]) -> Catalogue:
    """Read and validate a catalogue file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise CatalogueError(f"{p}: cannot read the flavor catalogue: {e.strerror or e}") from None
    return parse_catalogue(text, str(p))


def parse_catalogue(text: str, source: str) -> Catalogue:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CatalogueError(f"{source}: not valid YAML: {e}") from None
    return validate_catalogue(data, source)


class CatalogueWatcher:
    """Serves the last good catalogue of one file and picks up edits without a restart.

    Checked on every access (a stat call): ConfigMap volumes swap a symlink on update, so the
    inode or mtime changes; content is hashed so a touch without change costs no reparse.
    """

    def __init__(self, path: str | os.PathLike[str], log: logging.Logger | None = None):
        self.path = Path(path)
        self.log = log or logging.getLogger("gen3workspace.flavors")
        self._stamp: tuple[int, int, int] | None = None
        self._digest: str | None = None
        self._bad_digest: str | None = None
        self._good: Catalogue | None = None
        self.last_error: str | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current(self) -> Catalogue:
        """The catalogue to serve now; raises CatalogueError only if none was ever good."""
        stamp = self._stat()
        if stamp is None or stamp != self._stamp:
            self._stamp = stamp
            self._reload()
        if self._good is None:
            raise CatalogueError(self.last_error or f"{self.path}: no flavor catalogue loaded")
        return self._good

    def _reload(self) -> None:
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            self._fail(f"{self.path}: cannot read the flavor catalogue: {e.strerror or e}", "unreadable")
            return
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._digest or digest == self._bad_digest:
            return
        try:
            catalogue = parse_catalogue(raw.decode("utf-8", "replace"), str(self.path))
        except CatalogueError as e:
            self._fail(str(e), digest)
            return
        except Exception as e:  # a validator gap must not take the flavor page down
            self._fail(f"{self.path}: cannot use this catalogue: {type(e).__name__}: {e}", digest)
            return
        if self._good is not None:
            self.log.info("Flavor catalogue %s reloaded: %s", self.path, ", ".join(f.name for f in catalogue.flavors))
        self._good, self._digest, self._bad_digest, self.last_error = catalogue, digest, None, None

    def _fail(self, message: str, digest: str) -> None:
        if digest == self._bad_digest:
            return
        self._bad_digest = digest
        self.last_error = message
        keeping = "keeping the last good catalogue" if self._good else "no good catalogue to fall back on"
        # One line per broken edit, not one per request: the admin needs the reason, not noise.
        self.log.error("Flavor catalogue edit rejected, %s:\n%s", keeping, message)


_watchers: dict[str, CatalogueWatcher] = {}


def shared_watcher(path: str | os.PathLike[str], log: logging.Logger | None = None) -> CatalogueWatcher:
    """One watcher per file for the whole hub, so every user's spawner sees the same catalogue."""
    key = str(Path(path).absolute())
    if key not in _watchers:
        _watchers[key] = CatalogueWatcher(path, log)
    return _watchers[key]


def user_may_launch(
    flavor: Flavor,
    groups: Iterable[str],
    authz: Mapping[str, Any] | None,
    service: str = "jupyterhub",
    method: str = "access",
) -> bool:
    """Whether a user with these groups and Fence authz may launch the flavor."""
    if flavor.allowed_groups and not set(flavor.allowed_groups) & set(groups):
        return False
    if flavor.authz_resource:
        return has_permission(authz or {}, flavor.authz_resource, service, method)
    return True


def has_permission(authz: Mapping[str, Any], resource: str, service: str, method: str) -> bool:
    """Fence's userinfo `authz`: {resource path: [{service, method}, ...]}; '*' is a wildcard."""
    for perm in authz.get(resource) or ():
        if not isinstance(perm, Mapping):
            continue
        if perm.get("service") in (service, "*") and perm.get("method") in (method, "*"):
            return True
    return False


def default_catalogue_path() -> Path:
    """The example catalogue shipped with the package."""
    return Path(__file__).with_name("flavors.example.yaml")


def schema_json() -> str:
    return json.dumps(catalogue_json_schema(), indent=2, sort_keys=False) + "\n"
