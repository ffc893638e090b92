"""A corpus of hostile and broken flavor catalogues, one per class of problem, for tests that run it through every reader.

Each case is a catalogue as bytes (or a special file to create). `document` cases are about
what the YAML says, so the Helm chart sees them too (embedded under `flavors:` in a values
file); the others are about the file itself (a FIFO, an encoding, a second document), which
only the hub, `flavors validate` and `up --flavors` read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GOOD_FLAVOR = '{name: a, image: "quay.io/org/nb:1.0", cpu: {limit: 1}, memory: {limit: 1Gi}'


def flavor(extra: str = "", **fields: str) -> bytes:
    """A one-flavor catalogue whose flavor has `fields` replaced (YAML text) and `extra` appended."""
    base = {"name": "a", "image": '"quay.io/org/nb:1.0"', "cpu": "{limit: 1}", "memory": "{limit: 1Gi}"}
    base.update(fields)
    body = ", ".join(f"{k}: {v}" for k, v in base.items())
    return f"default: a\nflavors:\n- {{{body}{', ' + extra if extra else ''}}}\n".encode()


def billion_laughs(levels: int = 9) -> bytes:
    lines = ['x0: &x0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"x{i}: &x{i} [" + ",".join([f"*x{i - 1}"] * 9) + "]")
    return ("\n".join(lines) + "\n").encode() + flavor(description=f"*x{levels - 1}")


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes = b""
    # "fifo", "dir", "device" or "" (a regular file holding `data`).
    special: str = ""
    document: bool = True


HOSTILE: list[Case] = [
    # Size and shape of the YAML itself.
    Case("billion-laughs", billion_laughs()),
    Case("alias-fan-out", b"x: &x [" + b"a," * 100 + b"a]\ny: &y [" + b"*x," * 300 + b"*x]\n" + flavor()),
    Case("deep-flow-nesting", b"default: a\nflavors: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
    Case("deep-block-nesting", b"default: a\nflavors:\n" + b"".join(b"  " * i + b"- \n" for i in range(200))),
    Case("not-utf8", flavor(description='"caf\xe9"').replace(b"caf\xc3\xa9", b"caf\xe9")),
    Case("nul-character", flavor(description='"a\\0b"')),
    Case("escape-sequence-in-title", flavor(display_name='"\\e[31mred"')),
    Case("python-tag", flavor(image='!!python/object/apply:os.system ["echo pwned"]')),
    Case("binary-tag-not-text", flavor(image="!!binary //79")),
    Case("complex-key", b"default: a\nflavors:\n- ? [name]\n  : a\n"),
    Case("not-a-mapping", b"- a\n- b\n"),
    Case("scalar", b"just text\n"),
    Case("empty", b"", document=False),
    Case("broken-yaml", b"default: a\nflavors: [\n"),
    Case("tab-indent", b"default: a\nflavors:\n\t- name: a\n"),
    # Quantities.
    Case("cpu-zero-string", flavor(cpu='{limit: "0"}')),
    Case("cpu-zero-millicores", flavor(cpu='{limit: "0m"}')),
    Case("cpu-zero-number", flavor(cpu="{limit: 0}")),
    Case("cpu-zero-decimal", flavor(cpu='{limit: "0.000"}')),
    Case("cpu-below-a-millicore", flavor(cpu='{limit: "0.0001"}')),
    Case("cpu-nan", flavor(cpu="{limit: .nan}")),
    Case("cpu-nan-string", flavor(cpu='{limit: "NaN"}')),
    Case("cpu-infinity", flavor(cpu="{limit: .inf}")),
    Case("cpu-infinity-string", flavor(cpu='{limit: "Infinity"}')),
    Case("cpu-overflowing-float", flavor(cpu="{limit: 1e400}")),
    Case("cpu-huge", flavor(cpu="{limit: 1000000000000}")),
    Case("cpu-negative", flavor(cpu="{limit: -1}")),
    Case("cpu-boolean", flavor(cpu="{limit: true}")),
    Case("cpu-trailing-newline", flavor(cpu='{limit: "1\\n"}')),
    Case("memory-zero", flavor(memory='{limit: "0Mi"}')),
    Case("memory-infinity", flavor(memory="{limit: .inf}")),
    Case("memory-infinity-string", flavor(memory='{limit: "inf"}')),
    Case("memory-beyond-int64", flavor(memory='{limit: "99999999999Ti"}')),
    Case("memory-trailing-newline", flavor(memory='{limit: "1Gi\\n"}')),
    Case("memory-with-space", flavor(memory='{limit: "1 Gi"}')),
    Case("cpu-guarantee-above-limit", flavor(cpu='{guarantee: "1500m", limit: 1}')),
    Case("memory-guarantee-above-limit", flavor(memory="{guarantee: 2Gi, limit: 1Gi}")),
    # Names.
    Case("name-trailing-newline", b'default: a\nflavors:\n- {name: "a\\n", image: "x/y:1", cpu: {limit: 1}, memory: {limit: 1Gi}}\n'),
    Case("default-trailing-newline", flavor().replace(b"default: a", b'default: "a\\n"')),
    Case("name-megabyte", flavor(name='"' + "a" * 200_000 + '"').replace(b"default: a", b"default: b")),
    Case("name-uppercase", flavor(name="Python").replace(b"default: a", b"default: Python")),
    Case("duplicate-names", flavor() + b"- " + GOOD_FLAVOR.encode() + b"}\n"),
    Case("default-missing", flavor().replace(b"default: a", b"default: nope")),
    # Images (OCI distribution reference grammar).
    Case("image-empty", flavor(image='""')),
    Case("image-with-space", flavor(image='"quay.io/org/nb 1.0"')),
    Case("image-shell", flavor(image='"nb:1.0;rm -rf /"')),
    Case("image-uppercase-path", flavor(image='"quay.io/Org/NB:1.0"')),
    Case("image-short-digest", flavor(image='"quay.io/org/nb@sha256:abc"')),
    Case("image-long-tag", flavor(image='"quay.io/org/nb:' + "t" * 129 + '"')),
    Case("image-trailing-newline", flavor(image='"quay.io/org/nb:1.0\\n"')),
    # Node selectors, tolerations, resources (Kubernetes label grammar).
    Case("label-key-with-space", flavor(node_selector='{"bad key": x}')),
    Case("label-key-leading-dash", flavor(node_selector="{-x: y}")),
    Case("label-key-two-slashes", flavor(node_selector='{"a/b/c": y}')),
    Case("label-value-too-long", flavor(node_selector="{gen3.org/x: " + "v" * 64 + "}")),
    Case("label-value-with-space", flavor(node_selector='{gen3.org/x: "a b"}')),
    Case("label-value-not-string", flavor(node_selector="{gen3.org/x: [a]}")),
    Case("toleration-key-with-space", flavor(tolerations='[{key: "a b", operator: Exists}]')),
    Case("gpu-resource-without-prefix", flavor(gpu="1", gpu_resource="gpu")),
    Case("gpu-negative", flavor(gpu="-1")),
    # Env names.
    Case("env-name-digit-first", flavor(env="{1X: a}")),
    Case("env-name-dash", flavor(env="{A-B: a}")),
    Case("env-name-equals", flavor(env='{"A=B": a}')),
    Case("env-name-empty", flavor(env='{"": a}')),
    Case("env-value-not-string", flavor(env="{A: 1}")),
    Case("authz-resource-with-space", flavor(authz_resource='"/workspace /x"')),
    Case("unknown-key", flavor(colour="red")),
    Case("too-many-flavors", b"default: f0\nflavors:\n" + b"".join(
        f'- {{name: f{i}, image: "x/y:1", cpu: {{limit: 1}}, memory: {{limit: 1Gi}}}}\n'.encode() for i in range(201))),
    # The file itself.
    Case("fifo", special="fifo", document=False),
    Case("directory", special="dir", document=False),
    Case("device", special="device", document=False),
    Case("too-large", b"# " + b"x" * (300 * 1024) + b"\n" + flavor(), document=False),
    Case("utf16", flavor().decode().encode("utf-16"), document=False),
    Case("second-document", flavor() + b"---\n" + flavor(), document=False),
    Case("missing", special="missing", document=False),
]

#: Catalogues every reader must accept: the edges of each grammar, from the valid side.
VALID: list[Case] = [
    Case("minimal", flavor()),
    Case("millicores-and-decimals", flavor(cpu='{guarantee: "250m", limit: 0.5}', memory='{guarantee: "0.5Gi", limit: 512Mi}')),
    Case("digest-and-registry-port", flavor(image='"registry.example.org:5000/team/nb@sha256:' + "a" * 64 + '"')),
    Case("tag-and-digest", flavor(image='"nb:1.0@sha256:' + "b" * 64 + '"')),
    Case("labels-and-tolerations", flavor(
        node_selector='{gen3.org/accelerator: nvidia, plain: "", "x.example.org/y_z.1": A-b_c.9}',
        tolerations="[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
        gpu="2", gpu_resource="amd.com/gpu")),
    Case("env-and-text", flavor(env='{_PRIVATE: "", LANG: "C.UTF-8", MULTI: "a\\nb"}', display_name='"Python — small ✓"')),
    Case("benign-alias", flavor(image='&img "quay.io/org/nb:1.0"', display_name="*img")),
    Case("binary-text", flavor(image="!!binary bmI6MS4w")),
]


def materialise(case: Case, folder: Path) -> Path:
    """Create the case as a file (or FIFO, folder, device link) in `folder`; returns its path."""
    path = folder / f"{case.name}.yaml"
    if case.special == "fifo":
        os.mkfifo(path)
    elif case.special == "dir":
        path.mkdir()
    elif case.special == "device":
        path.symlink_to("/dev/zero")
    elif case.special == "missing":
        pass
    else:
        path.write_bytes(case.data)
    return path


def as_chart_values(case: Case) -> bytes:
    """The catalogue under `flavors:` in a values file, exactly as an operator would paste it."""
    lines = case.data.split(b"\n")
    return b"flavors:\n" + b"".join(b"  " + line + b"\n" for line in lines if line)
