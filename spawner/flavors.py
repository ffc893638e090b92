"""The flavor catalogue: its one schema, loading and validation, per-user filtering and hot reload."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import jsonschema

from . import grammar
from .grammar import CPU_SCHEMA as _CPU_SCHEMA
from .grammar import MEMORY_SCHEMA as _MEMORY_SCHEMA
from .grammar import short
from .safeyaml import SafeYAMLError, parse_yaml_bytes, read_bounded

# Kept under their old names; the grammars themselves live in grammar.py, written once.
CPU_PATTERN = grammar.CPU
MEMORY_PATTERN = grammar.MEMORY
NAME_PATTERN = grammar.NAME

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


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
            **grammar.string(grammar.NAME, 63),
            "description": "Stable identifier (a DNS label). Users' requests name this; "
            "keep it when you change anything else about the flavor.",
        },
        "display_name": {
            **grammar.string(grammar.TEXT_LINE, 100, minLength=1),
            "description": "Title on the flavor page (default: the name).",
        },
        "description": {**grammar.string(grammar.TEXT, 2000), "description": "One or two sentences for the flavor page."},
        "image": {
            **grammar.string(grammar.IMAGE, 512, minLength=1),
            "description": "Container image of the user's server, with a tag: an OCI reference such as "
            "quay.io/org/notebook:1.0 (optionally @sha256:...).",
        },
        "cpu": _resource(_CPU_SCHEMA, "CPU cores"),
        "memory": _resource(_MEMORY_SCHEMA, "Memory"),
        "gpu": {"type": "integer", "minimum": 0, "maximum": 64, "description": "Number of GPUs (default 0)."},
        "gpu_resource": {
            **grammar.string(grammar.RESOURCE_NAME, 317),
            "description": "Extended resource name the GPUs are requested as (default nvidia.com/gpu).",
        },
        "node_selector": {
            "type": "object",
            "maxProperties": 32,
            "propertyNames": grammar.string(grammar.LABEL_KEY, 317),
            "additionalProperties": grammar.string(grammar.LABEL_VALUE, 63),
            "description": "Node labels the server must be placed on (Kubernetes label keys and values).",
        },
        "tolerations": {
            "type": "array",
            "maxItems": 32,
            "description": "Kubernetes tolerations, e.g. for tainted GPU nodes.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "key": grammar.string(grammar.LABEL_KEY, 317),
                    "operator": {"enum": ["Exists", "Equal"]},
                    "value": grammar.string(grammar.LABEL_VALUE, 63),
                    "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                    "tolerationSeconds": {"type": "integer", "minimum": 0, "maximum": 31536000},
                },
            },
        },
        "env": {
            "type": "object",
            "maxProperties": 128,
            "propertyNames": grammar.string(grammar.ENV_NAME, 255),
            "additionalProperties": grammar.string(grammar.TEXT, 32768),
            "description": "Extra environment variables for the server (names: letters, digits and _, "
            "not starting with a digit). Gen3 and proxy variables set by the workspace take precedence.",
        },
        "allowed_groups": {
            "type": "array",
            "maxItems": 256,
            "items": grammar.string(grammar.TEXT_LINE, 256, minLength=1),
            "description": "Only members of one of these hub groups may launch it. With Fence login "
            "groups come from userinfo `groups`, which Fence leaves empty for access granted by "
            "arborist policies, and from authz_groups: prefer authz_resource (validate and the hub warn). "
            "Empty or absent: every user with workspace access.",
        },
        "authz_resource": {
            **grammar.string(grammar.AUTHZ_RESOURCE, 512),
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
        "default": {**grammar.string(grammar.NAME, 63), "description": "Name of the flavor preselected on the flavor page."},
        "flavors": {"type": "array", "minItems": 1, "maxItems": 200, "items": FLAVOR_SCHEMA, "description": "The flavors on offer."},
    },
}


def catalogue_json_schema() -> dict[str, Any]:
    """A copy of the catalogue's JSON Schema, for the Helm chart and the docs."""
    return copy.deepcopy(CATALOGUE_SCHEMA)


