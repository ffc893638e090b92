"""P5: the data path to users' servers — ours (`gen3-workspace up`) vs stock JupyterHub + configurable-http-proxy, side by side in one run.

Both sides run at once on this machine with the same jupyterhub-singleuser (JupyterLab) from this
venv; clients authenticate as scripts do, with the user's own JupyterHub API token
(`Authorization: token ...`), except the JupyterLab load, which logs in through each side's login
form in Chromium. Repeated figures alternate sides (ABBA). What each figure does is in
docs/performance.md ("P5"); `--full` runs the issue's full sizes (5 GB download, 1 GB upload
checked byte for byte, more users with active kernels).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import math
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.kernelws import KernelSocket, start_kernel
from benchmarks.sides import Meter, Ours, Side, Stock
from benchmarks.stats import fmt, goal, goals_table, interleaved, load, percentile, ratio, summary, table, write_results
from tests.support.bigfiles import sha256_file, write_pattern_file

MB = 1 << 20
GB = 1 << 30
SIDES = ("ours", "stock")
LAB_CHUNK = 1 * MB  # JupyterLab's file browser uploads big files in 1 MiB chunks of the contents API


def abba(n: int) -> list[str]:
    """ours, stock, stock, ours, …: drift in the machine's load hits both sides alike."""
    return ["stock" if x == "peer" else x for x in interleaved(n)]


def server_url(side: Side, user: str) -> str:
    return f"{side.url}user/{user}/"


def auth(side: Side, user: str) -> dict[str, str]:
    return {"Authorization": f"token {side.token(user)}"}


async def bobs_status(http: aiohttp.ClientSession, side: Side, timeout: float) -> bool:
    """Whether the other user's (bob's) server answered its status call within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            async with http.get(server_url(side, "bob") + "api/status", headers=auth(side, "bob")) as r:
                await r.read()
                return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def client(limit: int = 100) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit), timeout=aiohttp.ClientTimeout(total=None, sock_read=120))



def place(sides: dict[str, Side], user: str, name: str, src: Path) -> None:
    """The same file (one inode, hard-linked: both sides read the same page cache) in each side's drive."""
    for side in sides.values():
        dest = side.drive(user) / name
        dest.unlink(missing_ok=True)
        os.link(src, dest)


# --- small requests -----------------------------------------------------------------------

async def timed_gets(side: Side, user: str, n: int, path: str = "api/status") -> tuple[list[float], int]:
    out, errors = [], 0
    async with client() as http:
        for _ in range(n):
            began = time.perf_counter()
            try:
                async with http.get(server_url(side, user) + path, headers=auth(side, user)) as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                out.append(time.perf_counter() - began)
            else:
                errors += 1
    return out, errors


async def requests_per_second(side: Side, user: str, clients: int, seconds: float) -> float:
    done = 0
    stop_at = time.monotonic() + seconds
    async with client(clients) as http:
        async def one() -> None:
            nonlocal done
            while time.monotonic() < stop_at:
                async with http.get(server_url(side, user) + "api/status", headers=auth(side, user)) as r:
                    await r.read()
                    done += r.status == 200
        await asyncio.gather(*(one() for _ in range(clients)), return_exceptions=True)
    return done / seconds


