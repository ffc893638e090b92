"""The real Gen3 data plane on loopback ports, for tests that must fetch data as a researcher does: indexd, Fence's signed URLs over a moto S3 bucket, manifestservice and sheepdog behind the revproxy stand-in.

Built by tests/support/databed/build.sh (pinned sources from ../shared/thirdparty, cached in
.cache/databed) next to the real-Fence bed (tests/support/realfence.py), whose PostgreSQL
cluster, arborist, Fence and revproxy stand-in it shares. Fence is configured by FenceBed to
sign URLs for `DATA_BUCKET` from indexd records; users, policies and projects come from
`fence-create sync` (realfence.AUTHZ / DEFAULT_USERS); records go in through indexd's API; the
program `DEV`, project `test` and a few nodes through sheepdog's API. The one stand-in is the
bucket: moto's S3 server (it checks neither a presigned URL's signature nor its expiry).

API (the session fixture `real_data` in tests/conftest.py returns a started `DataBed`):

- URLs, all through the revproxy stand-in as a workspace sees them: `commons_url` (what
  GEN3_ENDPOINT is), `fence_url` (`/user`), `indexd_url` (`/index`), `manifests_url`
  (`/manifests`), `submission_url` (`/api/v0/submission`), `drs_url` (`/ga4gh/drs/v1`);
  `https_host` is the same revproxy with TLS (certificate in `ca_file`) for `gen3 drs-pull`;
  `s3_url` is moto itself (the address signed URLs point at); `direct` maps each service
  name to its own port, without the revproxy.
- `program`, `project`, `project_id` ("DEV-test"), `resource` (its arborist path),
  `reader` ("dana": may download and read it), `outsider` ("alice": workspace only),
  `submitter` ("sheepdog-sid"); `nodes` are what was submitted ({type: [submitter_id, ...]}).
- `add_object(file_name, content, authz=None, guid=None) -> Record`: puts the bytes in the
  bucket under a fresh key and creates the indexd record (size, md5, s3 URL, authz defaulting
  to the project's resource) with indexd's own API; `Record` has guid, file_name, size, md5,
  key, url, content.
- `access_token(username, scopes=..., exp=3600)`: a real Fence access token (`fence-create
  token-create`, cached per user and scopes; `exp=-60` makes an expired one);
  `active_keys(username)`: the key ids Fence still lists; `api_key(username)`: a new Fence API key
  `{"key_id", "api_key"}` minted by Fence's `/user/credentials/api/` as the hub does;
  `credentials_file(username, path)` writes it as the portal's credentials.json.
- `bucket_object(key)` reads bytes back from the bucket; `log(name)` a service's log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config

from tests.support.realfence import BUCKET_CREDENTIALS, DATA_BUCKET, DATA_PROGRAM, DATA_PROJECT, DATA_RESOURCE, FenceBed

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tests" / "support" / "databed" / "build.sh"
HERE = REPO / "tests" / "support" / "databed"
MANIFEST_BUCKET = "gen3-manifests-bed"
INDEXD_PREFIX = "dg.TEST/"


@dataclass
class Record:
    """An object in the bed: its indexd record and the bytes put in the bucket."""

    guid: str
    file_name: str
    content: bytes
    key: str
    authz: list[str]

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def md5(self) -> str:
        return hashlib.md5(self.content).hexdigest()

    @property
    def url(self) -> str:
        return f"s3://{DATA_BUCKET}/{self.key}"


class DataBed:
    """moto, indexd, manifestservice and sheepdog as child processes of a started FenceBed; `start()` once, `stop()` by PID."""

    program, project = DATA_PROGRAM, DATA_PROJECT
    project_id = f"{DATA_PROGRAM}-{DATA_PROJECT}"
    resource = DATA_RESOURCE
    reader, outsider, submitter = "dana", "alice", "sheepdog-sid"

    def __init__(self, fence: FenceBed):
        self.build_started = time.monotonic()
        self.cache = Path(subprocess.run([str(BUILD)], check=True, capture_output=True, text=True).stdout.strip())
        self.build_seconds = time.monotonic() - self.build_started
        self.fence = fence
        self.tmp = fence.tmp / "data"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.indexd_user, self.indexd_password = "gdcapi", secrets.token_urlsafe(16)
        self.nodes: dict[str, list[str]] = {}
        self._tokens: dict[tuple[str, tuple[str, ...]], tuple[float, str]] = {}
        self.start_seconds: float | None = None

    # --- addresses ---------------------------------------------------------------------

    @property
    def commons_url(self) -> str:
        return self.fence.url

    @property
    def fence_url(self) -> str:
        return f"{self.commons_url}/user"

    @property
    def indexd_url(self) -> str:
        return f"{self.commons_url}/index"

    @property
    def manifests_url(self) -> str:
        return f"{self.commons_url}/manifests"

    @property
    def submission_url(self) -> str:
        return f"{self.commons_url}/api/v0/submission"

    @property
    def drs_url(self) -> str:
        return f"{self.commons_url}/ga4gh/drs/v1"

    @property
    def https_host(self) -> str:
        """host:port of the same revproxy with TLS (a self-signed certificate, `ca_file`): what `gen3 drs-pull` needs."""
        return f"127.0.0.1:{self.fence.front.tls_port}"

    @property
    def ca_file(self) -> Path:
        assert self.fence.front.ca_file is not None
        return self.fence.front.ca_file

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.fence.moto_port}"

    @property
    def direct(self) -> dict[str, str]:
        f = self.fence
        return {
            "fence": f.direct_url, "arborist": f.arborist_url, "indexd": f"http://127.0.0.1:{f.indexd_port}",
            "manifestservice": f"http://127.0.0.1:{f.manifests_port}", "sheepdog": f"http://127.0.0.1:{f.sheepdog_port}",
            "moto": self.s3_url,
        }

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> "DataBed":
        started = time.monotonic()
        try:
            self._start_moto()
            self._start_indexd()
            self._start_manifestservice()
            self._start_sheepdog()
            self._seed_submission()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def log(self, name: str) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.logs[name] = self.tmp / f"{name}.log"
        with open(self.logs[name], "ab") as out:
            self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)

    def _wait_http(self, name: str, url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-5000:]}")
            try:
                if requests.get(url, timeout=2).status_code < 500:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not answer {url} within {timeout} s:\n{self.log(name)[-5000:]}")

    def _venv(self, service: str) -> Path:
        return self.cache / service / "venv" / "bin"

    def _src(self, service: str) -> Path:
        return self.cache / "src" / service

    def _base_env(self, service: str) -> dict[str, str]:
        return {
            "PATH": f"{self._venv(service)}:{os.environ['PATH']}",
            "HOME": str(self.tmp),
            "LANG": "C.UTF-8",
            "PROMETHEUS_MULTIPROC_DIR": str(self.fence.tmp / "prometheus"),
        }

    # --- the bucket (moto) ---------------------------------------------------------------

    def s3(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.s3_url, region_name="us-east-1", config=Config(signature_version="s3v4"),
            aws_access_key_id=BUCKET_CREDENTIALS["aws_access_key_id"], aws_secret_access_key=BUCKET_CREDENTIALS["aws_secret_access_key"],
        )

    def _start_moto(self) -> None:
        moto = Path(sys.executable).with_name("moto_server")
        self._spawn("moto", [str(moto), "-H", "127.0.0.1", "-p", str(self.fence.moto_port)], env={**os.environ}, cwd=self.tmp)
        self._wait_http("moto", f"{self.s3_url}/moto-api/")
        for bucket in (DATA_BUCKET, MANIFEST_BUCKET):
            self.s3().create_bucket(Bucket=bucket)

    def bucket_object(self, key: str, bucket: str = DATA_BUCKET) -> bytes:
        return self.s3().get_object(Bucket=bucket, Key=key)["Body"].read()

    # --- indexd --------------------------------------------------------------------------

    def _start_indexd(self) -> None:
        settings = self.tmp / "indexd-settings"
        settings.mkdir(exist_ok=True)
        db = f"postgresql+psycopg2://postgres@127.0.0.1:{self.fence.pg_port}/indexd"
        (settings / "local_settings.py").write_text(
            "from indexd.index.drivers.alchemy import SQLAlchemyIndexDriver\n"
            "from indexd.alias.drivers.alchemy import SQLAlchemyAliasDriver\n"
            "from indexd.auth.drivers.alchemy import SQLAlchemyAuthDriver\n"
            f"DB = {db!r}\n"
            "CONFIG = {\n"
            "    'JSONIFY_PRETTYPRINT_REGULAR': False,\n"
            "    # Without this indexd resolves GUIDs it does not know on the internet.\n"
            "    'DIST': [],\n"
            f"    'INDEX': {{'driver': SQLAlchemyIndexDriver(DB, index_config={{'DEFAULT_PREFIX': {INDEXD_PREFIX!r}, 'PREPEND_PREFIX': True, 'ADD_PREFIX_ALIAS': False}})}},\n"
            "    'ALIAS': {'driver': SQLAlchemyAliasDriver(DB)},\n"
            "    'CLOUD_PROVIDER_MAP': {'s3': 'aws', 'gs': 'gcp', 'az': 'azure'},\n"
            "}\n"
            f"AUTH = SQLAlchemyAuthDriver(DB, arborist={self.fence.arborist_url!r})\n"
            "settings = {'config': CONFIG, 'auth': AUTH, 'use_single_table': False}\n"
        )
        env = {**self._base_env("indexd"), "INDEXD_SETTINGS": str(settings), "PYTHONPATH": f"{self._src('indexd')}:{HERE}"}
        # The source tree is the cwd: start-up runs indexd's alembic migrations from ./alembic.ini.
        self._spawn(
            "indexd",
            [str(self._venv("indexd") / "gunicorn"), "--bind", f"127.0.0.1:{self.fence.indexd_port}", "--workers", "1", "--threads", "4", "--timeout", "120", "indexd_wsgi:application"],
            env=env, cwd=self._src("indexd"),
        )
        self._wait_http("indexd", f"{self.direct['indexd']}/_status")
        # The writer account, as an operator makes it. The tool prints nothing and exits 0 even
        # when it fails, so the table is checked.
        done = subprocess.run(
            [str(self._venv("indexd") / "python"), "bin/index_admin.py", "--path", str(settings), "create", "--username", self.indexd_user, "--password", self.indexd_password],
            cwd=self._src("indexd"), env=env, capture_output=True, text=True, timeout=120,
        )
        if not self.fence.psql("indexd", f"SELECT 1 FROM auth_record WHERE username = '{self.indexd_user}'"):
            raise RuntimeError(f"indexd's index_admin.py did not create the writer account:\n{done.stdout}\n{done.stderr}")

    def add_object(self, file_name: str, content: bytes, authz: list[str] | None = None, guid: str | None = None) -> Record:
        """Put `content` in the bucket and index it with indexd's own API; the record's GUID comes from indexd unless given."""
        key = f"{uuid.uuid4()}/{file_name}"
        self.s3().put_object(Bucket=DATA_BUCKET, Key=key, Body=content)
        record = Record(guid or "", file_name, content, key, list(authz if authz is not None else [self.resource]))
        body: dict[str, Any] = {"form": "object", "size": record.size, "hashes": {"md5": record.md5}, "urls": [record.url], "file_name": file_name, "authz": record.authz}
        if guid:
            body["did"] = guid
        r = requests.post(f"{self.direct['indexd']}/index/", json=body, auth=(self.indexd_user, self.indexd_password), timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"indexd refused the record ({r.status_code}): {r.text[:2000]}")
        record.guid = r.json()["did"]
        return record

    # --- manifestservice -----------------------------------------------------------------

    def _start_manifestservice(self) -> None:
        home = self.tmp / "manifestservice"
        home.mkdir(exist_ok=True)
        host = self.commons_url.split("://", 1)[1]
        # It reads its config only from under its cwd (or /var/gen3).
        (home / "config.json").write_text(json.dumps({"manifest_bucket_name": MANIFEST_BUCKET, "hostname": host, "prefix": ""}))
        env = {
            **self._base_env("manifestservice"),
            "PYTHONPATH": str(self._src("manifestservice")),
            "MANIFEST_SERVICE_CONFIG_PATH": "config.json",
            # Keys come from <FENCE_URL>/jwt/keys; on plain http it must equal the token's iss.
            "FENCE_URL": self.fence_url,
            "AWS_ACCESS_KEY_ID": BUCKET_CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": BUCKET_CREDENTIALS["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.s3_url,
        }
        self._spawn(
            "manifestservice",
            [str(self._venv("manifestservice") / "gunicorn"), "--bind", f"127.0.0.1:{self.fence.manifests_port}", "--workers", "1", "--threads", "4", "--timeout", "120", "manifestservice.api:app"],
            env=env, cwd=home,
        )
        self._wait_http("manifestservice", f"{self.direct['manifestservice']}/_status")

    # --- sheepdog ------------------------------------------------------------------------

    def _sheepdog_env(self) -> dict[str, str]:
        f = self.fence
        config = {
            "PSQLGRAPH": {"host": f"127.0.0.1:{f.pg_port}", "user": "postgres", "password": "", "database": "sheepdog"},
            "INDEX_CLIENT": {"host": self.direct["indexd"], "version": "v0", "auth": [self.indexd_user, self.indexd_password]},
            "USER_API": self.fence_url,
            "FORCE_ISSUER": True,
            "FLASK_SECRET_KEY": secrets.token_urlsafe(16),
            "PSQL_USER_DB_CONNECTION": f.db_url("fence"),
            "USE_USER_HARAKIRI": False,
            "OIDC_ISSUER": self.fence_url,
        }
        return {
            **self._base_env("sheepdog"),
            "PYTHONPATH": f"{self._src('sheepdog')}:{HERE}",
            "SHEEPDOG_BED_CONFIG": json.dumps(config),
            "ARBORIST_URL": f.arborist_url,
        }

    def _start_sheepdog(self) -> None:
        f = self.fence
        env = self._sheepdog_env()
        # Its tables, as its own scripts make them (called as functions: the CLI ignores --host).
        script = (
            "from bin.setup_psqlgraph import create_tables, create_indexes\n"
            "from bin.setup_transactionlogs import setup\n"
            f"args = ('127.0.0.1', {f.pg_port}, 'postgres', '', 'sheepdog')\n"
            "create_tables(*args); create_indexes(*args); setup(*args)\n"
        )
        done = subprocess.run([str(self._venv("sheepdog") / "python"), "-c", script], cwd=self._src("sheepdog"), env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"sheepdog's table set-up failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
        self._spawn(
            "sheepdog",
            [str(self._venv("sheepdog") / "gunicorn"), "--bind", f"127.0.0.1:{f.sheepdog_port}", "--workers", "1", "--threads", "4", "--timeout", "120", "sheepdog_wsgi:application"],
            env=env, cwd=self._src("sheepdog"),
        )
        self._wait_http("sheepdog", f"{self.direct['sheepdog']}/_status", timeout=120)

    def _submit(self, path: str, body: Any, method: str = "PUT") -> Any:
        token = self.access_token(self.submitter)
        r = requests.request(method, f"{self.submission_url}/{path}", json=body, headers={"Authorization": f"bearer {token}"}, timeout=60)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"sheepdog refused {method} {path or '/'} ({r.status_code}): {r.text[:3000]}\n{self.log('sheepdog')[-3000:]}")
        return r.json()

    def _seed_submission(self) -> None:
        """The program, the project and a few nodes, through sheepdog's API as a data submitter does."""
        self._submit("", {"type": "program", "name": self.program, "dbgap_accession_number": f"phs-{self.program}"}, "POST")
        self._submit(self.program, {"type": "project", "code": self.project, "name": self.project, "dbgap_accession_number": f"phs-{self.project_id}", "state": "open"}, "POST")
        experiment = {"type": "experiment", "submitter_id": "exp-1", "projects": {"code": self.project}, "number_experimental_group": 2}
        cases = [{"type": "case", "submitter_id": f"case-{i}", "experiments": {"submitter_id": "exp-1"}, "disease_type": "demo"} for i in (1, 2, 3)]
        self._submit(f"{self.program}/{self.project}", [experiment, *cases])
        self.nodes = {"experiment": ["exp-1"], "case": [c["submitter_id"] for c in cases]}

    # --- tokens and keys -----------------------------------------------------------------

    def access_token(self, username: str, scopes: tuple[str, ...] = ("openid", "user", "data"), exp: int = 3600) -> str:
        """A real Fence access token for `username` (fence-create token-create); one-hour tokens are cached for half an hour, others (e.g. `exp=-60`, already expired) not."""
        cached = self._tokens.get((username, scopes))
        if exp == 3600 and cached and time.monotonic() - cached[0] < 1800:
            return cached[1]
        out = self.fence.fence_create("token-create", "--type", "access_token", "--username", username, "--scopes", ",".join(scopes), f"--exp={exp}")
        token = [line for line in out.splitlines() if line.count(".") == 2][-1].strip()
        if exp == 3600:
            self._tokens[(username, scopes)] = (time.monotonic(), token)
        return token

    def active_keys(self, username: str) -> list[str]:
        """Ids of `username`'s API keys that Fence still lists (revoked ones are gone)."""
        token = self.access_token(username, ("openid", "user", "data", "credentials"))
        r = requests.get(f"{self.fence_url}/credentials/api/", headers={"Authorization": f"bearer {token}"}, timeout=30)
        r.raise_for_status()
        return [k["jti"] for k in r.json()["jtis"]]

    def api_key(self, username: str, scopes: list[str] | None = None) -> dict[str, str]:
        """A new API key minted by Fence, as the hub mints one for a server: {"key_id", "api_key"}."""
        token = self.access_token(username, ("openid", "user", "data", "credentials"))
        r = requests.post(f"{self.fence_url}/credentials/api/", json={"scope": scopes or ["data", "user"]}, headers={"Authorization": f"bearer {token}"}, timeout=30)
        r.raise_for_status()
        answer = r.json()
        return {"key_id": answer["key_id"], "api_key": answer["api_key"]}

    def credentials_file(self, username: str, path: Path) -> Path:
        """Write a new API key for `username` as the portal's credentials.json (mode 0600)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.api_key(username)))
        path.chmod(0o600)
        return path


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
