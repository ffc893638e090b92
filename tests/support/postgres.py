"""A private PostgreSQL cluster for tests: Debian's server binaries, a temp data dir, a free loopback port, stopped by PID."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from gen3workspace.hub.cli import free_port

# PostgreSQL refuses to run as root; Debian's package creates this account.
SERVER_USER = "postgres"


def bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<major>/bin (scripts/setup.sh installs Debian's `postgresql`)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql: run scripts/setup.sh test (apt-get install postgresql)")
    return found[-1].parent


class Postgres:
    """`start()` makes a cluster with one database and a password-protected owner (none when `user` is the superuser, as for the real Fence bed); `stop()` ends it by PID."""

    def __init__(self, database: str = "jupyterhub", user: str = "jupyterhub", host_auth: str = "scram-sha-256", durable: bool = True, prefix: str = "gen3ws-pg-"):
        # Its own folder directly in /tmp: the server account must be able to reach it, and
        # pytest's tmp folders are private to root.
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        # How TCP clients authenticate (initdb --auth-host): "trust" for services that are
        # given no password, like Fence and arborist in the real Fence bed.
        self.host_auth = host_auth
        # False trades crash safety for speed (no fsync), for clusters thrown away after a test.
        self.durable = durable
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "socket"
        self.port = free_port()
        self.database = database
        self.user = user
        self.password = "pw-" + secrets.token_urlsafe(16) + "@/:"  # characters a URL must quote
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "postgres.log"

    def _demote(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        entry = pwd.getpwnam(SERVER_USER)
        for path in (self.dir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            shutil.chown(path, entry.pw_uid, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 60) -> "Postgres":
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        as_server = self._demote()
        bins = bin_dir()
        if not (self.data / "PG_VERSION").exists():
            pwfile = self.dir / "superuser.pw"
            pwfile.write_text("init-" + secrets.token_hex(8))
            if as_server:
                shutil.chown(pwfile, as_server["user"], as_server["group"])  # type: ignore[arg-type]
            subprocess.run(
                [str(bins / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust", f"--auth-host={self.host_auth}", f"--pwfile={pwfile}", "-E", "UTF8",
                 *([] if self.durable else ["--no-sync"])],
                check=True, capture_output=True, timeout=120, **as_server,  # type: ignore[arg-type]
            )
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(bins / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.socket_dir), "-c", "listen_addresses=127.0.0.1",
             *([] if self.durable else ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, **as_server,  # type: ignore[arg-type]
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if self.psql("SELECT 1", check=False).returncode == 0:
                break
            time.sleep(0.3)
        else:
            self.stop()
            raise RuntimeError(f"postgres did not start in {timeout}s")
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.user}'").stdout.strip()
        if not exists:
            self.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
            self.psql(f"CREATE DATABASE {self.database} OWNER {self.user}")
        return self

    def psql(self, sql: str, database: str = "postgres", check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run SQL as the superuser over the private socket."""
        return subprocess.run(
            [str(bin_dir() / "psql"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "-d", database, "-tAc", sql],
            capture_output=True, text=True, timeout=60, check=check,
        )

    def rows(self, sql: str, database: str = "postgres") -> list[list[str]]:
        """Rows of `sql` run as the superuser in `database` (each a list of text fields); raises on an SQL error."""
        out = subprocess.run(
            [str(bin_dir() / "psql"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "-d", database,
             "-v", "ON_ERROR_STOP=1", "-A", "-t", "-F", "\t", "-c", sql],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def url(self, driver: str = "postgresql+psycopg") -> str:
        """The SQLAlchemy URL without the password, as the chart's hub.db.url takes it."""
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        """Stop and delete the cluster's folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
