"""Large test files whose every byte is checked: shared by the transfer tests and the data-path benchmark."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MB = 1024 * 1024


def write_pattern_file(path: Path, size: int) -> str:
    """A file whose every MiB differs (a random block stamped with its index), so a cut, a repeat or a reorder changes the hash; returns its sha256."""
    block = bytearray(os.urandom(MB))
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(size // MB):
            block[:8] = i.to_bytes(8, "big")
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MB):
            digest.update(chunk)
    return digest.hexdigest()
