"""P1: one spawn and one stop, Gen3KubeSpawner against stock KubeSpawner 7 with a per-user PVC, on the Kubernetes test bed.

Both spawners run in this process as the chart's hub ServiceAccount against the real
kube-apiserver, with the kubelet harness (a separate process) playing the node. Each run is a new
user (so both create the user's PVC, as on a first spawn), driven as JupyterHub drives a spawn
(pending flag, the options hook, start) and a stop (stop, post-stop hook). The peer gets the
same image, CPU and memory as the flavor, the same PVC and mount. Runs alternate ABBA.

Measured per run: start() → the pod exists (the create call answered), → the pod is Running
and ready in the pod reflector (checked every 5 ms), → start() returned; stop() + post-stop
hook. Kubernetes calls come from the API server's audit log (the hub identity only), Fence calls
from the Fence stand-in's record; the stand-in runs in a process of its own, as Fence would.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.fence_proc import FenceProcess
from benchmarks.kubebed_env import BenchBed
from benchmarks.stats import fmt, goal, goals_table, interleaved, load, ratio, summary, table, write_results

FLAVOR = "python-small"
RESTRICTED_CONTAINER = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
# Without a container runtime the harness runs the container's command here: a small HTTP server.
SERVER_CMD = [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8888"]


def make_ours(fence: Any, namespace: str, name: str) -> Any:
    from gen3workspace.hub.auth import Gen3OAuthenticator
    from gen3workspace.spawner.kube import Gen3KubeSpawner
    from tests.support.fakes import FakeUser, fake_hub

    fence.add_user(name)
    auth = Gen3OAuthenticator(commons_url=fence.url, client_id=fence.client_id, client_secret=fence.client_secret)
    user = FakeUser(name, [], auth_state={"access_token": fence.mint_access_token(name), "oauth_user": {"authz": {}}})
    return Gen3KubeSpawner(user=user, hub=fake_hub(), authenticator=auth, namespace=namespace, cmd=SERVER_CMD, start_timeout=60)


def make_peer(namespace: str, name: str) -> Any:
    from kubespawner import KubeSpawner

    from gen3workspace.spawner.flavors import default_catalogue_path, load_catalogue, parse_quantity
    from tests.support.fakes import FakeUser, fake_hub

    f = load_catalogue(default_catalogue_path()).get(FLAVOR)
    return KubeSpawner(
        user=FakeUser(name),
        hub=fake_hub(),
        namespace=namespace,
        cmd=SERVER_CMD,
        start_timeout=60,
        image=f.image,
        cpu_guarantee=f.cpu_guarantee,
        cpu_limit=f.cpu_limit,
        mem_guarantee=int(parse_quantity(f.mem_guarantee, "memory")),
        mem_limit=int(parse_quantity(f.mem_limit, "memory")),
        storage_pvc_ensure=True,
        pvc_name_template="claim-{username}",
        storage_capacity="10Gi",
        volumes=[{"name": "home", "persistentVolumeClaim": {"claimName": "claim-{username}"}}],
        volume_mounts=[{"name": "home", "mountPath": "/home/jovyan"}],
        # The chart's users' namespace enforces Pod Security "restricted": what any pod there needs.
        uid=1000,
        container_security_context=RESTRICTED_CONTAINER,
        pod_security_context=RESTRICTED_POD,
    )


async def one_run(side: str, spawner: Any) -> dict[str, Any]:
    marks: dict[str, float] = {}
    original = spawner._make_create_pod_request

    async def create_pod(*args: Any, **kw: Any) -> Any:
        ok = await original(*args, **kw)
        if ok:
            marks.setdefault("pod_created", time.monotonic())
        return ok

    spawner._make_create_pod_request = create_pod

    # Where the time before the pod goes: the PVC, and for ours the Fence key and its Secret.
    def mark_end(name: str, fn: Any) -> Any:
        async def wrapped(*args: Any, **kw: Any) -> Any:
            result = await fn(*args, **kw)
            marks.setdefault(name, time.monotonic())
            return result

        return wrapped

    spawner._make_create_pvc_request = mark_end("pvc_created", spawner._make_create_pvc_request)
    if hasattr(spawner, "mint_api_key"):
        spawner.mint_api_key = mark_end("key_minted", spawner.mint_api_key)
        spawner._write_credentials_secret = mark_end("secret_written", spawner._write_credentials_secret)

    async def watch_running() -> None:
        key = f"{spawner.namespace}/{spawner.pod_name}"
        while True:
            reflector = spawner.pod_reflector
            pod = reflector.pods.get(key) if reflector else None
            if pod and spawner.is_pod_running(pod):
                marks["running"] = time.monotonic()
                return
            await asyncio.sleep(0.005)

    wall0 = time.time()
    t0 = time.monotonic()
    watcher = asyncio.ensure_future(watch_running())
    # What JupyterHub's User.spawn does around start().
    spawner._start_pending = True
    try:
        await spawner._run_apply_user_options({"flavor": FLAVOR})
        await spawner.start()
    finally:
        spawner._start_pending = False
    t_started = time.monotonic()
    wall_started = time.time()
    await asyncio.wait_for(watcher, 10)
    s0 = time.monotonic()
    wall_stop0 = time.time()
    await spawner.stop()
    result = spawner.run_post_stop_hook()
    if asyncio.iscoroutine(result):
        await result
    s1 = time.monotonic()
    return {
        "side": side,
        "user": spawner.user.name,
        "to_pod_created": marks["pod_created"] - t0,
        "to_pvc_created": marks["pvc_created"] - t0,
        "to_key_minted": marks["key_minted"] - t0 if "key_minted" in marks else None,
        "to_secret_written": marks["secret_written"] - t0 if "secret_written" in marks else None,
        "to_running": marks["running"] - t0,
        "start_returned": t_started - t0,
        "stop": s1 - s0,
        "window_start": (wall0, wall_started),
        "window_stop": (wall_stop0, time.time()),
    }


async def run_all(bb: BenchBed, fence: Any, pairs: int) -> list[dict[str, Any]]:
    import kubernetes_asyncio.config as k8s_config
    import kubernetes_asyncio.config.kube_config as kc

    kc.KUBE_CONFIG_DEFAULT_LOCATION = str(bb.hub_kubeconfig)
    await k8s_config.load_kube_config(config_file=str(bb.hub_kubeconfig))
    from kubespawner import KubeSpawner

    runs = []
    try:
        # Warm-up, one per side: starts the shared pod reflector and the clients' connections.
        for side in ("ours", "peer"):
            sp = make_ours(fence, bb.users_namespace, "warm-o") if side == "ours" else make_peer(bb.users_namespace, "warm-p")
            await one_run(side, sp)
        fence_seen = len(fence.calls_since(0))
        for i, side in enumerate(interleaved(pairs)):
            name = f"o{i}" if side == "ours" else f"p{i}"
            sp = make_ours(fence, bb.users_namespace, name) if side == "ours" else make_peer(bb.users_namespace, name)
            r = await one_run(side, sp)
            r["fence_calls"] = fence.calls_since(fence_seen)
            fence_seen += len(r["fence_calls"])
            runs.append(r)
    finally:
        await KubeSpawner._stop_all_reflectors()
    return runs


def generic(label: str, user: str) -> str:
    """A call with this run's user and key written generically, so runs can be compared."""
    return re.sub(r"/user/credentials/api/[0-9a-f-]{36}", "/user/credentials/api/<key_id>", label.replace(user, "<user>"))


