"""What every benchmark shares: summaries (median, p95), ratio tables, machine load and the JSON results file."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "test-artifacts" / "bench"


def chp_command() -> str:
    """configurable-http-proxy from package-lock.json (scripts/setup.sh installs it): the stock peers' proxy."""
    path = REPO / "node_modules" / ".bin" / "configurable-http-proxy"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run scripts/setup.sh (it installs the stock peers' configurable-http-proxy)")
    return str(path)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was measured, never interpolated."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Iterable[float]) -> dict[str, Any]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"n": 0, "median": math.nan, "p95": math.nan, "max": math.nan, "min": math.nan}
    return {
        "n": len(vals),
        "median": statistics.median(vals),
        "p95": percentile(vals, 95),
        "max": max(vals),
        "min": min(vals),
    }


def ratio(ours: float, peer: float) -> float:
    return ours / peer if peer and not math.isnan(peer) and not math.isnan(ours) else math.nan


def load() -> dict[str, Any]:
    """The machine's load right now: other processes compete with both sides for the same cores."""
    one, five, fifteen = os.getloadavg()
    return {"loadavg_1m": round(one, 2), "loadavg_5m": round(five, 2), "loadavg_15m": round(fifteen, 2), "cpus": os.cpu_count()}


def fmt(value: float, unit: str = "ms") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "ms":
        return f"{value * 1e3:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "x":
        return f"{value:.2f}×"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "cores":
        return f"{value:.3f} cores"
    if unit == "rate":
        return f"{value:.1f}"
    if unit == "count":
        return f"{value:g}"
    return f"{value:g}"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (it reads as well in a terminal as in docs/performance.md)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    out = [f"\n### {title}\n", line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def goal(label: str, value: float, limit: float, unit: str = "x", at_least: bool = False, ours: str = "", stock: str = "") -> dict[str, Any]:
    """A goal met when `value` ≤ `limit` (≥ with `at_least`); `ours`/`stock` are the measured values behind a ratio, shown beside it."""
    ok = not math.isnan(value) and (value >= limit if at_least else value <= limit)
    return {"goal": label, "value": value, "limit": limit, "unit": unit, "at_least": at_least, "ours": ours, "stock": stock, "met": ok}


def goals_table(goals: Sequence[dict[str, Any]]) -> str:
    rows = [[g["goal"], fmt(g["value"], g["unit"]), g.get("ours") or "", g.get("stock") or "",
             f"{'≥' if g.get('at_least') else '≤'} {fmt(g['limit'], g['unit'])}", "PASS" if g["met"] else "MISS"] for g in goals]
    return table("Goals", ["goal", "measured", "ours", "stock", "limit", ""], rows)


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    data = {"benchmark": name, "at": stamp, "machine": {"platform": platform.platform(), "python": platform.python_version(), **load()}, **data}
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    (RESULTS_DIR / f"{name}-latest.json").write_text(json.dumps(data, indent=2, default=str))
    return path


def interleaved(n: int) -> list[str]:
    """ABBA order (ours, peer, peer, ours, ...): drift in the machine's load hits both sides alike."""
    order: list[str] = []
    for i in range(n):
        order += ["ours", "peer"] if i % 2 == 0 else ["peer", "ours"]
    return order
