"""Export to Workspace (spawner/singleuser/gen3ws_export.py) against the data plane: files of the newest manifests appear verified, and every kind of bad input gets a message in the workspace and leaves nothing partial or outside the data folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gen3workspace.spawner.singleuser import gen3ws_export as ex
from tests.support.exportplane import RealPlane
from tests.support.faultproxy import FaultProxy
from tests.support.realdata import DataBed


@pytest.fixture(scope="module")
def plane(real_data: DataBed) -> RealPlane:
    return RealPlane(real_data)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    p = FaultProxy().start()
    yield p
    p.stop()


class Workspace:
    """A user's server folder with the key file the spawner mounts (outside it), and a syncer over it."""

    def __init__(self, tmp: Path, plane: RealPlane, proxy: FaultProxy | None, **env: str):
        self.tmp = tmp
        self.home = tmp / "home"
        self.home.mkdir()
        creds = tmp / "etc-gen3"
        creds.mkdir()
        self.key_file = creds / "credentials.json"
        self.key_file.write_text(json.dumps(plane.api_key(plane.user)))
        environ = {"GEN3_ENDPOINT": plane.url, "GEN3_API_KEY": str(self.key_file), "GEN3_EXPORT_INTERVAL_SECONDS": "1", **env}
        self.settings = ex.Settings.from_env(environ, self.home)
        sessions = [ex.http_session(self.settings.parallel) for _ in range(2)]
        for s in sessions:
            s.trust_env = False
            if proxy:
                s.proxies = {"http": proxy.url, "https": proxy.url}
        self.sync = ex.ExportSync(self.settings, sessions[0], sessions[1])
        self.before = self.files_outside()

    @property
    def data(self) -> Path:
        return self.settings.root

    def folder(self, manifest: str) -> Path:
        return self.settings.commons_folder / manifest.removesuffix(".json")

    def run(self, timeout: float = 60) -> None:
        """One check and every fetch it started, finished."""
        if not self.sync._threads:
            self.sync.start_workers()
        self.sync.poll()
        assert self.sync.wait_idle(timeout), "fetches still running"
        self.sync.write_statuses()

    def status(self, manifest: str) -> str:
        return (self.folder(manifest) / ex.STATUS_NAME).read_text()

    def files_outside(self) -> set[str]:
        return {str(p.relative_to(self.tmp)) for p in self.tmp.rglob("*") if self.data not in p.parents and p != self.data}

    def check_clean(self, manifest: str, allowed: set[str]) -> None:
        """Nothing outside the data folder, nothing left in .partial, and the folder holds exactly `allowed` (+ status)."""
        assert self.files_outside() == self.before
        folder = self.folder(manifest)
        assert list((folder / ex.PARTIAL_DIR).iterdir()) == [] if (folder / ex.PARTIAL_DIR).exists() else True
        visible = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
        assert visible == allowed | {ex.STATUS_NAME}, visible
        for p in self.data.rglob("*"):
            assert self.data in p.resolve().parents or p.resolve() == self.data

    def snapshot_file(self, manifest: str, name: str) -> dict[str, Any]:
        m = next(m for m in self.sync.snapshot()["manifests"] if m["manifest"] == manifest)
        return next(f for f in m["files"] if f["name"] == name)

    def stop(self) -> None:
        self.sync.stop()


@pytest.fixture
def workspace(tmp_path: Path, plane: RealPlane) -> Iterator[Workspace]:
    plane.clear_manifests(plane.user)
    w = Workspace(tmp_path, plane, None)
    yield w
    w.stop()


@pytest.fixture
def faulty(tmp_path: Path, plane: RealPlane, proxy: FaultProxy) -> Iterator[Workspace]:
    plane.clear_manifests(plane.user)
    w = Workspace(tmp_path, plane, proxy)
    yield w
    w.stop()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- the files arrive -------------------------------------------------------------------


