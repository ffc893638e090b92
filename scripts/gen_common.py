"""What every generator script shares: write its files, or with --check name the stale ones with a diff."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _stale(path: Path, want: str) -> str | None:
    have = path.read_text(encoding="utf-8") if path.exists() else ""
    if have == want:
        return None
    diff = difflib.unified_diff(have.splitlines(), want.splitlines(), str(path), "generated", lineterm="", n=1)
    return "\n".join(list(diff)[:40])


def write_or_check(outputs: Mapping[Path, str], check: bool, script: str) -> int:
    """Write `outputs` (path → text); with `check`, write nothing and return 1 if any is stale."""
    if check:
        problems = [(p, d) for p, w in outputs.items() if (d := _stale(p, w))]
        for path, diff in problems:
            print(f"{_shown(path)} is stale; run {script}\n{diff}", file=sys.stderr)
        return 1 if problems else 0
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {_shown(path)}")
    return 0
