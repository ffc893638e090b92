"""Export to Workspace with many small files: how long until a 1,000-file manifest is listed in the workspace (its status file names every file) and until every file is fetched and verified, at bounded parallelism, against the real data-plane bed.

Run: `.venv/bin/python -m benchmarks.export_files [--files 1000] [--parallel 4 --parallel 8]`.
The bed (tests/support/realdata.py: real Fence, indexd, manifestservice, moto's S3 server) is
started here; the files are put in through indexd's API and the manifest through
manifestservice's, as the portal's export does.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import threading
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.stats import fmt, goal, goals_table, load, table, write_results
from gen3workspace.spawner.singleuser import gen3ws_export as ex
from tests.support.exportplane import RealPlane
from tests.support.realdata import DataBed
from tests.support.realfence import FenceBed


def one_run(plane: RealPlane, manifest: list[dict], parallel: int, tmp: Path) -> dict[str, float]:
    plane.clear_manifests(plane.user)
    name = plane.post_manifest(plane.user, manifest)
    key = tmp / f"key-{parallel}.json"
    key.write_text(json.dumps(plane.api_key(plane.user)))
    home = tmp / f"home-{parallel}"
    home.mkdir()
    settings = ex.Settings.from_env({"GEN3_ENDPOINT": plane.url, "GEN3_API_KEY": str(key), "GEN3_EXPORT_PARALLEL": str(parallel)}, home)
    sync = ex.ExportSync(settings)
    sync.start_workers()
    status = settings.commons_folder / name.removesuffix(".json") / ex.STATUS_NAME
    # The poll lists manifestservice, reads the manifest, lists its files in the status file,
    # asks indexd in bulk and queues the fetches; "listed" is when the status names every file.
    began = time.perf_counter()
    poller = threading.Thread(target=sync.poll)
    poller.start()
    listed = math.nan
    while poller.is_alive() or math.isnan(listed):
        try:
            text = status.read_text()
        except FileNotFoundError:
            text = ""
        if math.isnan(listed) and f"of {len(manifest)} files" in text and text.count("\n| ") > len(manifest):
            listed = time.perf_counter() - began
        if not poller.is_alive() and math.isnan(listed):
            raise AssertionError("the status never listed every file")
        time.sleep(0.02)
    poller.join()
    assert sync.wait_idle(1800)
    fetched = time.perf_counter() - began
    sync.write_statuses()
    done = sync.snapshot()["manifests"][0]["counts"]["done"]
    sync.stop()
    assert done == len(manifest), sync.snapshot()["manifests"][0]["counts"]
    return {"listed": listed, "fetched": fetched}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--parallel", type=int, action="append")
    args = p.parse_args()
    parallels = args.parallel or [4, 8]
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    with FenceBed(tmp / "fence") as fence:
        bed = DataBed(fence).start()
        try:
            plane = RealPlane(bed)
            began = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                records = list(pool.map(lambda i: bed.add_object(f"small-{i:04d}.txt", secrets.token_bytes(1024)), range(args.files)))
            print(f"{args.files} records and objects put in through indexd and S3 in {time.perf_counter() - began:.1f} s", flush=True)
            manifest = [plane.entry(r.guid, r.file_name, r.content) for r in records]
            rows, results, goals = [], {}, []
            for parallel in parallels:
                r = one_run(plane, manifest, parallel, tmp)
                results[parallel] = r
                rows.append([parallel, fmt(r["listed"], "s"), fmt(r["fetched"], "s"), f"{args.files / r['fetched']:.0f} files/s"])
            goals.append(goal(f"{args.files} files listed in the workspace (s)", min(r["listed"] for r in results.values()), 2.0, "s"))
            print(table(f"Export of {args.files} files of 1 KiB (real indexd, Fence signing, moto S3)", ["parallel", "listed after", "all verified after", "rate"], rows))
            print(goals_table(goals))
            write_results("export_files", {"files": args.files, "results": results, "goals": goals, "load": load()})
        finally:
            bed.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
