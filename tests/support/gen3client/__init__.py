"""The real gen3-client in tests: the binary build.sh makes from the pinned commit, the notebook image's start-up hooks run the way docker-stacks' start.sh runs them, and the client, the Gen3 SDK and `gen3 drs-pull` run as the user's server would run them against the real data-plane bed (tests/support/realdata.py)."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.realdata import DataBed, Record, jwt_claims

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
BUILD = HERE / "build.sh"
RUN_HOOKS = HERE / "run-hooks.sh"
HOOKS_DIR = REPO / "images" / "notebook" / "before-notebook.d"
CONFIG = Path(".gen3") / "gen3_client_config.ini"

_binary: Path | None = None


def binary() -> Path:
    """The built gen3-client (built now if `scripts/setup.sh test` has not built it yet)."""
    global _binary
    if _binary is None:
        result = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"tests/support/gen3client/build.sh failed:\n{result.stderr[-3000:]}")
        _binary = Path(result.stdout.strip())
    return _binary


def run_hooks(env: Mapping[str, str], hooks_dir: Path = HOOKS_DIR, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a before-notebook.d folder as start.sh does, with the server's env."""
    return subprocess.run(["bash", str(RUN_HOOKS), str(hooks_dir)], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def hook_profile(output: str) -> str:
    """The profile name the hook announced ("use: gen3-client <command> --profile=NAME")."""
    match = re.search(r"--profile=([A-Za-z0-9._-]+)\)", output)
    if not match:
        raise AssertionError(f"the hook did not name a profile:\n{output}")
    return match.group(1)


def gen3_client(args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the real binary with the server's env (no `configure` anywhere): the server's own from its PATH, else the built one."""
    program = shutil.which("gen3-client", path=env.get("PATH", "")) or str(binary())
    return subprocess.run([program, *args], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def read_profile(home: Path, profile: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string((home / CONFIG).read_text())
    return dict(parser[profile])


def files_holding(folder: Path, secret: str) -> list[Path]:
    """Regular files under `folder` (symlinks not followed) that contain `secret`."""
    found = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            if not path.is_symlink() and secret.encode() in path.read_bytes():
                found.append(path)
    return found


def calls_since(bed: DataBed, start: int) -> list[tuple[str, int]]:
    """(path, status) of what went through the commons' revproxy since `start` (a length of its request log)."""
    return [(path, status) for _method, path, status in bed.fence.front.requests[start:]]


def check_session(bed: DataBed, env: Mapping[str, str], drive: Path, profile: str, record: Record) -> dict[str, str]:
    """What a researcher does first in a fresh server, checked step by step; returns the profile gen3-client saved.

    `gen3-client auth` works with no `configure`; `download-single` writes the file into the
    drive; neither the key nor a token lands on the drive; once the saved token has expired,
    the next command gets a 401 and refreshes with the API key by itself. The expired token is
    a real Fence token made with a negative lifetime (what the file holds an hour later).
    """
    key = json.loads(Path(env["GEN3_API_KEY"]).read_text())
    before = len(bed.fence.front.requests)
    auth = gen3_client(["auth", f"--profile={profile}"], env, drive)
    assert auth.returncode == 0, auth.stderr
    assert "You have access to the following resource(s)" in auth.stderr, auth.stderr
    exchanged = [status for path, status in calls_since(bed, before) if path == "/user/credentials/api/access_token"]
    assert exchanged == [200], "the hook's placeholder token is traded for a real one"

    download = gen3_client(["download-single", f"--profile={profile}", f"--guid={record.guid}", "--download-path=data", "--no-prompt"], env, drive)
    assert download.returncode == 0, download.stderr
    assert (drive / "data" / record.file_name).read_bytes() == record.content

    saved = read_profile(drive, profile)
    assert saved["key_id"] == key["key_id"] and saved["access_token"].count(".") == 2
    assert (drive / CONFIG).is_symlink(), "gen3-client's file is a link off the drive"
    assert files_holding(drive, key["api_key"].rsplit(".", 1)[1]) == [], "the API key must not be on the persistent drive"
    assert files_holding(drive, saved["access_token"].rsplit(".", 1)[1]) == []

    user = jwt_claims(saved["access_token"])["context"]["user"]["name"]
    expired = bed.access_token(user, exp=-60)
    config = drive / CONFIG
    config.write_text(config.read_text().replace(saved["access_token"], expired))  # in place, through the link
    before = len(bed.fence.front.requests)
    again = gen3_client(["auth", f"--profile={profile}"], env, drive)
    assert again.returncode == 0, again.stderr
    calls = calls_since(bed, before)
    assert calls[:3] == [("/user/user", 401), ("/user/credentials/api/access_token", 200), ("/user/user", 200)], calls
    refreshed = read_profile(drive, profile)
    assert refreshed["access_token"] not in (saved["access_token"], expired)
    return refreshed


def check_refused(bed: DataBed, profile: str, old: Mapping[str, str], home: Path) -> None:
    """A copy of a stopped server's profile can no longer get a token: its key was revoked."""
    (home / ".gen3").mkdir(parents=True, exist_ok=True)
    (home / CONFIG).write_text(f"[{profile}]\n" + "".join(f"{k}={v}\n" for k, v in {**old, "access_token": "expired"}.items()))
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GEN3_CLIENT_VERSION_CHECK": "false"}
    before = len(bed.fence.front.requests)
    refused = gen3_client(["auth", f"--profile={profile}"], env, home)
    assert ("/user/credentials/api/access_token", 401) in calls_since(bed, before)
    assert "You have access" not in refused.stderr


# What a researcher types in a notebook cell of a fresh workspace (the Gen3 SDK's own examples),
# with the GUID and the folder filled in; it prints one JSON line of what it got.
SDK_CELL = """
import json, os
from gen3.auth import Gen3Auth
from gen3.index import Gen3Index
from gen3.submission import Gen3Submission
from gen3.file import Gen3File

endpoint = os.environ["GEN3_ENDPOINT"]
auth = Gen3Auth()
record = Gen3Index(endpoint, auth).get_record({guid!r})
sub = Gen3Submission(endpoint, auth)
programs = sub.get_programs()
projects = sub.get_projects({program!r})
sub.export_node({program!r}, {project!r}, "case", "tsv", "cases.tsv")
presigned = Gen3File(endpoint, auth).get_presigned_url({guid!r})
downloaded = Gen3File(endpoint, auth).download_single({guid!r}, "sdk-download")
print("SDK-RESULT " + json.dumps({{"record": record, "programs": programs, "projects": projects, "presigned": presigned, "downloaded": downloaded}}))
"""


def run_cell(python: str | Path, code: str, env: Mapping[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `code` as the server's kernel would: its Python, its env, the drive as the working folder."""
    return subprocess.run([str(python), "-c", code], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def check_workflows(bed: DataBed, env: Mapping[str, str], drive: Path, profile: str, python: str | Path, tag: str) -> None:
    """The user guide's data workflows (gen3-client, the SDK, `gen3 drs-pull`), typed as a researcher types them in the server's terminal and notebook, against the real bed; bytes compared with the bucket's.

    `tag` keeps file names apart between callers (the bed lives for the whole session).
    """
    single = bed.add_object(f"{tag}-cohort.csv", b"id,age\n1,42\n2,37\n")
    many = [bed.add_object(f"{tag}-sample-{i}.vcf", f"##fileformat=VCFv4.2\n#{i}\n".encode()) for i in range(3)]

    # gen3-client download-single, into the current folder (the drive).
    done = gen3_client(["download-single", f"--profile={profile}", f"--guid={single.guid}", "--no-prompt"], env, drive)
    assert done.returncode == 0, done.stderr
    assert (drive / single.file_name).read_bytes() == single.content == bed.bucket_object(single.key)

    # gen3-client download-multiple with a manifest in the portal's export format.
    manifest = [{"object_id": r.guid, "file_name": r.file_name, "file_size": r.size} for r in many]
    (drive / "manifest.json").write_text(json.dumps(manifest))
    done = gen3_client(["download-multiple", f"--profile={profile}", "--manifest=manifest.json", "--no-prompt"], env, drive)
    assert done.returncode == 0, done.stderr
    for r in many:
        assert (drive / r.file_name).read_bytes() == r.content == bed.bucket_object(r.key), done.stderr

    # The SDK, with nothing but the server's env: Gen3Auth() finds GEN3_API_KEY by itself.
    cell = run_cell(python, SDK_CELL.format(guid=single.guid, program=bed.program, project=bed.project), env, drive)
    assert cell.returncode == 0, cell.stderr[-4000:]
    line = [ln for ln in cell.stdout.splitlines() if ln.startswith("SDK-RESULT ")]
    assert line, (cell.stdout[-2000:], cell.stderr[-4000:])
    got = json.loads(line[-1].split(" ", 1)[1])
    assert got["record"]["did"] == single.guid and got["record"]["hashes"]["md5"] == single.md5
    assert f"/v0/submission/{bed.program}" in got["programs"]["links"]
    assert f"/v0/submission/{bed.program}/{bed.project}" in got["projects"]["links"]
    rows = (drive / "cases.tsv").read_text().strip().splitlines()
    header = rows[0].split("\t")
    assert sorted(r.split("\t")[header.index("submitter_id")] for r in rows[1:]) == sorted(bed.nodes["case"])
    assert got["presigned"]["url"].startswith(f"{bed.s3_url}/")
    assert got["downloaded"] is True and (drive / "sdk-download" / single.file_name).read_bytes() == single.content

    # gen3 drs-pull builds https://<host>/ga4gh/... itself, so it gets the bed's TLS address;
    # REQUESTS_CA_BUNDLE stands for a commons certificate any CA store trusts. A compact GUID
    # (dg.TEST/...) is resolved through the aggregate metadata service unless the commons is
    # named: --commons_url for one object, `commons_url` in each entry of a manifest (the
    # portal's export adds it).
    tls_env = {**env, "REQUESTS_CA_BUNDLE": str(bed.ca_file)}
    done = run_command(["gen3", "--endpoint", bed.https_host, "--commons_url", bed.https_host, "drs-pull", "object", single.guid, "--output-dir", "drs-object"], tls_env, drive)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (drive / "drs-object" / single.file_name).read_bytes() == single.content, done.stderr[-3000:]
    (drive / "drs-manifest.json").write_text(json.dumps([{**entry, "commons_url": bed.https_host} for entry in manifest]))
    done = run_command(["gen3", "--endpoint", bed.https_host, "drs-pull", "manifest", "drs-manifest.json", "drs-files"], tls_env, drive)
    assert done.returncode == 0, done.stderr[-3000:]
    for r in many:
        assert (drive / "drs-files" / r.file_name).read_bytes() == r.content, done.stderr[-3000:]


def run_command(argv: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command found on the server's own PATH, as its terminal would."""
    program = shutil.which(argv[0], path=env.get("PATH", ""))
    assert program, f"{argv[0]} is not on the server's PATH: {env.get('PATH')}"
    return subprocess.run([program, *argv[1:]], env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