def test_the_portals_manifest_becomes_verified_files_and_a_status(workspace: Workspace, plane: RealPlane) -> None:
    a, b = secrets.token_bytes(3000), b"hello, commons\n"
    ga = plane.add_object(a, "reads.bin")
    gb = plane.add_object(b, "notes.txt")
    name = plane.post_manifest(plane.user, [plane.entry(ga, "reads.bin", a), plane.entry(gb, "notes.txt", b)])
    workspace.run()
    folder = workspace.folder(name)
    assert (folder / "reads.bin").read_bytes() == a and (folder / "notes.txt").read_bytes() == b
    status = workspace.status(name)
    assert "**2 of 2 files done**" in status and "verified: size and md5 match indexd" in status
    root = (workspace.data / ex.STATUS_NAME).read_text()
    assert "2 of 2 done" in root
    workspace.check_clean(name, {"reads.bin", "notes.txt"})
    # Nothing but the data folder was touched; the key file is where the spawner put it.
    assert workspace.data.parent == workspace.home


def test_only_the_newest_n_manifests_are_kept_and_older_ones_leave_only_what_the_user_added(tmp_path: Path, plane: RealPlane) -> None:
    plane.clear_manifests(plane.user)
    w = Workspace(tmp_path, plane, None, GEN3_EXPORT_KEEP="2")
    try:
        names = []
        for i in range(3):
            data = f"file {i}\n".encode()
            g = plane.add_object(data, f"f{i}.txt")
            names.append(plane.post_manifest(plane.user, [plane.entry(g, f"f{i}.txt", data)]))
            time.sleep(1.1)  # manifestservice names and orders manifests by time
            w.run()
        assert not w.folder(names[0]).exists(), "the oldest of three is gone with keep=2"
        assert (w.folder(names[1]) / "f1.txt").exists() and (w.folder(names[2]) / "f2.txt").exists()
        # A user's own file in a folder that falls out keeps the folder and the file.
        (w.folder(names[1]) / "my-notes.ipynb").write_text("{}")
        g = plane.add_object(b"3", "f3.txt")
        plane.post_manifest(plane.user, [plane.entry(g, "f3.txt", b"3")])
        w.run()
        assert [p.name for p in w.folder(names[1]).iterdir()] == ["my-notes.ipynb"]
    finally:
        w.stop()


def test_a_restarted_server_does_not_fetch_again(workspace: Workspace, plane: RealPlane, tmp_path: Path) -> None:
    data = secrets.token_bytes(1000)
    g = plane.add_object(data, "x.bin")
    name = plane.post_manifest(plane.user, [plane.entry(g, "x.bin", data)])
    workspace.run()
    mtime = (workspace.folder(name) / "x.bin").stat().st_mtime_ns
    again = ex.ExportSync(workspace.settings, workspace.sync.session, workspace.sync.storage)
    again.start_workers()
    try:
        again.poll()
        assert again.wait_idle(30)
        assert (workspace.folder(name) / "x.bin").stat().st_mtime_ns == mtime
        assert again.snapshot()["manifests"][0]["counts"]["done"] == 1
    finally:
        again.stop()


# --- bad input --------------------------------------------------------------------------


def test_a_guid_indexd_does_not_know(workspace: Workspace, plane: RealPlane) -> None:
    ok = plane.add_object(b"fine", "ok.txt")
    name = plane.post_manifest(plane.user, [plane.entry(ok, "ok.txt", b"fine"), {"object_id": plane.unknown_guid(), "file_name": "ghost.txt", "file_size": 4}])
    workspace.run()
    assert "indexd) does not know this object_id" in workspace.status(name)
    workspace.check_clean(name, {"ok.txt"})


def test_a_file_the_user_may_not_read_says_so_in_words_not_html(workspace: Workspace, plane: RealPlane) -> None:
    secret = plane.add_object(b"not yours", "secret.txt", readable=False)
    name = plane.post_manifest(plane.user, [plane.entry(secret, "secret.txt", b"not yours")])
    workspace.run()
    status = workspace.status(name)
    assert "you are not allowed to read this file" in status and "HTTP 401" in status
    assert "<html" not in status.lower() and "<!doctype" not in status.lower()
    workspace.check_clean(name, set())


