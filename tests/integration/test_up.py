"""`gen3-workspace up` as a newcomer runs it: dev login, the URL it prints, and Ctrl-C leaving nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from gen3workspace.spawner.flavors import default_catalogue_path
from tests.support.fence import free_port
from tests.support.hub import Hub, query
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


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (users' servers, their kernels, the proxy engine, the hub)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


# What an operator must never have to read past: any traceback, JupyterHub's allow-config
# scare, the proxy's host and port swapped, its uncaught exceptions, a shutdown racing itself.
NOISE = [
    "Traceback",
    "No allow config",
    "Uncaught Exception",
    "KeyboardInterrupt",
    "Failed to stop user",
    "Task was destroyed but it is pending",
    "Exception ignored",
]
SWAPPED_ADDRESS = re.compile(r"https?://\d+:\d{1,3}(\.\d{1,3}){3}\b")


def assert_quiet(log: str) -> None:
    found = [n for n in NOISE if n in log]
    assert not found, f"noise in the output: {found}\n{log[-3000:]}"
    assert not SWAPPED_ADDRESS.search(log), SWAPPED_ADDRESS.search(log).group(0)
    assert log.count("Received signal") <= 1, "the hub was signalled twice"


def banner_url(hub: Hub) -> str:
    match = re.search(r"Gen3 Workspace is running: open (\S+)", hub.log())
    assert match, hub.log()[-2000:]
    return match.group(1)


def ctrl_c(hub: Hub) -> str:
    """SIGINT to the command's process group, as a terminal's Ctrl-C; the output it printed."""
    assert hub.proc is not None
    before = len(hub.log())
    running = descendants(hub.proc.pid)
    os.killpg(hub.proc.pid, signal.SIGINT)
    assert hub.proc.wait(90) == 0
    deadline = time.time() + 20
    while time.time() < deadline and any(pid_alive(p) for p in running):
        time.sleep(0.2)
    assert not [p for p in running if pid_alive(p)], f"left behind: {[p for p in running if pid_alive(p)]}"
    hub.stop()
    return hub.log()[before:]


@pytest.mark.parametrize("base_url", ["/", "/lw-workspace/"], ids=["root", "portal-mode"])
def test_up_banner_url_answers_in_a_browser_and_ctrl_c_stops_everything_quietly(tmp_path: Path, base_url: str) -> None:
    from tests.support.browser import chromium

    # The dev login fills groups (--dev-group), not arborist resources: a group-restricted GPU
    # flavor shows what --dev-group does (the shipped example restricts it by resource).
    flavors = tmp_path / "flavors.yaml"
    example = default_catalogue_path().read_text(encoding="utf-8")
    assert "    authz_resource: /workspace-flavors/gpu\n" in example
    flavors.write_text(example.replace("    authz_resource: /workspace-flavors/gpu\n", "    allowed_groups: [gpu-users]\n"), encoding="utf-8")
    args = ["--dev-group", "alice=gpu-users", "--flavors", str(flavors)] + (["--base-url", base_url] if base_url != "/" else [])
    hub = Hub(tmp_path, extra_args=args).start()
    try:
        url = banner_url(hub)
        assert url == hub.url
        with chromium() as browser:
            page = browser.new_page()
            first = page.goto(url)
            assert first is not None and first.status == 200 and "/hub/login" in page.url, (page.url, first and first.status)
            assert "DEV LOGIN" in page.content() and "no commons is connected" in hub.log()
            page.fill("input[name=username]", "alice")
            with page.expect_navigation():
                page.keyboard.press("Enter")
            again = page.goto(url)
            assert again is not None and again.status == 200, (page.url, again and again.status)
            assert page.url.startswith(f"{url}hub/") and "/hub/login" not in page.url, page.url
            form = page.goto(f"{url}hub/spawn")
            assert form is not None and form.status == 200 and 'value="python-gpu"' in page.content(), "--dev-group gives alice the GPU flavor"

            # One refused flavor: one line for the operator, no traceback.
            s = dev_login(hub, "bob")
            xsrf = re.search(r'xsrf_token: "([^"]+)"', s.get(f"{hub.url}hub/spawn", timeout=30).text).group(1)
            before = len(hub.log())
            r = s.post(f"{hub.url}hub/spawn", data={"flavor": "python-gpu", "_xsrf": xsrf}, timeout=60)
            assert r.status_code == 403 and "not allowed to launch" in r.text
            time.sleep(1)
            refused = [line for line in hub.log()[before:].splitlines() if "python-gpu" in line and "log:" not in line]
            assert len(refused) == 1, refused

            assert hub.api("POST", "users/alice/server", json={"flavor": "python-small"}).status_code in (201, 202)
            model = hub.wait_for_server("alice")
            server_pid = model["servers"][""]["state"]["pid"]
            # The launcher API under /lw-workspace/ (the portal mode's base URL is that prefix).
            answer = page.goto(f"{url}hub/gen3-session?next=/lw-workspace/status")
            assert answer is not None and answer.status == 200, (page.url, answer and answer.status, page.content()[:500])
            st = answer.json()
            assert st["status"] == "Running" and st["workspaceType"] == "Local", st
            assert all(c["status"] == "True" for c in st["conditions"]) and {c["type"] for c in st["conditions"]} >= {"PodScheduled", "Ready"}, st
            assert st["containerStates"][0]["ready"] is True and "running" in st["containerStates"][0]["state"], st
            # JupyterLab open (its WebSockets through the proxy) when the browser goes away.
            lab = page.goto(f"{url}user/alice/lab")
            assert lab is not None and lab.status == 200
            page.wait_for_selector(".jp-LauncherCard", timeout=60_000)
        assert pid_alive(server_pid) and server_pid in descendants(hub.proc.pid)
        assert len(descendants(hub.proc.pid)) >= 3, "hub, proxy and alice's server all run under the command"
    except BaseException:
        hub.stop()
        raise

    stopping = ctrl_c(hub)
    assert "Stopping Gen3 Workspace" in stopping and stopping.count("Stopping Gen3 Workspace") == 1
    assert "Gen3 Workspace stopped." in stopping
    assert_quiet(hub.log())


def test_ctrl_c_while_the_hub_starts_stops_it_quietly(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    args = [sys.executable, "-m", "gen3workspace.hub.cli", "up", "--data-dir", str(tmp_path / "data"), "--port", str(free_port())]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not descendants(proc.pid):
            time.sleep(0.05)
        started = descendants(proc.pid)
        assert started, "the hub never started"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 20
    while time.time() < deadline and any(pid_alive(p) for p in started):
        time.sleep(0.2)
    assert not [p for p in started if pid_alive(p)]
    output = log.read_text()
    assert "Stopping Gen3 Workspace" in output and "Gen3 Workspace is running" not in output, output
    assert_quiet(output)


def test_up_with_a_commons_prints_the_redirect_url_to_register_and_no_allow_config_warning(tmp_path: Path) -> None:
    from tests.support.fence import FenceStandIn

    fence = FenceStandIn().start()
    hub = Hub(tmp_path, fence=fence, extra_args=["--base-url", "/lw-workspace/"])
    try:
        hub.start()
        callback = f"{hub.url}hub/oauth_callback"
        assert f"Fence client {fence.client_id} must have this redirect URL registered: {callback}" in hub.log()
        # The URL printed is the one the hub sends to Fence.
        s = requests.Session()
        r = s.get(f"{hub.url}hub/oauth_login", allow_redirects=False, timeout=30)
        assert r.status_code == 302 and query(r.headers["Location"])["redirect_uri"] == callback
    except BaseException:
        hub.stop()
        fence.stop()
        raise
    stopping = ctrl_c(hub)
    fence.stop()
    assert "Gen3 Workspace stopped." in stopping
    assert_quiet(hub.log())


def test_a_workspace_without_a_commons_says_so_to_the_gen3_sdk(tmp_path: Path) -> None:
    hub = Hub(tmp_path).start()
    try:
        dev_login(hub, "alice")
        assert hub.api("POST", "users/alice/server", json={}).status_code in (201, 202)
        pid = hub.wait_for_server("alice")["servers"][""]["state"]["pid"]
        # The server's own environment, as a notebook's kernel inherits it.
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        assert "GEN3_ENDPOINT" not in env and "No Gen3 commons is connected" in env["GEN3_NO_COMMONS"]
        r = subprocess.run([sys.executable, "-c", "from gen3.auth import Gen3Auth; Gen3Auth()"], env=env, cwd=env.get("HOME", str(tmp_path)), capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert "workspace-token-service" not in r.stderr, r.stderr[-2000:]
        assert "no-gen3-commons-connected.txt" in r.stderr, r.stderr[-2000:]
        note = Path(env["GEN3_API_KEY"]).read_text()
        assert "No Gen3 commons is connected" in note and "--commons-url" in note
        # The image's start-up hooks, run with the server's env as start.sh runs them: the
        # gen3-client profile hook says the same instead of failing on the note.
        from tests.support.gen3client import run_hooks

        hooks = run_hooks(env, cwd=Path(env["HOME"]))
        assert hooks.returncode == 0, hooks.stderr
        assert "gen3-client-profile: No Gen3 commons is connected" in hooks.stdout and "--commons-url" in hooks.stdout, hooks.stdout
        assert not (Path(env["HOME"]) / ".gen3").exists()
    finally:
        hub.stop()


def test_the_embedded_mode_refuses_a_public_address_with_or_without_fence(tmp_path: Path) -> None:
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
            # Refused with the rule on the login form, not a password error.
            assert r.status_code == 400 and "dev login username" in r.text and "Invalid username or password" not in r.text, (name, r.status_code)
        # A legitimate but unusual name gets a drive folder inside the data dir.
        dev_login(hub, "ünï.cødé@uni.edu")
        assert hub.api("POST", "users/ünï.cødé@uni.edu/server", json={}).status_code in (201, 202)
        hub.wait_for_server("ünï.cødé@uni.edu")
        drives = [p for p in (hub.data_dir / "drives").iterdir()]
        assert len(drives) == 1 and drives[0].name.isascii() and drives[0].resolve().parent == (hub.data_dir / "drives").resolve()
        assert requests.get(f"{hub.url}hub/health", timeout=10).status_code == 200
    finally:
        hub.stop()
