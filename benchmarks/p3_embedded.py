"""P3: `gen3-workspace up` against stock JupyterHub (SimpleLocalProcessSpawner + DummyAuthenticator) on this machine.

Each run starts from an empty data folder and measures, as a person at a browser would see it:
process start → the login page answers 200, then login → JupyterLab (`/user/<name>/lab`) answers 200.
Ours logs in through the dev login and picks a flavor on the flavor page; stock JupyterHub logs
in through DummyAuthenticator and spawns without a form. Both run the same jupyterhub-singleuser
(with JupyterLab) from this venv and the same configurable-http-proxy. Runs alternate ABBA.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from benchmarks.sides import stop_process
from benchmarks.stats import REPO, chp_command, fmt, goal, goals_table, interleaved, load, ratio, summary, table, write_results
from gen3workspace.hub.cli import free_port

VENV_BIN = Path(sys.executable).parent

STOCK_CONFIG = """\
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.db_url = "sqlite:///{data}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{data}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{data}/jupyterhub.pid"
c.JupyterHub.cleanup_servers = True
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.pid_file = "{data}/proxy.pid"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.spawner_class = "simple"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = {args!r}
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.SimpleLocalProcessSpawner.home_dir_template = "{data}/home/{{username}}"
"""


def singleuser_args() -> list[str]:
    return ["--allow-root"] if os.geteuid() == 0 else []


def start_ours(data: Path, port: int, log: Any) -> subprocess.Popen[bytes]:
    # The console script `make up` runs, as a newcomer runs it.
    argv = [str(VENV_BIN / "gen3-workspace"), "up", "--data-dir", str(data), "--port", str(port)]
    return subprocess.Popen(argv, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def start_stock(data: Path, port: int, log: Any) -> subprocess.Popen[bytes]:
    data.mkdir(parents=True, exist_ok=True)
    (data / "home").mkdir(exist_ok=True)
    cfg = data / "jupyterhub_config.py"
    cfg.write_text(
        STOCK_CONFIG.format(
            port=port, hub_port=free_port(), api_port=free_port(), data=data, chp=chp_command(),
            singleuser=str(VENV_BIN / "jupyterhub-singleuser"), args=singleuser_args(),
        )
    )
    env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=os.urandom(16).hex())
    return subprocess.Popen([str(VENV_BIN / "jupyterhub"), "-f", str(cfg)], cwd=str(data), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(check: Any, timeout: float, what: str, proc: subprocess.Popen[bytes], interval: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the hub exited with {proc.returncode}")
        try:
            if check():
                return time.monotonic()
        except requests.RequestException:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} not within {timeout:.0f} s")


def lab_ready(s: requests.Session, url: str, user: str) -> bool:
    """JupyterLab itself answered 200 (after the server's OAuth round trip), not the hub's pending page."""
    r = s.get(f"{url}user/{user}/lab", timeout=30)
    return r.status_code == 200 and r.url.split("?")[0].rstrip("/").endswith(f"/user/{user}/lab")


def one_run(side: str, tmp: Path, user: str) -> dict[str, Any]:
    data = tmp / f"{side}-data"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"{side}.log"
    with open(log_path, "ab") as log:
        began = time.monotonic()
        proc = (start_ours if side == "ours" else start_stock)(data, port, log)
        try:
            login_page_at = wait_for(lambda: requests.get(f"{url}hub/login", timeout=5).status_code == 200, 120, "login page", proc)
            s = requests.Session()
            t_login = time.monotonic()
            page = s.get(f"{url}hub/login", timeout=30).text
            xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
            r = s.post(f"{url}hub/login", data={"username": user, "password": "x", "_xsrf": xsrf}, timeout=60, allow_redirects=False)
            if r.status_code >= 400:
                raise RuntimeError(f"{side}: login answered {r.status_code}")
            form = s.get(f"{url}hub/spawn", timeout=60, allow_redirects=False)
            if side == "ours":
                # The flavor page: pick the default flavor as a user clicking "Start" does.
                action = html.unescape(re.search(r'action="([^"]+)"', form.text).group(1))
                s.post(f"http://127.0.0.1:{port}{action}", data={"flavor": "python-small"}, timeout=60, allow_redirects=False)
            lab_at = wait_for(lambda: lab_ready(s, url, user), 180, "JupyterLab", proc, 0.05)
        except BaseException:
            print(f"{side} run failed; log {log_path}:\n{log_path.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
        finally:
            stop_process(proc)
    return {"side": side, "start_to_login_page": login_page_at - began, "login_to_lab": lab_at - t_login}


def run(repeats: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    loads = [load()]
    with tempfile.TemporaryDirectory(prefix="bench-p3-") as tmp:
        for i, side in enumerate(interleaved(repeats)):
            runs.append(one_run(side, Path(tmp) / f"run{i}", f"user{i}"))
            loads.append(load())
    out: dict[str, Any] = {"repeats": repeats, "runs": runs, "load": loads}
    for key in ("start_to_login_page", "login_to_lab"):
        out[key] = {side: summary(r[key] for r in runs if r["side"] == side) for side in ("ours", "peer")}
    return out


def report(res: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    for key, label in (("start_to_login_page", "process start → login page 200"), ("login_to_lab", "login → JupyterLab 200")):
        o, p = res[key]["ours"], res[key]["peer"]
        rows.append([label, fmt(o["median"], "s"), fmt(p["median"], "s"), fmt(ratio(o["median"], p["median"]), "x"), fmt(o["p95"], "s"), fmt(p["p95"], "s")])
    text = table(
        f"P3 embedded mode (gen3-workspace up) vs stock JupyterHub, {res['repeats']} runs each, ABBA",
        ["", "ours median", "stock median", "ratio", "ours p95", "stock p95"],
        rows,
    )
    o, p = res["start_to_login_page"]["ours"], res["start_to_login_page"]["peer"]
    return text, [goal("P3 start-up (median ratio)", ratio(o["median"], p["median"]), 1.2)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per side")
    args = p.parse_args(argv)
    res = run(args.repeats)
    text, goals = report(res)
    res["goals"] = goals
    print(text)
    print(goals_table(goals))
    print(f"\nJSON: {write_results('p3_embedded', res)}")
    return res


if __name__ == "__main__":
    main()
