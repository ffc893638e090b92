"""P2: a storm of N users starting their servers at once through a real JupyterHub's REST API, ours vs stock.

Ours: JupyterHub configured exactly as the Helm chart configures it (tests/support/charthub.py),
Gen3KubeSpawner, Fence login state and a Fence stand-in minting each server's API key. Stock:
JupyterHub with KubeSpawner 7, a per-user PVC, the same image, CPU and memory. Both run as the
chart's hub ServiceAccount against the real kube-apiserver, with the kubelet harness (its own
process) as the node, and the same small HTTP server as each user's container, so the hub and
the spawner are what differ. All N `POST /users/<name>/server` go out at once; the benchmark
polls `GET /users?state=ready` every 0.25 s. Per user: POST sent → server ready in the REST API.
Hub CPU: the hub process's user+system CPU time from the first POST until the last server was
ready (or the deadline). `concurrent_spawn_limit` is lifted on both sides (JupyterHub's default,
100, would answer 429 to the rest). Runs alternate sides by N.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from benchmarks.kubebed_env import BenchBed
from benchmarks.p1_spawn import RESTRICTED_CONTAINER, RESTRICTED_POD
from benchmarks.stats import RESULTS_DIR, chp_command, fmt, goal, goals_table, load, ratio, summary, table, write_results
from tests.support.charthub import ChartHub
from tests.support.chart_install import fullname, install_chart
from tests.support.fence import FenceStandIn, free_port
from tests.support.hub import Hub

FLAVOR = "python-small"
SERVER_CMD = [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8888"]

STORM_CONFIG = """
# Benchmark settings, the same on both sides: the hub's defaults for auth refresh, no cap on
# concurrent spawns, and a small HTTP server as the user's container (200 JupyterLabs would
# not fit in this machine's memory; the hub and the spawner are what is measured).
c.Authenticator.auth_refresh_age = 300
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.log_level = "INFO"
for cls in (c.KubeSpawner, c.Gen3KubeSpawner):  # the chart's config names Gen3KubeSpawner
    cls.cmd = {cmd!r}
    cls.args = []
    cls.start_timeout = {timeout}
    cls.http_timeout = {timeout}
"""

STOCK_HUB = """\
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.hub_connect_url = "http://127.0.0.1:{hub_port}"
c.JupyterHub.db_url = "sqlite:///{db}"
c.JupyterHub.cleanup_servers = True
c.ConfigurableHTTPProxy.should_start = True
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
c.KubeSpawner.namespace = {namespace!r}
c.KubeSpawner.image = {image!r}
c.KubeSpawner.cpu_guarantee = {cpu_guarantee!r}
c.KubeSpawner.cpu_limit = {cpu_limit!r}
c.KubeSpawner.mem_guarantee = {mem_guarantee!r}
c.KubeSpawner.mem_limit = {mem_limit!r}
c.KubeSpawner.storage_pvc_ensure = True
c.KubeSpawner.pvc_name_template = "claim-{{username}}"
c.KubeSpawner.storage_capacity = "10Gi"
c.KubeSpawner.volumes = [{{"name": "home", "persistentVolumeClaim": {{"claimName": "claim-{{username}}"}}}}]
c.KubeSpawner.volume_mounts = [{{"name": "home", "mountPath": "/home/jovyan"}}]
# The chart's users' namespace enforces Pod Security "restricted": what any pod there needs.
c.KubeSpawner.uid = 1000
c.KubeSpawner.container_security_context = {restricted_container!r}
c.KubeSpawner.pod_security_context = {restricted_pod!r}
load_subconfig({test_config!r})
"""


class QuietChartHub(ChartHub):
    """The chart's hub at the log level both sides run at (the test harness adds --debug)."""

    def command(self, test_config: Path, env: dict[str, str]) -> list[str]:
        return [a for a in super().command(test_config, env) if a != "--debug"]


