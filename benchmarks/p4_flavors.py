"""P4: the flavor page and the launcher API's `options` for a catalogue of 200 flavors with access rules.

Both run the code a hub request runs for them (catalogue hot-reload check, the per-user filter,
the page template) on a Gen3 spawner, timed in-process. `options` is whatever
``--options-impl module:function`` names: an ``async (spawner) -> JSON-able`` callable. Until the
launcher API (hub/launcher.py) is on this branch the default is :func:`options_from_filter`, the
filter the launcher answers from (``allowed_flavors``) plus the JSON encoding of its answer.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.stats import fmt, goal, goals_table, load, summary, table, write_results

LAUNCHER_MODULE = "gen3workspace.hub.launcher"


def catalogue_yaml(n: int) -> str:
    """n flavors: a third open to all, a third for some groups, a third behind a Fence authz resource."""
    flavors = []
    for i in range(n):
        f: dict[str, Any] = {
            "name": f"flavor-{i:03d}",
            "display_name": f"Flavor {i}",
            "description": "A benchmark flavor with a description of about this length, as admins write them.",
            "image": f"quay.io/cdis/notebook-python:{i}",
            "cpu": {"guarantee": "500m", "limit": 1 + i % 8},
            "memory": {"guarantee": "1Gi", "limit": f"{2 + i % 16}Gi"},
        }
        if i % 3 == 1:
            f["allowed_groups"] = [f"group-{i % 7}", "gpu-users"]
        if i % 3 == 2:
            f["authz_resource"] = f"/workspace/flavor-{i % 11}"
        if i % 10 == 9:
            f["gpu"] = 1
        flavors.append(f)
    return yaml.safe_dump({"default": "flavor-000", "flavors": flavors}, sort_keys=False)


def user_context() -> tuple[list[str], dict[str, Any]]:
    """A user in some of the groups and with workspace access on some of the resources."""
    groups = ["group-1", "group-3", "analysts"]
    authz = {"/workspace": [{"service": "jupyterhub", "method": "access"}]}
    for j in range(0, 11, 2):
        authz[f"/workspace/flavor-{j}"] = [{"service": "jupyterhub", "method": "access"}]
    for j in range(40):  # the rest of a typical commons' authz: many unrelated resources
        authz[f"/programs/p{j}/projects/x"] = [{"service": "*", "method": "read"}]
    return groups, authz


async def options_from_filter(spawner: Any) -> Any:
    """What the launcher's `options` answers from: the flavors this user may launch, as JSON."""
    return json.dumps([f.summary() for f in await spawner.allowed_flavors()])


def resolve_options_impl(name: str | None) -> tuple[str, Any]:
    if name:
        module, _, func = name.partition(":")
        return name, getattr(importlib.import_module(module), func)
    return "benchmarks.p4_flavors:options_from_filter (the launcher API is not on this branch yet)", options_from_filter


def make_spawner(flavor_file: Path, data_dir: Path) -> Any:
    from gen3workspace.spawner.local import Gen3LocalSpawner
    from tests.support.fakes import FakeUser, fake_hub

    groups, authz = user_context()
    user = FakeUser("bench-user", groups, auth_state={"oauth_user": {"authz": authz}})
    return Gen3LocalSpawner(user=user, hub=fake_hub(), flavor_file=str(flavor_file), data_dir=str(data_dir))


async def time_calls(fn: Any, n: int) -> tuple[list[float], list[float]]:
    """Wall time and this process's CPU time per call: on a loaded machine the wall time also
    counts waiting for a core, the CPU time only the work itself."""
    wall, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        await fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


async def run(n_flavors: int, repeats: int, options_impl: str | None) -> dict[str, Any]:
    impl_name, impl = resolve_options_impl(options_impl)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flavors.yaml"
        path.write_text(catalogue_yaml(n_flavors))
        spawner = make_spawner(path, Path(tmp))
        allowed = await spawner.allowed_flavors()
        page = await spawner.get_options_form()  # warm: first load parses and validates the file
        await impl(spawner)
        loads = [load()]
        page_times, page_cpu = await time_calls(spawner.get_options_form, repeats)
        option_times, option_cpu = await time_calls(lambda: impl(spawner), repeats)
        loads.append(load())
    return {
        "flavors": n_flavors,
        "allowed_for_user": len(allowed),
        "page_bytes": len(page),
        "options_impl": impl_name,
        "flavor_page": summary(page_times),
        "options": summary(option_times),
        "flavor_page_cpu": summary(page_cpu),
        "options_cpu": summary(option_cpu),
        "load": loads,
    }


def report(res: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    rows = [
        [label, fmt(res[k]["median"]), fmt(res[k]["p95"]), fmt(res[k + "_cpu"]["median"]), fmt(res[k + "_cpu"]["p95"]), res[k]["n"]]
        for k, label in (("flavor_page", "flavor page (get_options_form)"), ("options", "options (" + res["options_impl"].split(" ")[0] + ")"))
    ]
    text = table(
        f"P4 flavor page and options: {res['flavors']} flavors with access rules, {res['allowed_for_user']} allowed for the user",
        ["what", "wall median", "wall p95", "CPU median", "CPU p95", "runs"],
        rows,
    )
    goals = [
        goal("P4 flavor page (median wall time)", res["flavor_page"]["median"], 0.005, "ms"),
        goal("P4 options (median wall time)", res["options"]["median"], 0.005, "ms"),
    ]
    return text + f"\n\noptions measured through: {res['options_impl']}", goals


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flavors", type=int, default=200)
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--options-impl", help="module:function, an async (spawner) -> JSON-able callable (e.g. the launcher's)")
    args = p.parse_args(argv)
    res = asyncio.run(run(args.flavors, args.repeats, args.options_impl))
    text, goals = report(res)
    res["goals"] = goals
    print(text)
    print(goals_table(goals))
    print(f"\nJSON: {write_results('p4_flavors', res)}")
    return res


if __name__ == "__main__":
    main()