def test_an_entry_without_object_id_and_a_malformed_manifest(workspace: Workspace, plane: RealPlane) -> None:
    ok = plane.add_object(b"fine", "ok.txt")
    name = plane.put_raw_manifest(plane.user, json.dumps([{"file_name": "no-id.txt"}, plane.entry(ok, "ok.txt", b"fine"), "junk"]).encode())
    broken = plane.put_raw_manifest(plane.user, b'[{"object_id": "x", "file_name": ')
    workspace.run()
    status = workspace.status(name)
    assert "entry 1 (no-id.txt) has no object_id" in status and "entry 3 is not an object" in status
    workspace.check_clean(name, {"ok.txt"})
    assert "the manifest is not valid JSON" in workspace.status(broken)
    workspace.check_clean(broken, set())


def test_a_huge_manifest_is_refused_with_a_message(tmp_path: Path, plane: RealPlane) -> None:
    plane.clear_manifests(plane.user)
    w = Workspace(tmp_path, plane, None, GEN3_EXPORT_MAX_MANIFEST_BYTES="5000", GEN3_EXPORT_MAX_ENTRIES="50")
    try:
        g = plane.add_object(b"x", "x.txt")
        big = plane.put_raw_manifest(plane.user, json.dumps([plane.entry(g, f"x{i}.txt", b"x") for i in range(200)]).encode())
        time.sleep(1.1)
        many = plane.put_raw_manifest(plane.user, json.dumps([{"object_id": g, "file_name": f"{i}"} for i in range(60)]).encode())
        w.run()
        assert "larger than this workspace takes (4.9 KB)" in w.status(big)
        assert "lists 60 files, more than this workspace takes from one manifest (50)" in w.status(many)
        w.check_clean(big, set())
        w.check_clean(many, set())
    finally:
        w.stop()


@pytest.mark.parametrize("wrong", ["md5", "size"])
def test_an_md5_or_size_mismatch_is_not_saved(workspace: Workspace, plane: RealPlane, wrong: str) -> None:
    data = b"the bytes in the bucket\n"
    if wrong == "md5":
        g = plane.add_object(data, "bad.txt", md5=md5(b"other bytes"))
    else:
        g = plane.add_object(data, "bad.txt", size=len(data) + 10)
    name = plane.post_manifest(plane.user, [plane.entry(g, "bad.txt", data)])
    workspace.run()
    status = workspace.status(name)
    assert (f"md5 mismatch: indexd says {md5(b'other bytes')}" if wrong == "md5" else f"size mismatch: indexd says {len(data) + 10} bytes, the storage sent {len(data)}") in status
    workspace.check_clean(name, set())


def test_the_bucket_breaking_mid_file_leaves_nothing_and_the_next_check_completes(faulty: Workspace, plane: RealPlane, proxy: FaultProxy) -> None:
    data = secrets.token_bytes(200_000)
    g = plane.add_object(data, "big.bin")
    name = plane.post_manifest(plane.user, [plane.entry(g, "big.bin", data)])
    proxy.rule = lambda method, url: "cut" if plane.is_bucket(url) else None
    faulty.run()
    assert "the connection to the storage broke after" in faulty.status(name)
    faulty.check_clean(name, set())
    proxy.rule = lambda method, url: None
    faulty.run()
    assert (faulty.folder(name) / "big.bin").read_bytes() == data


def test_indexd_down_says_so_and_fetches_nothing(faulty: Workspace, plane: RealPlane, proxy: FaultProxy) -> None:
    g = plane.add_object(b"data", "d.txt")
    name = plane.post_manifest(plane.user, [plane.entry(g, "d.txt", b"data")])
    proxy.rule = lambda method, url: "refuse" if plane.is_indexd(url) else None
    faulty.run()
    assert "the file index (indexd) is not answering; trying again at the next check" in faulty.status(name)
    faulty.check_clean(name, set())