def bench_small(sides: dict[str, Side], n: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {s: [] for s in SIDES}
    errors = {s: 0 for s in SIDES}
    blocks = max(2, n // 50)
    for name in abba(blocks // 2 or 1):
        got, err = asyncio.run(timed_gets(sides[name], "bob", n // blocks))
        samples[name] += got
        errors[name] += err
    rps = {name: asyncio.run(requests_per_second(sides[name], "bob", 20, 5)) for name in SIDES}
    return {"latency": {s: summary(samples[s]) for s in SIDES}, "errors": errors, "rps_20_clients": rps}


# --- kernels ------------------------------------------------------------------------------

async def kernel_figures(side: Side, user: str, n: int, output_mb: int) -> dict[str, Any]:
    async with client() as http:
        try:
            kid = await start_kernel(http, server_url(side, user), auth(side, user))
            sock = await KernelSocket.open(http, server_url(side, user), kid, auth(side, user))
        except (aiohttp.ClientError, RuntimeError, ConnectionError, TimeoutError) as e:
            return {"error": f"{type(e).__name__}: {e}"[:300]}
        rtts = [(await sock.execute("1"))[0] for _ in range(n)]
        # Output throughput: 100 KB lines printed as fast as the kernel can, as a chatty notebook does.
        code = f"import sys\nline = 'x' * 102399 + '\\n'\nfor _ in range({output_mb * 10}):\n    sys.stdout.write(line)\nsys.stdout.flush()"
        seconds, nbytes = await sock.execute(code, timeout=600)
        await sock.close()
        async with http.delete(f"{server_url(side, user)}api/kernels/{kid}", headers=auth(side, user)):
            pass
    return {"rtt": summary(rtts), "output_bytes": nbytes, "output_mb_s": nbytes / MB / seconds}


def bench_kernels(sides: dict[str, Side], n: int, output_mb: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    for name in abba(1):
        runs[name].append(asyncio.run(kernel_figures(sides[name], "bob", n, output_mb)))
    return {s: runs[s][0] for s in SIDES}


# --- JupyterLab cold load -----------------------------------------------------------------

def bench_lab(sides: dict[str, Side], repeats: int) -> dict[str, Any]:
    """Login once per side in Chromium; then each load in a fresh context (empty cache, the login's cookies) until JupyterLab's launcher shows."""
    from tests.support.browser import chromium

    times: dict[str, list[float]] = {s: [] for s in SIDES}
    errors: dict[str, str] = {}
    with chromium() as browser:
        states = {}
        for name, side in sides.items():
            ctx = browser.new_context()
            page = ctx.new_page()
            page.set_default_timeout(120_000)
            try:
                page.goto(f"{side.url}hub/login")
                page.fill("input[name=username]", "carol")
                if page.locator("input[name=password]").count():
                    page.fill("input[name=password]", "x")
                page.locator("form [type=submit]").first.click()
                page.wait_for_load_state()
                page.goto(f"{side.url}user/carol/lab")
                page.wait_for_selector(".jp-LauncherCard", timeout=180_000)
                states[name] = ctx.storage_state()
            except Exception as e:  # noqa: BLE001 - reported in the table, the other side still runs
                errors[name] = f"{type(e).__name__}: {str(e)[:200]}"
            ctx.close()
        for name in abba(repeats):
            if name not in states:
                continue
            ctx = browser.new_context(storage_state=states[name])
            page = ctx.new_page()
            began = time.perf_counter()
            try:
                page.goto(f"{sides[name].url}user/carol/lab", timeout=120_000)
                page.wait_for_selector(".jp-LauncherCard", timeout=120_000)
                times[name].append(time.perf_counter() - began)
            except Exception as e:  # noqa: BLE001
                errors[name] = f"{type(e).__name__}: {str(e)[:200]}"
            ctx.close()
    return {"load": {s: summary(times[s]) for s in SIDES}, "errors": errors}


# --- transfers ----------------------------------------------------------------------------

async def download(http: aiohttp.ClientSession, side: Side, user: str, name: str, verify: bool = False) -> dict[str, Any]:
    began = time.perf_counter()
    size, digest = 0, hashlib.sha256() if verify else None
    try:
        async with http.get(server_url(side, user) + "files/" + name, headers=auth(side, user)) as r:
            status = r.status
            async for chunk in r.content.iter_chunked(4 * MB):
                size += len(chunk)
                if digest:
                    digest.update(chunk)
    except aiohttp.ClientError as e:
        return {"status": f"{type(e).__name__}", "bytes": size, "seconds": time.perf_counter() - began}
    seconds = time.perf_counter() - began
    return {"status": status, "bytes": size, "seconds": seconds, "mb_s": size / MB / seconds, "sha256": digest.hexdigest() if digest else None}


async def upload(http: aiohttp.ClientSession, side: Side, user: str, name: str, src: Path) -> dict[str, Any]:
    """JupyterLab's chunked upload through the contents API (chunk 1 creates the file, -1 is the last)."""
    size = src.stat().st_size
    n = math.ceil(size / LAB_CHUNK)
    began = time.perf_counter()
    with open(src, "rb") as f:
        for i in range(1, n + 1):
            body = {"type": "file", "format": "base64", "name": name, "path": name,
                    "content": base64.b64encode(f.read(LAB_CHUNK)).decode(), "chunk": -1 if i == n else i}
            try:
                async with http.put(server_url(side, user) + "api/contents/" + name, json=body, headers=auth(side, user)) as r:
                    await r.read()
                    if r.status not in (200, 201):
                        return {"status": r.status, "chunk": i, "seconds": time.perf_counter() - began}
            except aiohttp.ClientError as e:
                return {"status": type(e).__name__, "chunk": i, "seconds": time.perf_counter() - began}
    seconds = time.perf_counter() - began
    return {"status": 200, "bytes": size, "seconds": seconds, "mb_s": size / MB / seconds}



def idle_cpu(side: Side, seconds: float = 5) -> dict[str, Any]:
    with Meter(side) as m:
        time.sleep(seconds)
    return m.result


def bench_transfers(sides: dict[str, Side], tmp: Path, repeats: int, concurrent: int, up_mb: int) -> dict[str, Any]:
    src = tmp / "big-1g.bin"
    write_pattern_file(src, GB)
    place(sides, "alice", "big-1g.bin", src)
    up = tmp / "up.bin"
    write_pattern_file(up, up_mb * MB)
    out: dict[str, Any] = {s: {"download": [], "upload": []} for s in SIDES}
    for name in abba(repeats):
        side = sides[name]

        async def one_download() -> dict[str, Any]:
            async with client() as http:
                return await download(http, side, "alice", "big-1g.bin")

        with Meter(side) as m:
            res = asyncio.run(one_download())
        out[name]["download"].append({**res, **m.result})

        async def one_upload() -> dict[str, Any]:
            async with client() as http:
                return await upload(http, side, "alice", "up.bin", up)

        with Meter(side) as m:
            res = asyncio.run(one_upload())
        out[name]["upload"].append({**res, **m.result})
        (side.drive("alice") / "up.bin").unlink(missing_ok=True)
    # Hub (and proxy) while `concurrent` users' worth of 1 GB downloads run at once.
    for name in SIDES:
        side = sides[name]
        idle = idle_cpu(side)

        async def many() -> list[dict[str, Any]]:
            async with client(concurrent) as http:
                return await asyncio.gather(*(download(http, side, "alice", "big-1g.bin") for _ in range(concurrent)))

        with Meter(side) as m:
            results = asyncio.run(many())
        out[name]["concurrent"] = {
            "n": concurrent, "complete": sum(1 for r in results if r.get("status") == 200 and r["bytes"] == GB),
            "idle": idle, **m.result,
            "aggregate_mb_s": sum(r["bytes"] for r in results) / MB / m.result["seconds"],
        }
    up.unlink(missing_ok=True)
    for side in sides.values():
        (side.drive("alice") / "big-1g.bin").unlink(missing_ok=True)
    src.unlink(missing_ok=True)
    return out


def bench_big(sides: dict[str, Side], tmp: Path, down_gb: int, up_gb: int) -> dict[str, Any]:
    """The issue's sizes, complete and byte-identical: a `down_gb` GB download and a `up_gb` GB upload per side."""
    src = tmp / "huge.bin"
    want = write_pattern_file(src, down_gb * GB)
    place(sides, "alice", "huge.bin", src)
    out: dict[str, Any] = {}
    for name, side in sides.items():
        async def go() -> dict[str, Any]:
            async with client() as http:
                return await download(http, side, "alice", "huge.bin", verify=True)
        res = asyncio.run(go())
        out[name] = {"download": {**res, "identical": res.get("sha256") == want and res["bytes"] == down_gb * GB}}
        (side.drive("alice") / "huge.bin").unlink(missing_ok=True)
    src.unlink(missing_ok=True)
    up = tmp / "up-big.bin"
    want = write_pattern_file(up, up_gb * GB)
    for name, side in sides.items():
        async def go_up() -> dict[str, Any]:
            async with client() as http:
                return await upload(http, side, "alice", "up-big.bin", up)
        res = asyncio.run(go_up())
        dest = side.drive("alice") / "up-big.bin"
        out[name]["upload"] = {**res, "identical": dest.exists() and dest.stat().st_size == up_gb * GB and sha256_file(dest) == want}
        dest.unlink(missing_ok=True)
    up.unlink(missing_ok=True)
    return out


# --- one user's trouble against another user's latency -------------------------------------

async def latency_while(side: Side, seconds: float, trouble: Any = None) -> dict[str, Any]:
    """Bob's small requests for `seconds` (each with a 30 s deadline), optionally while `trouble` runs."""
    task = asyncio.create_task(trouble()) if trouble else None
    await asyncio.sleep(2 if trouble else 0)
    samples, failed = [], 0
    stop_at = time.monotonic() + seconds
    async with client() as http:
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            ok = await bobs_status(http, side, 30)
            if ok:
                samples.append(time.perf_counter() - began)
            else:
                failed += 1
    if task:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {**summary(samples), "failed": failed}


def slow_downloads(side: Side, n: int, file: str) -> Any:
    async def run() -> None:
        async with client(n) as http:
            async def slow() -> None:
                async with http.get(server_url(side, "alice") + "files/" + file, headers=auth(side, "alice")) as r:
                    while await r.content.read(16 * 1024):
                        await asyncio.sleep(0.5)  # ~32 KB/s: a client on a bad link
            await asyncio.gather(*(slow() for _ in range(n)), return_exceptions=True)
    return run


def frozen_server(side: Side, n: int) -> Any:
    async def run() -> None:
        pid = int(side.api("GET", "users/alice").json()["servers"][""]["state"]["pid"])
        os.kill(pid, signal.SIGSTOP)
        try:
            async with client(n) as http:
                async def pending() -> None:
                    async with http.get(server_url(side, "alice") + "api/status", headers=auth(side, "alice")) as r:
                        await r.read()
                await asyncio.gather(*(pending() for _ in range(n)), return_exceptions=True)
        finally:
            os.kill(pid, signal.SIGCONT)
    return run


def bench_neighbours(sides: dict[str, Side], tmp: Path, seconds: float) -> dict[str, Any]:
    # Just under 100 MB: the largest file today's in-hub gate serves at all; sparse, the disk is not the point.
    for side in sides.values():
        with open(side.drive("alice") / "slow.bin", "wb") as f:
            f.truncate(95 * MB)
    out: dict[str, Any] = {}
    for name in abba(1):
        side = sides[name]
        out[name] = {
            "baseline": asyncio.run(latency_while(side, seconds)),
            "slow_downloads": asyncio.run(latency_while(side, seconds, slow_downloads(side, 12, "slow.bin"))),
            "frozen_server": asyncio.run(latency_while(side, seconds, frozen_server(side, 12))),
        }
    for side in sides.values():
        (side.drive("alice") / "slow.bin").unlink(missing_ok=True)
    return out


# --- hub restart with open WebSockets ------------------------------------------------------

async def restart_figures(side: Side, users: list[str]) -> dict[str, Any]:
    async with client() as http:
        socks: list[KernelSocket] = []
        opened_errors = []
        for user in users:
            try:
                kid = await start_kernel(http, server_url(side, user), auth(side, user))
                socks.append(await KernelSocket.open(http, server_url(side, user), kid, auth(side, user)))
            except (aiohttp.ClientError, RuntimeError, ConnectionError, TimeoutError) as e:
                opened_errors.append(f"{type(e).__name__}: {e}"[:200])
        ok, failed = 0, 0
        stop = asyncio.Event()

        async def poll() -> None:
            nonlocal ok, failed
            while not stop.is_set():
                good = await bobs_status(http, side, 10)
                ok += good
                failed += not good
                await asyncio.sleep(0.1)

        poller = asyncio.create_task(poll())
        await asyncio.sleep(2)
        began = time.monotonic()
        await asyncio.to_thread(side.restart_hub)
        restart_seconds = time.monotonic() - began
        await asyncio.sleep(3)
        stop.set()
        await poller
        dropped = 0
        for sock in socks:
            try:
                await sock.execute("1", timeout=10)
            except (ConnectionError, TimeoutError, aiohttp.ClientError):
                dropped += 1
        for sock in socks:
            await sock.close()
    return {"websockets": len(socks), "open_errors": opened_errors, "dropped": dropped, "requests_ok": ok,
            "requests_failed": failed, "restart_seconds": restart_seconds}


def bench_restart(sides: dict[str, Side]) -> dict[str, Any]:
    return {name: asyncio.run(restart_figures(side, ["alice", "bob", "alice", "bob"])) for name, side in sides.items()}


# --- many users with active kernels --------------------------------------------------------

async def active_users(side: Side, users: list[str], seconds: float) -> dict[str, Any]:
    async with client(len(users) + 10) as http:
        async def open_one(user: str) -> KernelSocket:
            kid = await start_kernel(http, server_url(side, user), auth(side, user))
            return await KernelSocket.open(http, server_url(side, user), kid, auth(side, user))

        opened = await asyncio.gather(*(open_one(u) for u in users), return_exceptions=True)
        socks = [s for s in opened if isinstance(s, KernelSocket)]
        errors = [f"{type(e).__name__}: {e}"[:200] for e in opened if not isinstance(e, KernelSocket)]
        rtts: list[float] = []
        failed = 0

        async def active(sock: KernelSocket) -> None:
            nonlocal failed
            stop_at = time.monotonic() + seconds
            while time.monotonic() < stop_at:
                try:
                    rtts.append((await sock.execute("1", timeout=30))[0])
                except (ConnectionError, TimeoutError, aiohttp.ClientError):
                    failed += 1
                    return
                await asyncio.sleep(1)  # one execute a second per user

        with Meter(side) as m:
            await asyncio.gather(*(active(s) for s in socks))
        for sock in socks:
            await sock.close()
    return {"users": len(users), "kernels": len(socks), "open_errors": errors[:3], "rtt": summary(rtts), "failed": failed, **m.result}


def bench_scale(sides: dict[str, Side], n: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in SIDES:
        side = sides[name]
        users = [f"u{i:03d}" for i in range(n)]
        try:
            ready_s = side.spawn(users, timeout=60 + 10 * n)
            out[name] = {"ready": n, "ready_seconds": ready_s, **asyncio.run(active_users(side, users, seconds))}
        except TimeoutError as e:
            out[name] = {"ready": 0, "error": str(e)}
        side.stop_servers(users)
    return out


# --- report --------------------------------------------------------------------------------

def g(res: dict[str, Any], *keys: str) -> float:
    cur: Any = res
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            return math.nan
        cur = cur[k]
    return float(cur) if isinstance(cur, (int, float)) else math.nan


def med(runs: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in runs if r.get("status") == 200 and key in r]
    return summary(vals)["median"] if len(vals) == len(runs) else math.nan


def report(res: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    out, goals = [], []

    def pair(label: str, o: float, s: float, unit: str, limit: float | None = None, at_least: bool = False, goal_label: str | None = None) -> list[str]:
        r = ratio(o, s)
        if limit is not None:
            goals.append(goal(goal_label or f"P5 {label} (ours/stock)", r, limit, "x", at_least=at_least, ours=fmt(o, unit), stock=fmt(s, unit)))
        return [label, fmt(o, unit), fmt(s, unit), fmt(r, "x")]

    rows = []
    if "small" in res:
        sm = res["small"]
        rows.append(pair("small request p50", g(sm, "latency", "ours", "median"), g(sm, "latency", "stock", "median"), "ms", 1.05))
        rows.append(pair("small request p95", g(sm, "latency", "ours", "p95"), g(sm, "latency", "stock", "p95"), "ms", 1.05))
        rows.append(pair("requests/s, 20 clients", sm["rps_20_clients"]["ours"], sm["rps_20_clients"]["stock"], "rate", 0.95, True))
        rows.append(["small request errors", sm["errors"]["ours"], sm["errors"]["stock"], ""])
    if "lab" in res:
        lab = res["lab"]
        rows.append(pair("JupyterLab cold load (median)", g(lab, "load", "ours", "median"), g(lab, "load", "stock", "median"), "s", 1.05))
    if "kernels" in res:
        k = res["kernels"]
        rows.append(pair("kernel round trip p50", g(k, "ours", "rtt", "median"), g(k, "stock", "rtt", "median"), "ms", 1.05))
        rows.append(pair("kernel round trip p95", g(k, "ours", "rtt", "p95"), g(k, "stock", "rtt", "p95"), "ms"))
        rows.append(pair("kernel output MB/s", g(k, "ours", "output_mb_s"), g(k, "stock", "output_mb_s"), "rate", 0.95, True))
    if "transfers" in res:
        t = res["transfers"]
        rows.append(pair("1 GB download MB/s (median)", med(t["ours"]["download"], "mb_s"), med(t["stock"]["download"], "mb_s"), "rate", 0.95, True))
        rows.append(pair(f"{res['params']['up_mb']} MB upload MB/s (median, 1 MiB chunks)", med(t["ours"]["upload"], "mb_s"), med(t["stock"]["upload"], "mb_s"), "rate", 0.95, True))
        rows.append(["1 GB download statuses", " ".join(str(r["status"]) for r in t["ours"]["download"]), " ".join(str(r["status"]) for r in t["stock"]["download"]), ""])
    out.append(table("P5 data path: ours vs stock JupyterHub + configurable-http-proxy", ["", "ours", "stock", "ratio"], rows))

    if "transfers" in res:
        t, rows = res["transfers"], []
        for name in SIDES:
            c = t[name]["concurrent"]
            rows.append([name, f"{c['complete']}/{c['n']}", f"{c['aggregate_mb_s']:.0f}", f"{c['hub_rss_growth'] / MB:.1f} MB",
                         f"{c['hub_cpu_cores'] - c['idle']['hub_cpu_cores']:.3f}", f"{c['proxy_cpu_cores']:.2f}", f"{c['proxy_rss_growth'] / MB:.1f} MB"])
            for key, what in (("download", "1 GB download"), ("upload", f"{res['params']['up_mb']} MB upload")):
                peak = max((r["hub_rss_growth"] for r in t[name][key]), default=math.nan)
                rows.append([f"{name}, one {what}", "", "", f"{peak / MB:.1f} MB",
                             f"{max(r['hub_cpu_cores'] for r in t[name][key]) - t[name]['concurrent']['idle']['hub_cpu_cores']:.3f}", "", ""])
        c = t["ours"]["concurrent"]
        # Flat only counts while the transfers ran: downloads that failed at once prove nothing.
        done = c["complete"] == c["n"]
        goals.append(goal(f"P5 hub RSS growth, {c['n']} concurrent 1 GB downloads", c["hub_rss_growth"] / MB if done else math.nan, 20, "MB", stock=f"{t['stock']['concurrent']['hub_rss_growth'] / MB:.1f} MB"))
        goals.append(goal(f"P5 hub CPU above idle, {c['n']} concurrent 1 GB downloads", c["hub_cpu_cores"] - c["idle"]["hub_cpu_cores"] if done else math.nan, 0.05, "cores",
                          stock=f"{t['stock']['concurrent']['hub_cpu_cores'] - t['stock']['concurrent']['idle']['hub_cpu_cores']:.3f} cores"))
        goals.append(goal(f"P5 {c['n']} concurrent 1 GB downloads complete", c["n"] - c["complete"], 0, "count", stock=f"{t['stock']['concurrent']['complete']}/{c['n']}"))
        out.append(table("P5 hub and proxy during transfers (peak RSS growth, CPU cores averaged over the transfer)",
                         ["side", "concurrent complete", "aggregate MB/s", "hub RSS growth", "hub CPU above idle", "proxy CPU", "proxy RSS growth"], rows))
    if "big" in res:
        b, rows = res["big"], []
        for name in SIDES:
            d, u = b[name]["download"], b[name]["upload"]
            rows.append([name, f"{d['status']}, {d['bytes'] / GB:.2f} GB, identical: {d['identical']}", f"{u['status']}, identical: {u['identical']}"])
        out.append(table(f"P5 big transfers ({res['params']['big_down_gb']} GB download, {res['params']['big_up_gb']} GB upload)", ["side", "download", "upload"], rows))
        goals.append(goal(f"P5 {res['params']['big_down_gb']} GB download byte-identical", 0 if b["ours"]["download"]["identical"] else 1, 0, "count", stock=str(b["stock"]["download"]["identical"])))
        goals.append(goal(f"P5 {res['params']['big_up_gb']} GB upload byte-identical", 0 if b["ours"]["upload"]["identical"] else 1, 0, "count", stock=str(b["stock"]["upload"]["identical"])))
    if "neighbours" in res:
        nb, rows = res["neighbours"], []
        for name in SIDES:
            base = nb[name]["baseline"]
            for key, what in (("baseline", "alone"), ("slow_downloads", "alice: 12 slow downloads"), ("frozen_server", "alice: frozen server, 12 pending")):
                x = nb[name][key]
                rows.append([name, what, x["n"], x["failed"], fmt(x["median"]), fmt(x["p95"]), fmt(ratio(x["p95"], base["p95"]), "x")])
        out.append(table("P5 bob's small requests while alice's requests are stuck", ["side", "alice", "bob answered", "bob failed", "p50", "p95", "p95 vs alone"], rows))
        for key, label in (("slow_downloads", "12 slow downloads"), ("frozen_server", "a frozen server with 12 pending")):
            o = nb["ours"]
            moved = ratio(o[key]["p95"], o["baseline"]["p95"]) if not o[key]["failed"] else math.inf
            goals.append(goal(f"P5 another user's p95 with {label} (× alone)", moved, 1.10, "x",
                              stock=fmt(ratio(nb["stock"][key]["p95"], nb["stock"]["baseline"]["p95"]), "x") + f", {nb['stock'][key]['failed']} failed"))
    if "restart" in res:
        rs, rows = res["restart"], []
        for name in SIDES:
            x = rs[name]
            rows.append([name, f"{x['restart_seconds']:.1f} s", f"{x['websockets']}", x["dropped"], x["requests_ok"], x["requests_failed"], "; ".join(x["open_errors"])[:80]])
        out.append(table("P5 hub restart with open kernel WebSockets (bob polls his server every 0.1 s)", ["side", "restart", "WebSockets", "dropped", "requests ok", "requests failed", "notes"], rows))
        o = rs["ours"]
        goals.append(goal("P5 hub restart: WebSockets dropped", o["dropped"] + len(o["open_errors"]), 0, "count", stock=str(rs["stock"]["dropped"])))
        goals.append(goal("P5 hub restart: requests failed", o["requests_failed"], 0, "count", stock=str(rs["stock"]["requests_failed"])))
    if "scale" in res:
        sc, rows = res["scale"], []
        for name in SIDES:
            x = sc[name]
            rows.append([name, f"{x.get('ready', 0)}/{res['params']['users']}", x.get("kernels", "—"), x.get("failed", "—"), fmt(g(x, "rtt", "median")), fmt(g(x, "rtt", "p95")),
                         f"{g(x, 'hub_cpu_cores'):.3f}", f"{g(x, 'proxy_cpu_cores'):.3f}"])
        out.append(table(f"P5 {res['params']['users']} users with active kernels (one execute a second each, {res['params']['scale_seconds']:.0f} s)",
                         ["side", "ready", "kernels", "failed", "RTT p50", "RTT p95", "hub CPU (cores)", "proxy CPU (cores)"], rows))
        n = res["params"]["users"]
        goals.append(goal(f"P5 {n} active users: not ready or no kernel", n - (sc["ours"].get("kernels") or 0), 0, "count", stock=str(n - (sc["stock"].get("kernels") or 0))))
        goals.append(goal(f"P5 {n} active users: RTT p95 (ours/stock)", ratio(g(sc, "ours", "rtt", "p95"), g(sc, "stock", "rtt", "p95")), 1.10, "x",
                          ours=fmt(g(sc, "ours", "rtt", "p95")), stock=fmt(g(sc, "stock", "rtt", "p95"))))
        # The hub's CPU only says something while every user's kernel was active.
        busy = (sc["ours"].get("kernels") or 0) == n
        goals.append(goal(f"P5 {n} active users: hub CPU", g(sc, "ours", "hub_cpu_cores") if busy else math.nan, 0.05, "cores", stock=f"{g(sc, 'stock', 'hub_cpu_cores'):.3f} cores"))
    return "\n".join(out), goals


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the issue's full sizes: 5 GB download and 1 GB upload byte for byte, 200 MB uploads, more users and repeats")
    p.add_argument("--only", default="small,lab,kernels,transfers,big,neighbours,restart,scale", help="comma-separated subset")
    p.add_argument("--users", type=int, help="users with active kernels (default 12, 60 with --full: 200 JupyterLab servers and kernels do not fit in 24 GB on 2 cores)")
    args = p.parse_args(argv)
    full = args.full
    params = {
        "full": full, "small_n": 600 if full else 200, "lab_repeats": 5 if full else 2, "kernel_n": 200 if full else 100,
        "output_mb": 50 if full else 20, "transfer_repeats": 2 if full else 1, "concurrent": 10, "up_mb": 200,
        "big_down_gb": 5, "big_up_gb": 1, "neighbour_seconds": 20 if full else 12,
        "users": args.users or (60 if full else 12), "scale_seconds": 30 if full else 15,
    }
    only = set(args.only.split(","))
    if not full:
        only.discard("big")
    res: dict[str, Any] = {"params": params, "load": [load()]}
    with tempfile.TemporaryDirectory(prefix="bench-p5-") as tmp_s:
        tmp = Path(tmp_s)
        sides: dict[str, Side] = {"ours": Ours(tmp / "ours"), "stock": Stock(tmp / "stock")}
        try:
            for side in sides.values():
                (side.tmp).mkdir(parents=True, exist_ok=True)
                side.start()
            for side in sides.values():
                side.spawn(["alice", "bob", "carol"])
            steps = [
                ("small", lambda: bench_small(sides, params["small_n"])),
                ("kernels", lambda: bench_kernels(sides, params["kernel_n"], params["output_mb"])),
                ("lab", lambda: bench_lab(sides, params["lab_repeats"])),
                ("transfers", lambda: bench_transfers(sides, tmp, params["transfer_repeats"], params["concurrent"], params["up_mb"])),
                ("big", lambda: bench_big(sides, tmp, params["big_down_gb"], params["big_up_gb"])),
                ("neighbours", lambda: bench_neighbours(sides, tmp, params["neighbour_seconds"])),
                ("restart", lambda: bench_restart(sides)),
                ("scale", lambda: bench_scale(sides, params["users"], params["scale_seconds"])),
            ]
            for key, step in steps:
                if key not in only:
                    continue
                began = time.monotonic()
                print(f"P5 {key} …", flush=True)
                res[key] = step()
                res["load"].append({"after": key, "seconds": round(time.monotonic() - began, 1), **load()})
        finally:
            for side in sides.values():
                try:
                    side.stop()
                except Exception as e:  # noqa: BLE001 - stop the other side too
                    print(f"stopping {side.name}: {e}")
    text, goals = report(res)
    res["goals"] = goals
    print(text)
    print(goals_table(goals))
    print(f"\nJSON: {write_results('p5_datapath', res)}")
    return res


if __name__ == "__main__":
    main()
