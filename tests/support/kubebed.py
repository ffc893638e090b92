"""A real Kubernetes control plane (etcd + kube-apiserver on loopback) for the test suite.

There is no scheduler, controller-manager or kubelet: ``tests.support.kubelet`` plays the
kubelet for the pods a test cares about. What that means for tests:

* RBAC is enforced (``--authorization-mode=Node,RBAC``); the admin identity is a client
  certificate in ``system:masters``.
* The ServiceAccount admission plugin stays on, as in a real cluster (it is what turns
  ``automountServiceAccountToken`` into a token volume, which the spawner hardening is
  about). It rejects pods whose service account does not exist, and no controller
  creates ``default`` service accounts here, so :meth:`KubeBed.create_namespace` creates
  the namespace *and* its ``default`` ServiceAccount. Create namespaces through it.
* Pod Security admission is on (as in every cluster since 1.25): a namespace labelled
  ``pod-security.kubernetes.io/enforce`` refuses pods that break its profile.
* StorageObjectInUseProtection is off: it adds a finalizer to every PVC that only the
  (absent) PVC-protection controller removes, so deleting a PVC would hang forever.
* No garbage collector and no namespace controller: owner references do not cascade
  (the kubelet harness emulates that for objects owned by a pod it finalises) and a
  deleted namespace stays Terminating. Use a fresh namespace per test instead.
* Service cluster IPs are allocated from a loopback range, so nothing can ever try to
  reach a private address through one (there is no kube-proxy anyway).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import functools
import http.client
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes_asyncio import client as k8s

from gen3workspace.hub.cli import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tests" / "support" / "kube" / "build.sh"
DEFAULT_BIN_DIR = REPO_ROOT / ".cache" / "kube" / "bin"

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Loopback on purpose: see the module docstring.
SERVICE_CLUSTER_IP_RANGE = "127.96.0.0/16"


def k8s_body(obj: dict[str, Any] | list[Any]) -> Any:
    """Pass a plain dict as a request body.

    kubernetes_asyncio sends dicts as they are (camelCase JSON, exactly what the API
    takes), but its type hints ask for its model classes; this keeps the checker quiet
    without building models for every test object.
    """
    return obj


class KubeBedError(RuntimeError):
    """The test bed could not be built or started; the message says what to look at."""


def ensure_binaries(*, force: bool = False, timeout: float = 3600) -> Path:
    """Build (or find cached) kube-apiserver and etcd; returns the folder holding both."""
    cmd = ["bash", str(BUILD_SCRIPT)] + (["--force"] if force else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise KubeBedError(f"{BUILD_SCRIPT} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-40:])
        raise KubeBedError(
            f"building the Kubernetes test bed failed ({BUILD_SCRIPT} exited {proc.returncode}).\n"
            f"Run it by hand to see the whole output. Last lines:\n{tail}"
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def set_pdeathsig() -> None:
    """preexec_fn: have the kernel SIGTERM this child when the thread that forked it ends.

    So a pytest that dies without tearing down (SIGKILL, OOM) leaves nothing listening.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_process(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a helper process in its own session with its output in log_path."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        # PDEATHSIG fires when the *thread* that forked exits, so only use it from the
        # main thread, which lives as long as pytest does.
        preexec = set_pdeathsig if threading.current_thread() is threading.main_thread() else None
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,
        )
    finally:
        log.close()


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always by the PID we started."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- certificates ---------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca_cert: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey,
    is_ca: bool = False,
    server_names: Sequence[str] = (),
    server_ips: Sequence[str] = (),
    client: bool = False,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject if ca_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # Back-dated a little: etcd and the apiserver reject certs "from the future"
        # when clocks of freshly started processes disagree by a second.
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if ca_cert is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


