"""`make bench`: every benchmark in turn (each in its own process), then one table of the goals and the machine's load.

Options pass through: ``--only p1,p4``, ``--p1-pairs``, ``--p2-n`` (repeatable), ``--p2-timeout``,
``--p3-repeats``, ``--p4-options-impl module:function``, ``--full`` (P5 at the issue's full sizes
and the other benchmarks' defaults; without it P5 runs its quick mode and P2 only N=50). Results: test-artifacts/bench/*.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchmarks.stats import REPO, RESULTS_DIR, goals_table, load, table

ALL = ["p4", "p3", "p5", "p6", "p7", "p1", "p2"]
MODULES = {"p1": "p1_spawn", "p2": "p2_storm", "p3": "p3_embedded", "p4": "p4_flavors", "p5": "p5_datapath", "p6": "p6_dataplane", "p7": "export_files"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(ALL), help="comma-separated subset of p1,p2,p3,p4,p5,p6,p7")
    p.add_argument("--full", action="store_true", help="full sizes: P5's 5 GB download, 1 GB upload and 60 active users; P6's 1 GB object; P2 at N=50,100,200")
    p.add_argument("--p5-only", help="P5's figures to run (small,lab,kernels,transfers,big,neighbours,restart,scale)")
    p.add_argument("--p5-users", type=int, help="P5's users with active kernels")
    p.add_argument("--p1-pairs", type=int, default=20)
    p.add_argument("--p2-n", type=int, action="append")
    p.add_argument("--p2-timeout", type=float, default=300)
    p.add_argument("--p3-repeats", type=int, default=3)
    p.add_argument("--p4-options-impl")
    args = p.parse_args()
    extra = {
        "p1": ["--pairs", str(args.p1_pairs)],
        "p2": [a for n in (args.p2_n or ([50, 100, 200] if args.full else [50])) for a in ("--n", str(n))] + ["--timeout", str(args.p2_timeout)],
        "p3": ["--repeats", str(args.p3_repeats)],
        "p4": ["--options-impl", args.p4_options_impl] if args.p4_options_impl else [],
        "p6": ["--full"] if args.full else [],
        # Export to Workspace: 1,000 files listed and fetched; the full run compares parallelism.
        "p7": ["--parallel", "4", "--parallel", "8"] if args.full else ["--parallel", "8"],
        "p5": (["--full"] if args.full else []) + (["--only", args.p5_only] if args.p5_only else []) + (["--users", str(args.p5_users)] if args.p5_users else []),
    }
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    goals = []
    loads = [["before", *load().values()]]
    failed = []
    for bench in chosen:
        began = time.monotonic()
        print(f"\n## {bench} ({MODULES[bench]})", flush=True)
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{MODULES[bench]}", *extra[bench]], cwd=str(REPO))
        loads.append([f"after {bench} ({time.monotonic() - began:.0f} s)", *load().values()])
        if proc.returncode != 0:
            failed.append(bench)
            continue
        latest = RESULTS_DIR / f"{MODULES[bench]}-latest.json"
        goals += json.loads(latest.read_text()).get("goals", [])
    print("\n## Summary")
    print(table("Machine load (other work on this machine hits both sides of each comparison alike: runs alternate)",
                ["when", "load 1m", "load 5m", "load 15m", "CPUs"], loads))
    print(goals_table(goals))
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (see the output above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