class CatalogueError(ValueError):
    """A catalogue that cannot be used; the message names the file, flavor and field."""


def parse_quantity(value: str | int | float, kind: str) -> float:
    """Kubernetes quantity → cores (kind='cpu') or bytes (kind='memory'); always finite and above 0."""
    if kind == "cpu":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not (math.isfinite(value) and 0 < value <= 999999):
                raise ValueError(f"{short(value)} is not a CPU quantity above 0")
            return float(value)
        if not grammar.matches(CPU_PATTERN, value):
            raise ValueError(f"{short(value)} is not a CPU quantity above 0")
        s = str(value)
        return int(s[:-1]) / 1000 if s.endswith("m") else float(s)
    if not grammar.matches(MEMORY_PATTERN, value):
        raise ValueError(f"{short(value)} is not a memory quantity above 0")
    s = str(value)
    suffix = s.lstrip("0123456789.")
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
            "authz_resource": self.authz_resource,
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
        label = _flavor_label(name, parts[1])
        rest = ".".join(short(p, 60) if not isinstance(p, (str, int)) else str(p)[:60] for p in parts[2:])
        return f"{label}, field '{rest}'" if rest else label
    return f"field '{'.'.join(str(p)[:60] for p in parts)}'" if parts else "top level"


def _flavor_label(name: Any, index: int) -> str:
    if isinstance(name, str) and grammar.matches(NAME_PATTERN, name):
        return f'flavor "{name}"'
    return f"flavor #{index + 1}" + (f" ({short(name, 40)})" if name is not None else "")


def _message(err: jsonschema.ValidationError) -> str:
    """One short line per schema error; never the whole offending value."""
    kind, instance, schema = err.validator, err.instance, err.schema
    hint = grammar.hint(schema) or schema.get("description")
    if kind == "additionalProperties":
        extra = sorted(str(k) for k in instance if k not in (schema.get("properties") or {}))
        return "unknown key(s): " + ", ".join(short(k, 40) for k in extra[:5]) + (" …" if len(extra) > 5 else "")
    if kind == "required":
        return err.message
    if "propertyNames" in err.schema_path:
        return f"the key {short(instance, 60)} is not valid here ({hint or 'see the flavor reference'})"
    if kind in ("maxLength", "maxItems", "maxProperties"):
        return f"too long (at most {err.validator_value})"
    if kind == "oneOf" and isinstance(instance, (str, int, float)) and not isinstance(instance, bool):
        return f"{short(instance, 60)} is not valid here ({_CPU_SCHEMA['description'] if schema.get('oneOf') == _CPU_SCHEMA['oneOf'] else hint})"
    if kind in ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "minLength", "minItems", "pattern", "oneOf"):
        expected = hint or {
            "type": f"expected {err.validator_value}",
            "enum": "one of " + ", ".join(map(str, err.validator_value or [])),
            "minimum": f"at least {err.validator_value}",
            "maximum": f"at most {err.validator_value}",
            "exclusiveMinimum": f"more than {err.validator_value}",
            "minLength": "must not be empty",
            "minItems": "must not be empty",
        }.get(kind, "see the flavor reference")
        if kind == "type" and not hint:
            return f"{short(instance, 60)}: {expected}"
        return f"{short(instance, 60)} is not valid here ({expected})"
    return f"{short(instance, 60)}: {err.validator} {short(err.validator_value, 40)}"


MAX_PROBLEMS = 20


def _raise(problems: list[str]) -> None:
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], f"… and {len(problems) - MAX_PROBLEMS} more problems"]
    raise CatalogueError("\n".join(problems))