class StockKubeHub(Hub):
    """Stock JupyterHub + KubeSpawner on the hub ServiceAccount's kubeconfig."""

    ready_marker = "JupyterHub is now running"

    def __init__(self, tmp: Path, kubeconfig: Path, namespace: str, extra_config: str):
        super().__init__(tmp, extra_config=extra_config)
        self.kubeconfig = kubeconfig
        self.namespace = namespace

    def command(self, test_config: Path, env: dict[str, str]) -> list[str]:
        from gen3workspace.spawner.flavors import default_catalogue_path, load_catalogue, parse_quantity

        f = load_catalogue(default_catalogue_path()).get(FLAVOR)
        cfg = self.tmp / "jupyterhub_config.py"
        cfg.write_text(STOCK_HUB.format(
            port=self.port, hub_port=free_port(), api_port=free_port(), db=self.tmp / "jupyterhub.sqlite", chp=chp_command(),
            namespace=self.namespace, image=f.image, cpu_guarantee=f.cpu_guarantee, cpu_limit=f.cpu_limit,
            mem_guarantee=int(parse_quantity(f.mem_guarantee, "memory")), mem_limit=int(parse_quantity(f.mem_limit, "memory")),
            test_config=str(test_config), restricted_container=RESTRICTED_CONTAINER, restricted_pod=RESTRICTED_POD,
        ))
        env.update(KUBECONFIG=str(self.kubeconfig), CONFIGPROXY_AUTH_TOKEN=secrets.token_hex(32), JUPYTERHUB_CRYPT_KEY=secrets.token_hex(32))
        return [sys.executable, "-m", "jupyterhub", "--config", str(cfg)]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def storm(hub: Hub, users: list[str], body: dict[str, Any], timeout: float) -> dict[str, Any]:
    api = f"{hub.url}hub/api"
    headers = {"Authorization": f"token {hub.admin_token}"}
    sent: dict[str, float] = {}
    answers: dict[str, int] = {}
    ready: dict[str, float] = {}
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout + 60)) as s:

        async def post(u: str) -> None:
            sent[u] = time.monotonic()
            try:
                async with s.post(f"{api}/users/{u}/server", json=body) as r:
                    answers[u] = r.status
                    await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                answers[u] = 599

        cpu0 = cpu_seconds(hub.proc.pid)
        t0 = time.monotonic()
        posts = [asyncio.ensure_future(post(u)) for u in users]
        deadline = t0 + timeout
        last_active_check = t0
        while len(ready) < len(users) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            try:
                async with s.get(f"{api}/users", params={"state": "ready", "limit": "10000"}) as r:
                    listing = await r.json()
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                continue
            now = time.monotonic()
            for model in listing if isinstance(listing, list) else listing.get("items", []):
                if model["name"] in sent and model["name"] not in ready:
                    ready[model["name"]] = now
            if len(answers) == len(users) and now - last_active_check > 2:
                # A spawn that failed after its POST answered 202 is neither ready nor active.
                last_active_check = now
                try:
                    async with s.get(f"{api}/users", params={"state": "active", "limit": "10000"}) as r:
                        listing = await r.json()
                    active = {m["name"] for m in (listing if isinstance(listing, list) else listing.get("items", []))}
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    continue
                if not [u for u in users if u not in ready and u in active]:
                    break  # everything left has failed
        t_end = time.monotonic()
        cpu1 = cpu_seconds(hub.proc.pid)
        await asyncio.gather(*posts, return_exceptions=True)
        # Tear down: every server stopped before the next run.
        async def delete(u: str) -> None:
            async with s.delete(f"{api}/users/{u}/server") as r:
                await r.read()

        await asyncio.gather(*(delete(u) for u in users), return_exceptions=True)
        stop_deadline = time.monotonic() + 300
        while time.monotonic() < stop_deadline:
            async with s.get(f"{api}/users", params={"state": "active", "limit": "10000"}) as r:
                active = await r.json()
            if not [m for m in (active if isinstance(active, list) else active.get("items", [])) if m["name"] in sent]:
                break
            await asyncio.sleep(1)
    times = [ready[u] - sent[u] for u in ready]
    failed = {u: answers.get(u) for u in users if u not in ready}
    return {
        "n": len(users),
        "ready": len(ready),
        "time_to_ready": summary(times),
        "errors": len(failed),
        "error_answers": sorted({str(v) for v in failed.values()}),
        "wall": t_end - t0,
        "hub_cpu_seconds": cpu1 - cpu0,
        "hub_cpu_cores_avg": (cpu1 - cpu0) / (t_end - t0) if t_end > t0 else 0.0,
        "timed_out": len(ready) < len(users) and t_end >= deadline,
    }


def prepare_users(hub: Hub, fence: FenceStandIn | None, users: list[str]) -> None:
    for u in users:
        r = hub.api("POST", f"users/{u}")
        if r.status_code not in (201, 409):
            raise RuntimeError(f"creating {u}: HTTP {r.status_code} {r.text[:200]}")
        if fence is not None:
            fence.add_user(u)
            tok = fence._token_response(u, ["openid", "user", "data", "credentials"], fence.client_id)
            # What a Fence login leaves in auth_state (OAuthenticator's layout).
            state = {
                "access_token": tok["access_token"], "refresh_token": tok["refresh_token"], "id_token": tok["id_token"],
                "scope": ["openid", "user", "data", "credentials"], "token_response": tok, "oauth_user": fence.users[u].userinfo(),
            }
            r = hub.api("PATCH", f"users/{u}", json={"auth_state": state})
            if r.status_code != 200:
                raise RuntimeError(f"auth_state for {u}: HTTP {r.status_code} {r.text[:200]}")


def read_configmap(bb: BenchBed, name: str, key: str) -> str:
    import json

    status, body = bb.bed._request("GET", f"/api/v1/namespaces/{bb.namespace}/configmaps/{name}")
    if status != 200:
        raise RuntimeError(f"ConfigMap {name}: HTTP {status}")
    return json.loads(body)["data"][key]


