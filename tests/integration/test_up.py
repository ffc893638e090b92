"""`gen3-workspace up` as a newcomer runs it: dev login, the URL it prints, and Ctrl-C leaving nothing behind."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import requests

from tests.support.hub import Hub
from tests.support.processes import pid_alive


def post_dev_login(hub: Hub, user: str) -> tuple[requests.Session, requests.Response]:
    """Submit the dev login form as a browser would (with the page's _xsrf token)."""
    s = requests.Session()
    page = s.get(f"{hub.url}hub/login", timeout=30).text
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
    return s, s.post(f"{hub.url}hub/login", data={"username": user, "_xsrf": xsrf}, timeout=60)


def dev_login(hub: Hub, user: str) -> requests.Session:
    s, r = post_dev_login(hub, user)
    assert r.status_code == 200, r.text[:500]
    return s


def test_up_prints_the_url_serves_login_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    hub = Hub(tmp_path, extra_args=["--dev-group", "alice=gpu-users"]).start()
    try:
        assert f"open {hub.url}" in hub.log()
        page = requests.get(hub.url, timeout=30)
        assert page.status_code == 200 and "/hub/login" in page.url
        assert "DEV LOGIN" in page.text and 'name="password"' not in page.text

        s = dev_login(hub, "alice")
        form = s.get(f"{hub.url}hub/spawn", timeout=30).text
        assert 'value="python-gpu"' in form, "--dev-group gives alice the GPU flavor"
        assert hub.api("POST", "users/alice/server", json={"flavor": "python-small"}).status_code in (201, 202)
        model = hub.wait_for_server("alice")
        server_pid = model["servers"][""]["state"]["pid"]
        # The engine (nginx) master, in its own session: the hub stops it.
        proxy_pid = int((hub.data_dir / "engine" / "engine.pid").read_text())
        hub_pid = int((hub.data_dir / "jupyterhub.pid").read_text()) if (hub.data_dir / "jupyterhub.pid").exists() else None
        assert pid_alive(server_pid) and pid_alive(proxy_pid)
    except BaseException:
        hub.stop()
        raise

    # Ctrl-C in a terminal signals the whole foreground process group.
    os.killpg(hub.proc.pid, signal.SIGINT)
    hub.proc.wait(60)
    deadline = time.time() + 20
    pids = [p for p in (server_pid, proxy_pid, hub_pid) if p]
    while time.time() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if pid_alive(p)], f"left behind: {[p for p in pids if pid_alive(p)]}"
    hub.stop()


def test_the_embedded_mode_refuses_a_public_address_with_or_without_fence(tmp_path: Path) -> None:
    import subprocess
    import sys

    base = [sys.executable, "-m", "gen3workspace.hub.cli", "up", "--data-dir", str(tmp_path), "--ip", "0.0.0.0"]
    fence = ["--commons-url", "https://data.example.org", "--client-id", "c"]
    for args in (base, base + fence):
        env = {**__import__("os").environ, "GEN3_CLIENT_SECRET": "s"}
        r = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 2 and "only listens on 127.0.0.1" in r.stderr and "Helm chart" in r.stderr


def test_weird_usernames_are_refused_cleanly_or_get_a_safe_drive(tmp_path: Path) -> None:
    hub = Hub(tmp_path).start()
    try:
        for name in ("a b", "x" * 80, "../etc"):
            _, r = post_dev_login(hub, name)
            assert r.status_code == 403, name
        # A legitimate but unusual name gets a drive folder inside the data dir.
        dev_login(hub, "ünï.cødé@uni.edu")
        assert hub.api("POST", "users/ünï.cødé@uni.edu/server", json={}).status_code in (201, 202)
        hub.wait_for_server("ünï.cødé@uni.edu")
        drives = [p for p in (hub.data_dir / "drives").iterdir()]
        assert len(drives) == 1 and drives[0].name.isascii() and drives[0].resolve().parent == (hub.data_dir / "drives").resolve()
        assert requests.get(f"{hub.url}hub/health", timeout=10).status_code == 200
    finally:
        hub.stop()