class _Pki:
    """Files of the bed's CA, apiserver serving cert, admin client cert and SA keys."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.ca_cert = folder / "ca.crt"
        self.ca_key = folder / "ca.key"
        self.serving_cert = folder / "apiserver.crt"
        self.serving_key = folder / "apiserver.key"
        self.admin_cert = folder / "admin.crt"
        self.admin_key = folder / "admin.key"
        self.sa_key = folder / "sa.key"
        self.sa_pub = folder / "sa.pub"

    def generate(self) -> None:
        # EC keys for TLS: generating them is instant, unlike RSA.
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubebed-ca")])
        ca = _issue(ca_name, ca_key, ca_cert=None, ca_key=ca_key, is_ca=True)

        serving_key = ec.generate_private_key(ec.SECP256R1())
        serving = _issue(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
            serving_key,
            ca_cert=ca,
            ca_key=ca_key,
            server_names=[
                "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            server_ips=["127.0.0.1", str(next(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE).hosts()))],
        )

        admin_key = ec.generate_private_key(ec.SECP256R1())
        admin = _issue(
            x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
            ]),
            admin_key,
            ca_cert=ca,
            ca_key=ca_key,
            client=True,
        )

        # RSA for service-account tokens: RS256 is what every JWT consumer expects
        # from Kubernetes.
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

        self._write(self.ca_cert, _pem_cert(ca))
        self._write(self.ca_key, _pem_key(ca_key))
        self._write(self.serving_cert, _pem_cert(serving))
        self._write(self.serving_key, _pem_key(serving_key))
        self._write(self.admin_cert, _pem_cert(admin))
        self._write(self.admin_key, _pem_key(admin_key))
        self._write(self.sa_key, _pem_key(sa_key))
        self._write(
            self.sa_pub,
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.write_bytes(data)
        path.chmod(0o600)


# --- the bed ----------------------------------------------------------------------------


class KubeBed:
    """etcd + kube-apiserver on 127.0.0.1 free ports, with an admin kubeconfig.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Start and stop are
    synchronous (they run from session fixtures); talking to the API is async through
    :meth:`admin_client`, as KubeSpawner does.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        bin_dir: Path | None = None,
        start_timeout: float = 120.0,
        apiserver_args: Sequence[str] = (),
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kubebed-"))
        self.bin_dir = Path(bin_dir) if bin_dir else DEFAULT_BIN_DIR
        self.start_timeout = start_timeout
        self.extra_apiserver_args = list(apiserver_args)
        self.pki = _Pki(self.workdir / "pki")
        self.kubeconfig = self.workdir / "kubeconfig"
        self.etcd_log = self.workdir / "etcd.log"
        self.apiserver_log = self.workdir / "kube-apiserver.log"
        self.port: int | None = None
        self.etcd_port: int | None = None
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._apiserver_argv: list[str] = []
        self._ssl: ssl.SSLContext | None = None

    # lifecycle

    @property
    def server(self) -> str:
        """The API server URL, e.g. https://127.0.0.1:43121."""
        if self.port is None:
            raise KubeBedError("the bed is not started")
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.pki.ca_cert

    @property
    def pids(self) -> list[int]:
        """PIDs of the control-plane processes that are still running."""
        return [p.pid for p in (self._etcd, self._apiserver) if p is not None and p.poll() is None]

    def start(self) -> KubeBed:
        for name in ("etcd", "kube-apiserver"):
            if not (self.bin_dir / name).is_file():
                raise KubeBedError(
                    f"{self.bin_dir / name} is missing; run tests/support/kube/build.sh first"
                )
        self.pki.generate()
        # atexit is the backstop for a session that ends without fixture teardown.
        atexit.register(self.stop)
        try:
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            self._bootstrap()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # The apiserver first: stopping etcd under it makes it log a storm of errors.
        for attr in ("_apiserver", "_etcd"):
            proc = getattr(self, attr)
            if proc is not None:
                stop_process(proc)
                setattr(self, attr, None)
        atexit.unregister(self.stop)

    def stop_apiserver(self) -> None:
        """Stop only the API server (etcd keeps the cluster's state), for fault tests."""
        if self._apiserver is not None:
            stop_process(self._apiserver)
            self._apiserver = None

    def start_apiserver(self) -> None:
        """Start the API server again on the same port, with the same arguments; wait until it is ready."""
        if self._apiserver is not None:
            return
        self._apiserver = start_process(self._apiserver_argv, log_path=self.apiserver_log, cwd=self.workdir)
        if not self._wait(self._apiserver_ready, self._apiserver, "kube-apiserver", self.apiserver_log):
            raise KubeBedError(f"kube-apiserver did not come back on port {self.port}:\n{_tail(self.apiserver_log)}")

    def cleanup(self) -> None:
        """Stop and remove the work dir if the bed created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KubeBed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _start_etcd(self) -> None:
        # A port grabbed by someone else between free_port() and etcd's bind shows up as
        # an early exit; a fresh pair of ports then almost always works.
        for _attempt in range(3):
            client_port, peer_port = free_port(), free_port()
            data_dir = self.workdir / "etcd-data"
            shutil.rmtree(data_dir, ignore_errors=True)
            argv = [
                str(self.bin_dir / "etcd"),
                "--name=kubebed",
                f"--data-dir={data_dir}",
                f"--listen-client-urls=http://127.0.0.1:{client_port}",
                f"--advertise-client-urls=http://127.0.0.1:{client_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=kubebed=http://127.0.0.1:{peer_port}",
                "--initial-cluster-state=new",
                # Test data is thrown away: skipping fsync makes every write much faster.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]
            self._etcd = start_process(argv, log_path=self.etcd_log, cwd=self.workdir)
            healthy = functools.partial(self._etcd_healthy, client_port)
            if self._wait(healthy, self._etcd, "etcd", self.etcd_log):
                self.etcd_port = client_port
                return
            self._etcd = None
        raise KubeBedError(f"etcd did not start; see {self.etcd_log}:\n{_tail(self.etcd_log)}")

    def _start_apiserver(self) -> None:
        assert self.etcd_port is not None
        for _attempt in range(3):
            port = free_port()
            argv = [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The endpoint reconciler refuses a loopback address; the "kubernetes"
                # Service's endpoints are only for in-cluster clients, and there are none.
                "--endpoint-reconciler-type=none",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={self.pki.serving_cert}",
                f"--tls-private-key-file={self.pki.serving_key}",
                f"--client-ca-file={self.pki.ca_cert}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={self.pki.sa_pub}",
                f"--service-account-signing-key-file={self.pki.sa_key}",
                f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
                "--authorization-mode=Node,RBAC",
                "--disable-admission-plugins=StorageObjectInUseProtection",
                # On by default since 1.25; named so a changed default cannot silently turn off
                # the users' namespace's Pod Security checks the chart tests rely on.
                "--enable-admission-plugins=PodSecurity",
                # As in real clusters (CNI and storage DaemonSets need it): only Pod Security
                # admission stands between a namespace and a privileged pod, as it does there.
                "--allow-privileged=true",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # Flow control only adds bootstrap work at start-up; the tests make no load.
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
                *self.extra_apiserver_args,
            ]
            self._apiserver = start_process(argv, log_path=self.apiserver_log, cwd=self.workdir)
            self._apiserver_argv = argv
            self.port = port
            if self._wait(self._apiserver_ready, self._apiserver, "kube-apiserver", self.apiserver_log):
                return
            self._apiserver = None
            self.port = None
        raise KubeBedError(
            f"kube-apiserver did not start; see {self.apiserver_log}:\n{_tail(self.apiserver_log)}"
        )

    def _wait(
        self,
        ready: Callable[[], bool],
        proc: subprocess.Popen[bytes] | None,
        name: str,
        log: Path,
    ) -> bool:
        """True once ready() is; False if the process exited (retry); raise on time-out."""
        assert proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                if "address already in use" in _tail(log, 200):
                    return False
                raise KubeBedError(f"{name} exited with {proc.returncode}; see {log}:\n{_tail(log)}")
            if ready():
                return True
            time.sleep(0.2)
        stop_process(proc)
        raise KubeBedError(
            f"{name} was not ready after {self.start_timeout:.0f} s; see {log}:\n{_tail(log)}"
        )

    @staticmethod
    def _etcd_healthy(port: int) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            return resp.status == 200 and json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _apiserver_ready(self) -> bool:
        try:
            status, body = self._request("GET", "/readyz")
        except (OSError, http.client.HTTPException):
            return False
        return status == 200 and body.strip() == b"ok"

    # plain synchronous access, for start-up only (no event loop is running then)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
            ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
            self._ssl = ctx
        return self._ssl

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        assert self.port is not None
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=self._ssl_context())
        try:
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _create_sync(self, path: str, body: dict[str, Any]) -> None:
        status, data = self._request("POST", path, body)
        if status not in (200, 201, 409):  # 409: already there, which is what we want
            raise KubeBedError(f"POST {path} answered {status}: {data[:500]!r}")

    def _bootstrap(self) -> None:
        # The "default" namespace is made by the apiserver itself, but possibly a moment
        # after /readyz; creating it is harmless either way.
        self._create_sync("/api/v1/namespaces", {"metadata": {"name": "default"}})
        self._create_sync(
            "/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "default"}}
        )

    def _write_kubeconfig(self) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "kubebed",
                "cluster": {"server": self.server, "certificate-authority-data": b64(self.pki.ca_cert)},
            }],
            "users": [{
                "name": "admin",
                "user": {
                    "client-certificate-data": b64(self.pki.admin_cert),
                    "client-key-data": b64(self.pki.admin_key),
                },
            }],
            "contexts": [{"name": "kubebed", "context": {"cluster": "kubebed", "user": "admin"}}],
            "current-context": "kubebed",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    # async API access

    def admin_configuration(self) -> k8s.Configuration:
        """A kubernetes_asyncio Configuration for the admin (system:masters) identity."""
        cfg = k8s.Configuration(host=self.server)
        cfg.ssl_ca_cert = str(self.pki.ca_cert)
        cfg.cert_file = str(self.pki.admin_cert)
        cfg.key_file = str(self.pki.admin_key)
        cfg.verify_ssl = True
        return cfg

    def token_configuration(self, token: str) -> k8s.Configuration:
        """A Configuration that authenticates with a bearer token (e.g. a ServiceAccount's)."""
        cfg = k8s.Configuration(host=self.server)
        cfg.ssl_ca_cert = str(self.pki.ca_cert)
        cfg.verify_ssl = True
        cfg.api_key = {"BearerToken": token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return cfg

    def admin_client(self) -> k8s.ApiClient:
        """A new admin ApiClient; use it as ``async with bed.admin_client() as api:``.

        A new one per call because an ApiClient's HTTP session belongs to the event
        loop it was first used in, and pytest-asyncio gives each test its own loop.
        """
        return k8s.ApiClient(self.admin_configuration())

    def token_client(self, token: str) -> k8s.ApiClient:
        """A new ApiClient authenticating with `token`; close it like admin_client()."""
        return k8s.ApiClient(self.token_configuration(token))

    def create_namespace_sync(self, name: str, *, labels: dict[str, str] | None = None) -> None:
        """create_namespace() for code without an event loop (sync tests, fixtures)."""
        self._create_sync("/api/v1/namespaces", {"metadata": {"name": name, "labels": labels or {}}})
        self._create_sync(f"/api/v1/namespaces/{name}/serviceaccounts", {"metadata": {"name": "default"}})

    def create_service_account_sync(self, namespace: str, name: str = "default") -> None:
        """Create ServiceAccount `namespace/name` if missing (what the absent service-account controller would do)."""
        self._create_sync(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}})

    def service_account_token_sync(
        self, namespace: str, sa: str, audiences: Sequence[str] | None = None, *, expiration_seconds: int = 3600
    ) -> str:
        """service_account_token() for code without an event loop."""
        status, data = self._request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
            {"spec": {"audiences": list(audiences) if audiences else None, "expirationSeconds": expiration_seconds}},
        )
        if status not in (200, 201):
            raise KubeBedError(f"TokenRequest for {namespace}/{sa} answered {status}: {data[:300]!r}")
        return str(json.loads(data)["status"]["token"])

    async def create_namespace(self, name: str, *, labels: dict[str, str] | None = None) -> None:
        """Create namespace `name` and its `default` ServiceAccount (idempotent)."""
        async with self.admin_client() as api:
            v1 = k8s.CoreV1Api(api)
            try:
                await v1.create_namespace(k8s_body({"metadata": {"name": name, "labels": labels or {}}}))
            except k8s.ApiException as exc:
                if exc.status != 409:
                    raise
            await _create_service_account(v1, name, "default")

    async def create_service_account(self, namespace: str, name: str) -> None:
        """Create ServiceAccount `namespace/name` if it does not exist yet."""
        async with self.admin_client() as api:
            await _create_service_account(k8s.CoreV1Api(api), namespace, name)

    async def service_account_token(
        self,
        namespace: str,
        sa: str,
        audiences: Sequence[str] | None = None,
        *,
        expiration_seconds: int = 3600,
    ) -> str:
        """A token for ServiceAccount `namespace/sa` minted through the TokenRequest API."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                # None means the apiserver's own audience, which is what a pod's
                # projected token gets by default.
                "audiences": list(audiences) if audiences else None,
                "expirationSeconds": expiration_seconds,
            },
        }
        async with self.admin_client() as api:
            resp = await k8s.CoreV1Api(api).create_namespaced_service_account_token(sa, namespace, k8s_body(body))
        token = resp.status.token
        if not token:
            raise KubeBedError(f"TokenRequest for {namespace}/{sa} returned no token")
        return str(token)


async def _create_service_account(v1: k8s.CoreV1Api, namespace: str, name: str) -> None:
    try:
        await v1.create_namespaced_service_account(namespace, k8s_body({"metadata": {"name": name}}))
    except k8s.ApiException as exc:
        if exc.status != 409:
            raise


@contextlib.contextmanager
def pytest_timeout_paused() -> Iterator[None]:
    """Pause pytest-timeout's SIGALRM while a cold build runs inside a test's setup.

    The first test that needs the bed pays for building it (minutes on a cold machine),
    and pytest-timeout counts fixture setup against that test. Only the `signal`
    method can be paused; with other methods this does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    remaining, interval = signal.getitimer(signal.ITIMER_REAL)
    if remaining:
        signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield
    finally:
        if remaining:
            signal.setitimer(signal.ITIMER_REAL, remaining, interval)


if __name__ == "__main__":
    # `python -m tests.support.kubebed` starts a bed by hand and prints how to reach it.
    bed = KubeBed(bin_dir=ensure_binaries())
    t0 = time.monotonic()
    bed.start()
    print(f"kube-apiserver ready at {bed.server} in {time.monotonic() - t0:.1f} s")
    print(f"export KUBECONFIG={bed.kubeconfig}   (Ctrl-C stops it)")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        bed.cleanup()
        sys.exit(0)