def test_an_expired_signed_url_is_reported_and_a_fresh_one_works(faulty: Workspace, plane: RealPlane, proxy: FaultProxy) -> None:
    g = plane.add_object(b"late", "late.txt")
    name = plane.post_manifest(plane.user, [plane.entry(g, "late.txt", b"late")])
    proxy.clock_offset = 2 * 3600  # the link is used two hours after Fence signed it
    proxy.rule = lambda method, url: "s3-expiry" if plane.is_bucket(url) else None
    faulty.run()
    assert "the download link expired before the storage served it (HTTP 403: Request has expired)" in faulty.status(name)
    assert any(action == "expired" for _, _, action in proxy.seen), "the bucket was really asked with an expired link"
    faulty.check_clean(name, set())
    proxy.clock_offset = 0
    faulty.run()
    assert (faulty.folder(name) / "late.txt").read_bytes() == b"late"


@pytest.mark.parametrize(
    ("given", "saved"),
    [
        ("../../escape.txt", "_._.._escape.txt"),
        ("/etc/passwd", "_etc_passwd"),
        ("..", "_."),
        ("a\nb\x1b[31m.txt", "a_b_[31m.txt"),
        (".bashrc", "_bashrc"),
        ("sub/dir/f.txt", "sub_dir_f.txt"),
        (ex.STATUS_NAME, None),
    ],
)
def test_hostile_file_names_are_sanitised_and_stay_inside_the_folder(workspace: Workspace, plane: RealPlane, given: str, saved: str | None) -> None:
    data = b"content " + given.encode()
    g = plane.add_object(data, "plain.txt")
    name = plane.post_manifest(plane.user, [plane.entry(g, given, data)])
    workspace.run()
    expected = saved or g.rsplit("/", 1)[-1]
    assert (workspace.folder(name) / expected).read_bytes() == data
    assert "which cannot be a file name here" in workspace.status(name)
    workspace.check_clean(name, {expected})


def test_two_entries_and_two_manifests_naming_the_same_file(workspace: Workspace, plane: RealPlane) -> None:
    one, two = b"first\n", b"second\n"
    g1, g2 = plane.add_object(one, "same.txt"), plane.add_object(two, "same.txt")
    first = plane.post_manifest(plane.user, [plane.entry(g1, "same.txt", one), plane.entry(g2, "same.txt", two), plane.entry(g1, "same.txt", one)])
    time.sleep(1.1)
    second = plane.post_manifest(plane.user, [plane.entry(g2, "same.txt", two)])
    workspace.run()
    f = workspace.folder(first)
    assert (f / "same.txt").read_bytes() == one and (f / "same (2).txt").read_bytes() == two
    status = workspace.status(first)
    assert "another file of this manifest is already called same.txt" in status
    assert "entry 3 names the same object_id as entry 1" in status
    assert (workspace.folder(second) / "same.txt").read_bytes() == two, "each manifest has its own folder"
    workspace.check_clean(first, {"same.txt", "same (2).txt"})


def test_a_file_the_user_made_under_the_same_name_is_never_overwritten(workspace: Workspace, plane: RealPlane) -> None:
    g = plane.add_object(b"export", "mine.txt")
    name = plane.post_manifest(plane.user, [plane.entry(g, "mine.txt", b"export")])
    folder = workspace.folder(name)
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("my own work")
    workspace.run()
    assert (folder / "mine.txt").read_text() == "my own work"
    assert "that the export did not write is already here; it was left alone" in workspace.status(name)


def test_the_status_file_renders_no_markup_from_a_file_name(workspace: Workspace, plane: RealPlane) -> None:
    given = "<img src=x onerror=alert(1)>|[link](http://evil)"
    g = plane.add_object(b"x", "x")
    name = plane.post_manifest(plane.user, [plane.entry(g, given, b"x")])
    workspace.run()
    status = workspace.status(name)
    assert not re.search(r"(?<!\\)<img|(?<!\\)\]\(http", status), status
    assert "\\<img src=x onerror=alert(1)\\>" in status