def attribute_api_calls(bb: BenchBed, runs: list[dict[str, Any]]) -> None:
    calls = bb.api_calls(bb.hub_user)
    for r in runs:
        for phase in ("start", "stop"):
            lo, hi = r[f"window_{phase}"]
            r[f"k8s_{phase}"] = [generic(c.label(), r["user"]) for c in calls if lo <= c.at <= hi]
        r["fence_calls"] = [generic(c, r["user"]) for c in r["fence_calls"]]


def modal(lists: list[list[str]]) -> tuple[list[str], int]:
    """The most common list of calls across runs, and how many runs had it."""
    counts = Counter(tuple(sorted(x)) for x in lists)
    best, n = counts.most_common(1)[0]
    return list(best), n


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in ("ours", "peer"):
        mine = [r for r in runs if r["side"] == side]
        out[side] = {k: summary(r[k] for r in mine) for k in ("to_pvc_created", "to_key_minted", "to_secret_written", "to_pod_created", "to_running", "start_returned", "stop")}
        for phase in ("start", "stop"):
            calls, n = modal([r[f"k8s_{phase}"] for r in mine])
            out[side][f"k8s_{phase}"] = {"calls": calls, "count": len(calls), "runs_with_this_list": n, "runs": len(mine),
                                         "count_per_run": [len(r[f"k8s_{phase}"]) for r in mine]}
        calls, n = modal([r["fence_calls"] for r in mine])
        out[side]["fence"] = {"calls": calls, "count": len(calls), "runs_with_this_list": n, "runs": len(mine)}
    return out


