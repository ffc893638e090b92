"""Shared helpers for the image tests: repository paths, loading scripts by path, and fake Gen3 credentials."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES = REPO_ROOT / "images"
NOTEBOOK = IMAGES / "notebook"
HOOK = NOTEBOOK / "before-notebook.d" / "50-gen3-client-profile.py"
JUPYTER_CONFIG = REPO_ROOT / "spawner" / "singleuser" / "jupyter_server_config.py"
REQUIREMENTS = NOTEBOOK / "requirements.txt"
BUILD_SCRIPT = IMAGES / "build.sh"

COMMONS = "https://commons.example.org"


def load_module(path: Path, name: str) -> ModuleType:
    """Import a script whose file name is not a module name (e.g. `50-gen3-client-profile.py`)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_api_key(issuer: str = f"{COMMONS}/user", signature: str = "SIGxSECRETxDO-NOT-LEAK-7f3a9c") -> str:
    """A JWT shaped like a Fence API key: header.claims.signature, with a distinctive signature to grep for."""
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "fence_key"}).encode())
    claims = _b64(
        json.dumps(
            {"iss": issuer, "sub": "42", "aud": ["data", "user"], "purpose": "api_key", "jti": "c0ffee", "exp": 4102444800}
        ).encode()
    )
    return f"{header}.{claims}.{signature}"


def write_credentials(path: Path, key_id: str, api_key: str) -> Path:
    """Write a credentials.json in the format the Gen3 portal hands out."""
    path.write_text(json.dumps({"key_id": key_id, "api_key": api_key}), encoding="utf-8")
    return path