def test_no_credentials_means_off_and_nothing_written(tmp_path: Path, plane: RealPlane) -> None:
    settings = ex.Settings.from_env({"GEN3_ENDPOINT": plane.url}, tmp_path)
    assert not settings.enabled and "GEN3_API_KEY" in settings.why_off
    assert not ex.Settings.from_env({"GEN3_ENDPOINT": plane.url, "GEN3_API_KEY": "/x", "GEN3_EXPORT": "off"}, tmp_path).enabled
    assert list(tmp_path.iterdir()) == []


def test_a_revoked_key_is_reported_at_the_top(workspace: Workspace, plane: RealPlane) -> None:
    workspace.key_file.write_text(json.dumps({"key_id": "x", "api_key": "not-a-key"}))
    workspace.run()
    top = (workspace.data / ex.STATUS_NAME).read_text()
    assert "Fence refused the workspace's API key (HTTP 401)" in top


# --- inside a real Jupyter Server ---------------------------------------------------------


def test_the_extension_runs_in_a_real_jupyter_server_from_the_shared_config(tmp_path: Path, plane: RealPlane) -> None:
    """The embedded mode's JUPYTER_CONFIG_PATH (the notebook image's /usr/local/etc/jupyter): the export is on, over REST too."""
    import subprocess
    import sys

    from gen3workspace.hub.cli import free_port

    plane.clear_manifests(plane.user)
    g = plane.add_object(b"in the server\n", "s.txt")
    name = plane.post_manifest(plane.user, [plane.entry(g, "s.txt", b"in the server\n")])
    root, creds = tmp_path / "drive", tmp_path / "creds"
    root.mkdir()
    creds.mkdir()
    (creds / "credentials.json").write_text(json.dumps(plane.api_key(plane.user)))
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "GEN3"))},
        "JUPYTER_CONFIG_PATH": str(Path(ex.__file__).parent),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
        "JUPYTER_DATA_DIR": str(tmp_path / "jdata"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
        "HOME": str(root),
        "GEN3_ENDPOINT": plane.url,
        "GEN3_API_KEY": str(creds / "credentials.json"),
        "GEN3_EXPORT_INTERVAL_SECONDS": "1",
        "NO_PROXY": "127.0.0.1",
    }
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("jupyter-server")), f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--no-browser"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        env=env, stdout=(tmp_path / "server.log").open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        target = root / "data" / urlsplit_netloc(plane.url) / name.removesuffix(".json") / "s.txt"
        deadline = time.time() + 90
        while time.time() < deadline and not target.exists():
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.3)
        assert target.read_bytes() == b"in the server\n"
        while time.time() < deadline:
            with contextlib.suppress(requests.ConnectionError):
                requests.get(f"http://127.0.0.1:{port}/api", timeout=5)
                break
            time.sleep(0.3)
        r = requests.get(f"http://127.0.0.1:{port}/gen3-export/status", headers={"Authorization": f"token {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        files = r.json()["manifests"][0]["files"]
        assert files == [{"name": "s.txt", "object_id": g, "size": 14, "state": "done", "message": "verified: size and md5 match indexd", "note": ""}]
        assert requests.get(f"http://127.0.0.1:{port}/gen3-export/status", timeout=30).status_code == 403, "the status is the user's only"
    finally:
        server.terminate()
        server.wait(30)


def urlsplit_netloc(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc.replace(":", "_")


def test_a_commons_without_manifestservice_gets_no_data_folder(tmp_path: Path, plane: RealPlane) -> None:
    w = Workspace(tmp_path, plane, None, GEN3_MANIFEST_SERVICE_URL=f"{plane.url}/no-such-service")
    try:
        w.run()
        assert not w.data.exists()
        assert "there is no manifestservice at" in w.sync.snapshot()["problem"]
    finally:
        w.stop()
