"""P6: a commons object into a workspace through the real Gen3 data path (indexd lookup, Fence's signed URL, bytes from the bucket) against a plain GET of the same object from the bucket, with the hub's CPU and memory alongside.

The real data-plane bed (tests/support/realdata.py: real Fence, indexd, moto's S3 server as the
bucket) and an embedded workspace (`gen3-workspace up`). A user's server fetches, in its own
kernel (over the kernel WebSocket, as a notebook cell would): the whole path — `GET <commons>/index/<guid>`,
`GET <commons>/user/data/download/<guid>` with the user's Fence token, then the signed URL streamed into
the drive with its md5 checked against indexd's — or the plain path: the same object streamed from
the bucket's own URL. Runs alternate ABBA; the hub's CPU and RSS come from /proc meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.kernelws import KernelSocket, start_kernel
from benchmarks.p5_datapath import auth, client, server_url
from benchmarks.sides import Meter, Ours
from benchmarks.stats import fmt, goal, goals_table, interleaved, load, ratio, summary, table, write_results

MB = 1 << 20

FETCH = r'''
import hashlib, json, time, requests
began = time.perf_counter()
s = requests.Session()
if {whole!r}:
    rec = s.get("{indexd}/" + "{guid}", timeout=60).json()
    signed = s.get("{fence}/data/download/" + "{guid}", headers={{"Authorization": "bearer {token}"}}, timeout=60)
    signed.raise_for_status()
    url, want = signed.json()["url"], rec["hashes"]["md5"]
else:
    url, want = "{plain}", None
md5, size = hashlib.md5(), 0
with s.get(url, stream=True, timeout=120) as r, open("p6-object.bin", "wb") as f:
    r.raise_for_status()
    for chunk in r.iter_content(4 << 20):
        md5.update(chunk); f.write(chunk); size += len(chunk)
ok = want is None or md5.hexdigest() == want
print(json.dumps({{"seconds": time.perf_counter() - began, "bytes": size, "md5_ok": ok}}))
'''


async def fetch(side: Ours, code: str) -> dict[str, Any]:
    async with client() as http:
        kid = await start_kernel(http, server_url(side, "dana"), auth(side, "dana"))
        sock = await KernelSocket.open(http, server_url(side, "dana"), kid, auth(side, "dana"))
        lines: list[str] = []
        orig = sock.ws.receive

        async def receive() -> Any:  # keep the cell's printed JSON
            frame = await orig()
            try:
                m = frame.json()
                if m["header"]["msg_type"] == "stream":
                    lines.append(m["content"]["text"])
                elif m["header"]["msg_type"] == "error":
                    lines.append(f"\n{m['content']['ename']}: {m['content']['evalue']}")
            except Exception:  # noqa: BLE001 - not a JSON frame; execute() reports it
                pass
            return frame

        sock.ws.receive = receive  # type: ignore[method-assign]
        await sock.execute(code, timeout=900)
        await sock.close()
        async with http.delete(f"{server_url(side, 'dana')}api/kernels/{kid}", headers=auth(side, "dana")):
            pass
    text = "".join(lines).strip().splitlines()
    if not text:
        return {"error": "the cell printed nothing"}
    try:
        return json.loads(text[-1])
    except json.JSONDecodeError:
        return {"error": text[-1][:300]}


def run(size_mb: int, repeats: int) -> dict[str, Any]:
    from tests.support.realdata import DataBed
    from tests.support.realfence import DATA_BUCKET, FenceBed

    res: dict[str, Any] = {"size_mb": size_mb, "repeats": repeats, "runs": [], "load": [load()]}
    fence = FenceBed().start()
    try:
        bed = DataBed(fence).start()
        try:
            record = bed.add_object("p6-object.bin", os.urandom(size_mb * MB))
            token = bed.access_token(bed.reader)
            # The plain path: the bucket's own presigned GET of the same object, no indexd, no Fence.
            plain = bed.s3().generate_presigned_url("get_object", Params={"Bucket": DATA_BUCKET, "Key": record.key}, ExpiresIn=3600)
            del record.content  # 1 GB the benchmark does not need to keep
            with tempfile.TemporaryDirectory(prefix="bench-p6-") as tmp:
                side = Ours(Path(tmp))
                side.start()
                try:
                    side.spawn([bed.reader])
                    drive = side.drive(bed.reader)
                    for which in interleaved(repeats):
                        whole = which == "ours"
                        code = FETCH.format(whole=whole, indexd=bed.indexd_url, fence=bed.fence_url, guid=record.guid, token=token, plain=plain)
                        with Meter(side) as m:
                            out = asyncio.run(fetch(side, code))
                        res["runs"].append({"path": "whole" if whole else "plain", **out, **m.result})
                        (drive / "p6-object.bin").unlink(missing_ok=True)
                finally:
                    side.stop()
        finally:
            bed.stop()
    finally:
        fence.stop()
    return res


def report(res: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    runs = res["runs"]

    def rate(path: str) -> float:
        ok = [r for r in runs if r["path"] == path and "seconds" in r and r.get("md5_ok")]
        return summary([r["bytes"] / MB / r["seconds"] for r in ok])["median"] if len(ok) == sum(r["path"] == path for r in runs) else math.nan

    whole, plain = rate("whole"), rate("plain")
    hub_rss = max((r.get("hub_rss_growth", math.nan) for r in runs), default=math.nan) / MB
    hub_cpu = max((r.get("hub_cpu_cores", math.nan) for r in runs), default=math.nan)
    rows = [["whole path (indexd → Fence signed URL → bucket, md5 checked)", f"{whole:.1f}", ""],
            ["plain GET from the bucket", f"{plain:.1f}", ""],
            ["ratio", "", fmt(ratio(whole, plain), "x")],
            ["hub: peak RSS growth / CPU during any run", f"{hub_rss:.1f} MB / {hub_cpu:.3f} cores", ""]]
    errors = [r["error"] for r in runs if "error" in r]
    text = table(f"P6 a {res['size_mb']} MB object into a workspace, {res['repeats']} runs per path (ABBA)", ["", "MB/s (median)", ""], rows)
    if errors:
        text += "\n\nerrors: " + "; ".join(errors[:3])
    goals = [
        goal(f"P6 {res['size_mb']} MB through the whole data path (× plain GET)", ratio(whole, plain), 0.9, "x", at_least=True, ours=f"{whole:.1f} MB/s", stock=f"plain {plain:.1f} MB/s"),
        goal("P6 hub RSS growth during the transfer", hub_rss, 20, "MB"),
        goal("P6 hub CPU during the transfer", hub_cpu, 0.05, "cores"),
    ]
    return text, goals


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the issue's 1 GB object, 2 runs per path")
    p.add_argument("--size-mb", type=int, help="object size (default 256 MB, 1024 with --full)")
    p.add_argument("--repeats", type=int, help="runs per path (default 1, 2 with --full)")
    args = p.parse_args(argv)
    res = run(args.size_mb or (1024 if args.full else 256), args.repeats or (2 if args.full else 1))
    text, goals = report(res)
    res["goals"] = goals
    print(text)
    print(goals_table(goals))
    print(f"\nJSON: {write_results('p6_dataplane', res)}")
    return res


if __name__ == "__main__":
    main()
