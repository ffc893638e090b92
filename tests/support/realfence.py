"""The real Gen3 Fence + arborist + PostgreSQL on loopback ports, for tests that must run against the real identity provider.

Built by tests/support/fencebed/build.sh (sources from ../shared/thirdparty, cached in
.cache/fence). Everything is the real code; the one thing mocked is Fence's identity-provider
step: Fence's own mock of its Google login (`OPENID_CONNECT.google.mock`), which logs in
whoever the `dev_login` cookie names. (`MOCK_AUTH: true`, Fence's other switch, always logs in
the user `test`, so it cannot give one test two users.) Fence is served under `/user` by a
prefix-stripping WSGI wrapper, as Gen3's revproxy does.

The commons URL (`url`) is the revproxy stand-in (tests/support/revproxy.py) in front of Fence,
routing Gen3's paths: `/user/` to Fence and, for the data-plane bed (tests/support/realdata.py,
which shares this bed's PostgreSQL cluster), `/index/` and `/ga4gh/` to indexd, DRS access to
Fence, `/manifests/` to manifestservice and `/api/` to sheepdog. Fence's `BASE_URL` is that URL,
so tokens' `iss` names the commons as in production, and Fence is configured to sign download
URLs for the bed's bucket (`DATA_BUCKET`, served by moto on `moto_port`) from indexd records.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gen3workspace.hub.cli import free_port
from tests.support.postgres import Postgres, bin_dir
from tests.support.revproxy import RevProxy

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tests" / "support" / "fencebed" / "build.sh"
WSGI = REPO / "tests" / "support" / "fencebed" / "wsgi.py"

WORKSPACE_POLICY = "workspace"
# The data-plane bed's program and project (sheepdog's names; arborist's /programs/P/projects/Q).
DATA_PROGRAM, DATA_PROJECT = "DEV", "test"
DATA_RESOURCE = f"/programs/{DATA_PROGRAM}/projects/{DATA_PROJECT}"
OTHER_RESOURCE = f"/programs/{DATA_PROGRAM}/projects/other"
DATA_BUCKET = "gen3-data-bed"
# moto accepts any key; Fence and manifestservice need one to sign with.
BUCKET_CREDENTIALS = {"aws_access_key_id": "testing-key-id", "aws_secret_access_key": "testing-secret"}
# The Workspace policy as Fence's docs/base_user.yaml has it, plus a GPU flavor resource. The
# flavor resource is NOT under /workspace: arborist grants every subresource of a resource, so
# everyone with /workspace would hold /workspace/gpu too (seen in userinfo `authz`).
AUTHZ = {
    "resources": [
        {"name": "workspace"},
        {"name": "workspace-flavors", "subresources": [{"name": "gpu"}]},
        {"name": "programs", "subresources": [
            {"name": "open"},
            {"name": DATA_PROGRAM, "subresources": [{"name": "projects", "subresources": [{"name": DATA_PROJECT}, {"name": "other"}]}]},
        ]},
        {"name": "services", "subresources": [{"name": "sheepdog", "subresources": [{"name": "submission", "subresources": [{"name": "program"}, {"name": "project"}]}]}]},
    ],
    "policies": [
        {"id": "workspace", "description": "be able to use workspace", "resource_paths": ["/workspace"], "role_ids": ["workspace_user"]},
        {"id": "workspace-gpu", "description": "launch GPU flavors", "resource_paths": ["/workspace-flavors/gpu"], "role_ids": ["workspace_user"]},
        {"id": "open-reader", "description": "read open data", "resource_paths": ["/programs/open"], "role_ids": ["reader"]},
        # Fence signs a download for read-storage on the record's authz; sheepdog wants read.
        {"id": "data-reader", "description": "read and download the DEV-test project", "resource_paths": [DATA_RESOURCE], "role_ids": ["data_reader"]},
        {"id": "data-submitter", "description": "submit to DEV-test", "resource_paths": [DATA_RESOURCE], "role_ids": ["data_submitter"]},
        {"id": "sheepdog-admin", "description": "create programs and projects", "resource_paths": ["/services/sheepdog/submission/program", "/services/sheepdog/submission/project"], "role_ids": ["sheepdog_admin"]},
    ],
    "roles": [
        {"id": "workspace_user", "permissions": [{"id": "workspace_access", "action": {"service": "jupyterhub", "method": "access"}}]},
        {"id": "reader", "permissions": [{"id": "peregrine_reader", "action": {"service": "peregrine", "method": "read"}}]},
        {"id": "data_reader", "permissions": [
            {"id": "storage_reader", "action": {"service": "*", "method": "read-storage"}},
            {"id": "any_reader", "action": {"service": "*", "method": "read"}},
        ]},
        {"id": "data_submitter", "permissions": [
            {"id": "sheepdog_" + m, "action": {"service": "sheepdog", "method": m}} for m in ("create", "read", "update", "delete", "upload", "read-storage")
        ]},
        {"id": "sheepdog_admin", "permissions": [{"id": "sheepdog_admin_action", "action": {"service": "sheepdog", "method": "*"}}]},
    ],
}

# Everyone the tests log in as, and the policies they start with.
DEFAULT_USERS: dict[str, dict[str, Any]] = {
    "alice": {"policies": ["workspace"]},
    "gpu-gabi": {"policies": ["workspace", "workspace-gpu"]},
    "nobody-ned": {"policies": ["open-reader"]},
    "admin-ada": {"policies": ["workspace"], "admin": True},
    "test": {"policies": ["workspace"]},
    # The data-plane bed's researcher and its submitter (tests/support/realdata.py).
    "dana": {"policies": ["workspace", "data-reader"]},
    "kim": {"policies": ["workspace", "data-reader"]},
    "nora": {"policies": ["workspace", "data-reader"]},
    "sheepdog-sid": {"policies": ["data-submitter", "sheepdog-admin"]},
}


class FenceBed:
    """PostgreSQL, arborist and Fence as child processes; `start()` once, `stop()` by PID."""

    def __init__(self, tmp: Path | None = None, users: dict[str, dict[str, Any]] | None = None):
        self.cache = Path(subprocess.run([str(BUILD)], check=True, capture_output=True, text=True).stdout.strip())
        # PostgreSQL refuses to run as root, so when we are root its data lives in a folder the
        # `postgres` account can reach (pytest's tmp is private to root).
        self.tmp = Path(tmp or tempfile.mkdtemp(prefix="fencebed-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.home = self.tmp / "home"  # fence-create reads its config only from ~/.gen3/fence
        # Fence and arborist connect as the superuser with no password; nothing here must survive a crash.
        self.pg = Postgres(user="postgres", host_auth="trust", durable=False, prefix="fencebed-pg-")
        self.pg_port = self.pg.port
        self.arborist_port, self.port = free_port(), free_port()
        # The data-plane services' ports are fixed now: Fence's config names indexd and the bucket.
        self.indexd_port, self.moto_port, self.manifests_port, self.sheepdog_port = free_port(), free_port(), free_port(), free_port()
        self.front = RevProxy(
            {
                "/user/": self.direct_url,
                "/index/": f"http://127.0.0.1:{self.indexd_port}/",
                "/ga4gh/": f"http://127.0.0.1:{self.indexd_port}/ga4gh/",
                "/manifests/": f"http://127.0.0.1:{self.manifests_port}/",
                "/api/": f"http://127.0.0.1:{self.sheepdog_port}/",
            },
            # DRS access (signed URLs) is Fence's, the DRS objects are indexd's.
            regex_routes=[(r"^/ga4gh/drs/v1/objects/(.+)/access(/.*)?$", self.direct_url + r"/user/ga4gh/drs/v1/objects/\1/access\2")],
            bearer_from_cookie=False,
            # `gen3 drs-pull` speaks only https (tests/support/realdata.py: `https_host`).
            tls=True,
        )
        self.users = {k: dict(v) for k, v in (users or DEFAULT_USERS).items()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self._client_names: dict[str, int] = {}

    # --- addresses ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The commons URL (the revproxy stand-in): Fence lives under `<url>/user`."""
        return self.front.url

    @property
    def direct_url(self) -> str:
        """Fence's own port, without the revproxy stand-in (Fence is still under `/user` there)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def fence_url(self) -> str:
        return f"{self.url}/user"

    @property
    def arborist_url(self) -> str:
        return f"http://127.0.0.1:{self.arborist_port}"

    def db_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/{name}"

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> "FenceBed":
        try:
            self.front.start()
            self._start_postgres()
            self._start_arborist()
            self._write_fence_config()
            self._run_fence_tool(["-m", "alembic", "upgrade", "head"], "alembic")
            self._start_fence()
            self.sync()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in ("fence", "arborist"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.front.stop()
        self.pg.remove()

    def __enter__(self) -> "FenceBed":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log(self, name: str) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        self.logs[name] = self.tmp / f"{name}.log"
        out = open(self.logs[name], "ab")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def _wait_http(self, name: str, url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-4000:]}")
            try:
                if requests.get(url, timeout=2).status_code < 500:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not answer {url} within {timeout} s:\n{self.log(name)[-4000:]}")

    # --- PostgreSQL ----------------------------------------------------------------------

    def _start_postgres(self) -> None:
        self.pg.start(timeout=30)
        # indexd and sheepdog (tests/support/realdata.py) keep their databases here too.
        for db in ("fence", "arborist", "indexd", "sheepdog"):
            self.psql("postgres", f"CREATE DATABASE {db}")

    def psql(self, db: str, sql: str) -> list[list[str]]:
        """Rows of `sql` run in database `db` (each a list of text fields)."""
        return self.pg.rows(sql, database=db)

    # --- arborist --------------------------------------------------------------------------

    def _start_arborist(self) -> None:
        src = self.cache / "src" / "arborist"
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(self.pg_port), "PGUSER": "postgres",
               "PGDATABASE": "arborist", "PGSSLMODE": "disable", "PATH": f"{bin_dir()}:{os.environ['PATH']}"}
        # Arborist's own migration runner: each migrations/*/up.sql in order.
        done = subprocess.run(["bash", "migrations/latest"], cwd=src, env=env, capture_output=True, text=True)
        if done.returncode != 0 or "problem" in done.stdout:
            raise RuntimeError(f"arborist migrations failed:\n{done.stdout}\n{done.stderr}")
        self._spawn(
            "arborist",
            [str(self.cache / "bin" / "arborist"), "--port", str(self.arborist_port),
             "--jwks", f"{self.fence_url}/.well-known/jwks", "--db", self.db_url("arborist") + "?sslmode=disable"],
            env=env,
        )
        self._wait_http("arborist", f"{self.arborist_url}/health")

    # --- Fence -----------------------------------------------------------------------------

    def _write_fence_config(self) -> None:
        cfg_dir = self.home / ".gen3" / "fence"
        cfg_dir.mkdir(parents=True, exist_ok=True)
        src = self.cache / "src" / "fence"
        config = yaml.safe_load((src / "fence" / "config-default.yaml").read_text())
        config.update(
            {
                "BASE_URL": self.fence_url,
                "DB": self.db_url("fence"),
                "ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                "ARBORIST": self.arborist_url,
                "DEBUG": False,
                # Plain http on loopback: the session cookie must not be Secure-only.
                "SESSION_COOKIE_SECURE": False,
                "ENABLE_CSRF_PROTECTION": False,
                "ENABLE_PROMETHEUS_METRICS": False,
                "ENABLE_DB_MIGRATION": False,
                "MOCK_STORAGE": True,
                # The one mock: Fence's mocked Google login takes the user from the dev_login cookie.
                "OPENID_CONNECT": {
                    "google": {
                        "mock": True,
                        "mock_default_user": "test",
                        "client_id": "unused",
                        "client_secret": "unused",
                        "redirect_url": "{{BASE_URL}}/login/google/login/",
                        "discovery_url": "http://127.0.0.1:9/unused",
                    }
                },
                "ENABLED_IDENTITY_PROVIDERS": {},
                "LOGIN_OPTIONS": [{"name": "Test login", "idp": "google"}],
                "DEFAULT_LOGIN_IDP": "google",
                "DEFAULT_LOGIN_URL": "{{BASE_URL}}/login/google",
                # What a commons must add for the workspace to mint API keys (docs/authentication.md).
                "CLIENT_ALLOWED_SCOPES": [*config["CLIENT_ALLOWED_SCOPES"], "credentials"],
                "LOGIN_REDIRECT_WHITELIST": [],
                # Signed URLs from indexd records over the bed's bucket (moto): INDEXD must be
                # given (the default BASE_URL/index is wrong), `endpoint_url` is Fence's own key,
                # and with `region` set Fence never asks AWS where the bucket is.
                "INDEXD": f"http://127.0.0.1:{self.indexd_port}",
                "AWS_CREDENTIALS": {"bed": dict(BUCKET_CREDENTIALS)},
                "S3_BUCKETS": {DATA_BUCKET: {"cred": "bed", "region": "us-east-1", "endpoint_url": f"http://127.0.0.1:{self.moto_port}"}},
                "GS_BUCKETS": {},
                "STORAGE_CREDENTIALS": {},
                "ENABLE_AUDIT_LOGS": {"presigned_url": False, "login": False},
            }
        )
        self.fence_config = config
        (cfg_dir / "fence-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        # Fence signs tokens with the newest keypair in <root_dir>/keys/<name>/.
        keydir = self.tmp / "fence-root" / "keys" / "2026-01-01T00:00:00Z"
        keydir.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (keydir / "jwt_private_key.pem").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
        )
        (keydir / "jwt_public_key.pem").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        (self.tmp / "prometheus").mkdir(exist_ok=True)

    def fence_env(self) -> dict[str, str]:
        src = self.cache / "src" / "fence"
        return {
            "PATH": f"{self.cache / 'venv' / 'bin'}:{os.environ['PATH']}",
            "HOME": str(self.home),
            "PYTHONPATH": str(src),
            "FENCE_CONFIG_PATH": str(self.home / ".gen3" / "fence" / "fence-config.yaml"),
            "FENCEBED_ROOT": str(self.tmp / "fence-root"),
            "ROOT_DIR": str(self.tmp / "fence-root"),  # where `fence-create token-create` finds the keys
            "PROMETHEUS_MULTIPROC_DIR": str(self.tmp / "prometheus"),
            "LANG": "C.UTF-8",
        }

    def _run_fence_tool(self, args: list[str], what: str) -> str:
        done = subprocess.run(
            [str(self.cache / "venv" / "bin" / "python"), *args],
            cwd=self.cache / "src" / "fence", env=self.fence_env(), capture_output=True, text=True, timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
        return done.stdout

    def fence_create(self, *args: str) -> str:
        """Run Fence's admin CLI (`fence-create`) as an operator would."""
        return self._run_fence_tool(["-c", "import sys; from bin.fence_create import main; sys.argv[0] = 'fence-create'; main()", *args], "fence-create " + " ".join(args[:1]))

    def _start_fence(self) -> None:
        venv = self.cache / "venv" / "bin"
        self._spawn(
            "fence",
            [str(venv / "gunicorn"), "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--threads", "4",
             "--chdir", str(WSGI.parent), "--timeout", "120", "wsgi:application"],
            env=self.fence_env(),
            cwd=self.cache / "src" / "fence",
        )
        self._wait_http("fence", f"{self.direct_url}/user/.well-known/openid-configuration", timeout=120)

    # --- users and clients ---------------------------------------------------------------

    def user_yaml(self) -> dict[str, Any]:
        return {
            "authz": {**AUTHZ, "user_project_to_resource": {}},
            "users": {
                name: {"admin": bool(u.get("admin")), "email": f"{name}@example.org", "policies": list(u.get("policies", [])), "projects": []}
                for name, u in self.users.items()
            },
            "clients": {},
        }

    def sync(self) -> None:
        """Push `self.users` into Fence and arborist with `fence-create sync` (as usersync does)."""
        path = self.tmp / "user.yaml"
        path.write_text(yaml.safe_dump(self.user_yaml(), sort_keys=False))
        self.fence_create("sync", "--arborist", self.arborist_url, "--yaml", str(path))

    def set_policies(self, username: str, policies: list[str]) -> None:
        self.users.setdefault(username, {})["policies"] = list(policies)
        self.sync()

    def create_client(self, name: str, redirect_uris: list[str], scopes: list[str] | None = None) -> tuple[str, str]:
        """Register an OAuth client the way docs/authentication.md tells operators to; (id, secret)."""
        # Client names are unique in Fence, and one bed serves the whole session: number repeats.
        self._client_names[name] = self._client_names.get(name, 0) + 1
        if self._client_names[name] > 1:
            name = f"{name}-{self._client_names[name]}"
        args = ["client-create", "--client", name, "--urls", *redirect_uris, "--username", "admin-ada", "--auto-approve"]
        if scopes:
            args += ["--allowed-scopes", *scopes]
        out = self.fence_create(*args)
        # It prints the tuple repr last: ('<id>', '<secret>')
        line = [ln for ln in out.splitlines() if ln.startswith("(")][-1]
        client_id, client_secret = ast.literal_eval(line)
        return client_id, client_secret

    def register_hub(self, name: str, hub_url: str, scopes: list[str] | None = None) -> RegisteredClient:
        """Register a hub at `hub_url` (ending in /) as docs/authentication.md says: callback and scopes."""
        client_id, secret = self.create_client(name, [f"{hub_url}hub/oauth_callback"], scopes or ["openid", "user", "data", "credentials"])
        return RegisteredClient(self, client_id, secret)

    def blacklisted(self, jti: str) -> bool:
        return bool(self.psql("fence", f"SELECT 1 FROM blacklisted_token WHERE jti = '{jti}'"))

    def browser_cookie(self, username: str) -> dict[str, Any]:
        """The cookie that makes Fence's mocked identity provider log in `username` (for playwright)."""
        return {"name": self.fence_config.get("DEV_LOGIN_COOKIE_NAME", "dev_login"), "value": username,
                "domain": urlparse(self.url).hostname, "path": "/user"}

    def session(self, username: str) -> requests.Session:
        """A requests session that Fence will log in as `username` when it is sent to log in."""
        s = requests.Session()
        s.cookies.set(self.fence_config.get("DEV_LOGIN_COOKIE_NAME", "dev_login"), username, domain="127.0.0.1", path="/user")
        return s


class RegisteredClient:
    """A client registered in real Fence, shaped like the stand-in where tests/support/hub.py needs it."""

    def __init__(self, bed: FenceBed, client_id: str, client_secret: str):
        self.bed, self.client_id, self.client_secret = bed, client_id, client_secret
        self.url = bed.url
        self.auto_login: str | None = None  # the stand-in's switch; real Fence reads the dev_login cookie


def decode_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