def report(res: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    s = res["summary"]
    o, p = s["ours"], s["peer"]
    rows = []
    for key, label in (("to_pvc_created", "start → PVC created"), ("to_key_minted", "start → Fence key minted"), ("to_secret_written", "start → key Secret written"),
                       ("to_pod_created", "start → pod created"), ("to_running", "start → pod Running (reflector)"),
                       ("start_returned", "start → start() returned"), ("stop", "stop + post-stop hook")):
        rows.append([label, fmt(o[key]["median"]), fmt(p[key]["median"]), fmt(ratio(o[key]["median"], p[key]["median"]), "x"),
                     fmt(o[key]["p95"]), fmt(p[key]["p95"]), fmt(ratio(o[key]["p95"], p[key]["p95"]), "x")])
    text = table(f"P1 one spawn and one stop, {res['pairs']} runs per side (ABBA), Gen3KubeSpawner vs KubeSpawner 7 + PVC",
                 ["", "ours median", "peer median", "ratio", "ours p95", "peer p95", "p95 ratio"], rows)
    calls = []
    for side in ("ours", "peer"):
        for phase in ("start", "stop"):
            c = s[side][f"k8s_{phase}"]
            calls.append([side, f"Kubernetes, {phase}", c["count"], "; ".join(c["calls"]) or "—", f"{c['runs_with_this_list']}/{c['runs']}"])
        f = s[side]["fence"]
        calls.append([side, "Fence, spawn + stop", f["count"], "; ".join(f["calls"]) or "—", f"{f['runs_with_this_list']}/{f['runs']}"])
    text += table("P1 calls per spawn (Kubernetes: the API server's audit log, hub identity; Fence: the stand-in's record)",
                  ["side", "calls", "n", "list", "runs with this list"], calls)
    goals = [
        goal("P1 start → pod created (median ratio)", ratio(o["to_pod_created"]["median"], p["to_pod_created"]["median"]), 1.15),
        goal("P1 start → Running (median ratio)", ratio(o["to_running"]["median"], p["to_running"]["median"]), 1.05),
        goal("P1 Kubernetes calls to start, ours − peer", o["k8s_start"]["count"] - p["k8s_start"]["count"], 1, "n"),
        goal("P1 Kubernetes calls to stop, ours − peer", o["k8s_stop"]["count"] - p["k8s_stop"]["count"], 1, "n"),
    ]
    return text, goals


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=20, help="runs per side (after one warm-up each)")
    args = p.parse_args(argv)
    loads = [load()]
    with tempfile.TemporaryDirectory(prefix="bench-p1-") as tmp:
        bb = BenchBed(Path(tmp)).start()
        fence = FenceProcess()
        try:
            bb.start_kubelet()
            runs = asyncio.run(run_all(bb, fence, args.pairs))
            attribute_api_calls(bb, runs)
        finally:
            fence.stop()
            bb.stop()
    loads.append(load())
    res = {"pairs": args.pairs, "runs": runs, "summary": summarize(runs), "load": loads}
    text, goals = report(res)
    res["goals"] = goals
    print(text)
    print(goals_table(goals))
    print(f"\nJSON: {write_results('p1_spawn', res)}")
    return res


if __name__ == "__main__":
    main()