def validate_catalogue(data: Any, source: str = "<memory>") -> Catalogue:
    """Validate a parsed catalogue; raise CatalogueError listing every problem found, one line each."""
    if not isinstance(data, dict):
        raise CatalogueError(f"{source}: the catalogue must be a mapping with 'default' and 'flavors'")
    validator = grammar.Validator(CATALOGUE_SCHEMA)
    problems: list[str] = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        problems.append(f"{source}: {_where(err.absolute_path, data)}: {_message(err)}")
    if problems:
        _raise(problems)

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
        try:
            grammar.check_image(flavor.image)
        except grammar.GrammarError as e:
            problems.append(f'{source}: flavor "{name}", field \'image\': {e}')
        flavors.append(flavor)
    if data["default"] not in seen:
        problems.append(f"{source}: field 'default': no flavor is named {short(data['default'], 60)}")
    if problems:
        _raise(problems)
    return Catalogue(default=data["default"], flavors=tuple(flavors), source=source)


def load_catalogue(path: str | os.PathLike[str]) -> Catalogue:
    """Read and validate a catalogue file (a regular UTF-8 file within the safe YAML bounds)."""
    try:
        raw = read_bounded(path, "flavor catalogue")
    except SafeYAMLError as e:
        raise CatalogueError(str(e)) from None
    return parse_catalogue(raw, str(path))


def parse_catalogue(text: str | bytes, source: str) -> Catalogue:
    """Parse and validate catalogue text; every failure is a CatalogueError naming `source`."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    try:
        data = parse_yaml_bytes(raw, source)
    except SafeYAMLError as e:
        raise CatalogueError(str(e)) from None
    return validate_catalogue(data, source)


# Why allowed_groups does not work with Fence login; said wherever the catalogue is checked.
FENCE_GROUPS_WHY = (
    "with Fence login a user's groups come from Fence's userinfo `groups`, which Fence leaves empty for "
    "access granted by arborist policies (user.yaml), so nobody may be offered this flavor; restrict it by "
    "arborist resource instead (authz_resource: /workspace-flavors/gpu, outside /workspace, granted by a "
    "policy such as workspace-gpu), or have the hub make the group from a resource (authz_groups; chart: "
    "auth.authzGroups)"
)


def group_warnings(catalogue: Catalogue, known_groups: Iterable[str] = ()) -> list[str]:
    """One warning per flavor whose allowed_groups names a group Fence login never fills.

    `known_groups`: groups the hub fills itself (authz_groups' values, admin groups), which
    allowed_groups may name without a warning.
    """
    known = set(known_groups)
    warnings = []
    for flavor in catalogue.flavors:
        unknown = [g for g in flavor.allowed_groups if g not in known]
        if unknown:
            warnings.append(f'{catalogue.source}: flavor "{flavor.name}", field \'allowed_groups\' ({", ".join(unknown)}): {FENCE_GROUPS_WHY}')
    return warnings


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
        # Set by whoever knows the login (the hub's config or its spawner): warnings about a
        # valid catalogue, logged once per version (at the first load and at each reload).
        self.warnings: Callable[[Catalogue], list[str]] | None = None

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
            # Non-blocking and bounded: a FIFO or a huge file never stalls the hub's event loop.
            raw = read_bounded(self.path, "flavor catalogue")
        except SafeYAMLError as e:
            self._fail(str(e), "unreadable")
            return
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._digest or digest == self._bad_digest:
            return
        try:
            catalogue = parse_catalogue(raw, str(self.path))
        except CatalogueError as e:
            self._fail(str(e), digest)
            return
        except Exception as e:  # a validator gap must not take the flavor page down
            self._fail(f"{self.path}: cannot use this catalogue: {type(e).__name__}: {short(str(e), 200)}", digest)
            return
        if self._good is not None:
            self.log.info("Flavor catalogue %s reloaded: %s", self.path, ", ".join(f.name for f in catalogue.flavors))
        self._good, self._digest, self._bad_digest, self.last_error = catalogue, digest, None, None
        for warning in self.warnings(catalogue) if self.warnings else ():
            self.log.warning("Flavor catalogue: %s", warning)

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