def one_run(side: str, n: int, run_id: str, bb: BenchBed, fence: FenceStandIn, tmp: Path, timeout: float) -> dict[str, Any]:
    extra = STORM_CONFIG.format(cmd=SERVER_CMD, timeout=int(timeout))
    folder = tmp / run_id
    folder.mkdir(parents=True)
    if side == "ours":
        config = read_configmap(bb, f"{fullname()}-hub-config", "config.yaml")
        flavors = read_configmap(bb, f"{fullname()}-flavors", "flavors.yaml")
        hub: Hub = QuietChartHub(folder, fence, bb.hub_kubeconfig, config, flavors, base_url=yaml.safe_load(config)["hub"]["baseUrl"])
        hub.extra_config = extra
    else:
        hub = StockKubeHub(folder, bb.hub_kubeconfig, bb.users_namespace, extra)
    hub.start(timeout=180)
    try:
        users = [f"{run_id}-{i}" for i in range(n)]
        prepare_users(hub, fence if side == "ours" else None, users)
        body = {"flavor": FLAVOR} if side == "ours" else {}
        keys_before = len(fence.api_keys)
        res = asyncio.run(storm(hub, users, body, timeout))
        res["fence_keys_minted"] = len(fence.api_keys) - keys_before if side == "ours" else 0
    finally:
        hub.stop()
        # Kept: the temporary folder goes at the end of the benchmark.
        logs = RESULTS_DIR / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        shutil.copy(hub.log_path, logs / f"p2-{run_id}-hub.log")
    res["log"] = str(logs / f"p2-{run_id}-hub.log")
    return {"side": side, **res}


def run(ns: list[int], timeout: float) -> dict[str, Any]:
    runs = []
    loads = [load()]
    with tempfile.TemporaryDirectory(prefix="bench-p2-") as tmpdir:
        tmp = Path(tmpdir)
        fence = FenceStandIn().start()
        bb = BenchBed(tmp / "bed")
        try:
            bb.start()
            # The chart, installed again with the stand-in as the commons: the hub's config comes from its ConfigMap.
            install_chart(bb.bed, bb.namespace, values={"commons": {"url": fence.url}, "auth": {"clientId": fence.client_id, "clientSecret": fence.client_secret}}, upgrade=True)
            bb.start_kubelet()
            for i, n in enumerate(ns):
                for side in (("ours", "peer") if i % 2 == 0 else ("peer", "ours")):
                    run_id = f"{side[0]}{n}"
                    print(f"[p2] {side} N={n} …", file=sys.stderr, flush=True)
                    r = one_run(side, n, run_id, bb, fence, tmp, timeout)
                    r["load_after"] = load()
                    print(f"[p2] {side} N={n}: {r['ready']}/{n} ready, p95 {fmt(r['time_to_ready']['p95'], 's')}, {r['wall']:.0f} s", file=sys.stderr, flush=True)
                    runs.append({"n": n, **r})
        finally:
            bb.stop()
            fence.stop()
    loads.append(load())
    return {"ns": ns, "timeout": timeout, "runs": runs, "load": loads}


def report(res: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    goals = []
    for n in res["ns"]:
        by = {r["side"]: r for r in res["runs"] if r["n"] == n}
        o, p = by["ours"], by["peer"]
        for side, r in (("ours", o), ("stock", p)):
            t = r["time_to_ready"]
            rows.append([n, side, f"{r['ready']}/{n}", fmt(t["median"], "s"), fmt(t["p95"], "s"), fmt(t["max"], "s"), r["errors"],
                         f"{r['hub_cpu_seconds']:.1f} s ({r['hub_cpu_cores_avg']:.2f} cores)", "yes" if r["timed_out"] else "no"])
        rows.append([n, "ratio", "", fmt(ratio(o["time_to_ready"]["median"], p["time_to_ready"]["median"]), "x"),
                     fmt(ratio(o["time_to_ready"]["p95"], p["time_to_ready"]["p95"]), "x"), fmt(ratio(o["time_to_ready"]["max"], p["time_to_ready"]["max"]), "x"),
                     "", fmt(ratio(o["hub_cpu_seconds"], p["hub_cpu_seconds"]), "x"), ""])
        if n == max(res["ns"]):
            goals.append(goal(f"P2 N={n} ours not ready", o["n"] - o["ready"], 0, "n"))
            goals.append(goal(f"P2 N={n} p95 ratio", ratio(o["time_to_ready"]["p95"], p["time_to_ready"]["p95"]), 1.1))
    text = table(f"P2 storm through the REST API (deadline {res['timeout']:.0f} s per run), ours vs stock JupyterHub + KubeSpawner",
                 ["N", "side", "ready", "p50", "p95", "max", "errors", "hub CPU", "hit deadline"], rows)
    return text, goals


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, action="append", help="storm size (repeatable; default 50, 100, 200)")
    p.add_argument("--timeout", type=float, default=300, help="deadline per run, seconds (200 users on 2 cores take minutes)")
    args = p.parse_args(argv)
    res = run(args.n or [50, 100, 200], args.timeout)
    text, goals = report(res)
    res["goals"] = goals
    print(text)
    print(goals_table(goals))
    print(f"\nJSON: {write_results('p2_storm', res)}")
    return res


if __name__ == "__main__":
    main()
