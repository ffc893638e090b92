"""The egress whitelist for real: Debian's squid runs the squid.conf the chart renders and lets only whitelisted names through, over HTTP and HTTPS CONNECT, never to a non-public address.

Only test plumbing is changed in the rendered config: squid listens on a free loopback port,
reads the whitelist from a temp folder instead of the ConfigMap mount, resolves names from a
hosts file (every test name points at a local server on 127.0.0.1) and never asks a real DNS
server. Values overrides (not edits of the file) open the test servers' ports, let the
loopback client in and list 127.0.0.1 as an internal destination (the way an operator allows
one). Squid runs as uid 13, the runAsUser of the chart's squid container, with stdout/stderr
handed over the way a container runtime does.

Whitelisted names that resolve to private, shared and link-local addresses go to a second
squid with the chart's defaults, started in a network namespace of its own with only a
loopback device: even a squid that wrongly let them through could not send a packet to those
addresses. It answers on a Unix socket relayed to its port inside the namespace.
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .chart import FULLNAME, find, render

SQUID = shutil.which("squid") or "/usr/sbin/squid"
SQUID_UID = 13  # egressProxy.securityContext.runAsUser; 'proxy' in Debian and Ubuntu
MOUNT = "/etc/gen3-workspace/egress-proxy"
RESOLVED_TO_LOOPBACK = [
    "allowed.example.org",
    "sub.allowed.example.org",
    "wild.example.org",
    "sub.wild.example.org",
    "deep.sub.wild.example.org",
    "evilwild.example.org",
    "denied.example.org",
    "data.example.org",
    "api.covered.example.org",
]
# A whitelisted name that resolves to an address listed in egressProxy.deniedDestinations:
# how a DNS-rebinding name would try to reach the metadata service.
REBOUND = ("rebind.wild.example.org", "127.0.0.2")


def _require_squid() -> None:
    if os.path.exists(SQUID):
        return
    message = "Debian's squid is not installed (apt-get install squid); the egress whitelist cannot be tested"
    if os.environ.get("GEN3WS_ALLOW_SKIP") == "1":
        pytest.skip(message)
    pytest.fail(message + ". Set GEN3WS_ALLOW_SKIP=1 to skip on a machine without it.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Origin:
    """A local web server standing in for the internet; records the Host of every request it gets."""

    tls: bool = False
    hosts_seen: list[str] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None
    cert_pem: bytes = b""

    @property
    def port(self) -> int:
        assert self.server
        return self.server.server_address[1]

    def start(self, tmp: Path) -> "Origin":
        seen, headers = self.hosts_seen, self.headers_seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                host = (self.headers.get("Host") or "").split(":")[0]
                headers.append({k.lower(): v for k, v in self.headers.items()})
                seen.append(host)
                body = f"hello from {host}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls:
            key_file, cert_file = _self_signed(tmp, "allowed.example.org")
            self.cert_pem = cert_file.read_bytes()
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert_file, key_file)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = tmp / "origin.key", tmp / "origin.crt"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def _replace_once(text: str, old: str, new: str) -> str:
    # Each plumbing edit must hit exactly one line, so a chart change cannot slip past the test.
    assert text.count(old) == 1, f"expected exactly one {old!r} in the rendered squid.conf"
    return text.replace(old, new)


@dataclass
class Squid:
    port: int
    http: Origin
    https: Origin
    conf: str
    rendered: str
    process: subprocess.Popen[bytes]
    log: list[str]

    def get(self, url: str, source: str = "127.0.0.1") -> tuple[int, str]:
        """GET an absolute URL through the proxy, as HTTP_PROXY clients do."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10, source_address=(source, 0))
        try:
            conn.request("GET", url)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def connect(self, host: str, port: int, cafile: Path) -> str:
        """HTTPS through the proxy with CONNECT, verifying the origin's certificate for `host`."""
        ctx = ssl.create_default_context(cafile=str(cafile))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=ctx)
        conn.set_tunnel(host, port)
        try:
            conn.request("GET", "/over-tls")
            resp = conn.getresponse()
            assert resp.status == 200
            return resp.read().decode()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def squid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Squid]:
    _require_squid()
    # Not under pytest's tmp root: that is private to the test user, and squid runs as uid 13.
    tmp = Path(tempfile.mkdtemp(prefix="gen3ws-squid-"))
    os.chmod(tmp, 0o755)
    http_origin = Origin().start(tmp)
    https_origin = Origin(tls=True).start(tmp)
    (tmp / "ca.crt").write_bytes(https_origin.cert_pem)

    overrides = {
        "egressProxy": {
            "whitelist": {
                "domains": ["allowed.example.org", "api.covered.example.org"],
                "wildcardDomains": [".wild.example.org", ".covered.example.org"],
                "includeCommons": True,
            },
            # The local origins listen on random ports; production keeps 80/443.
            "safePorts": [http_origin.port, https_origin.port],
            "sslPorts": [https_origin.port],
            "allowedClients": ["127.0.0.1/32"],
            # The origins live on 127.0.0.1, which is never public: listed the way an operator
            # allows an internal service. 127.0.0.2 (REBOUND) stays refused.
            "internalDestinations": ["127.0.0.1/32"],
        }
    }
    cm = find(render("defaults.yaml", overrides=overrides), "ConfigMap", f"{FULLNAME}-egress-config")
    rendered = cm["data"]["squid.conf"]
    (tmp / "whitelist.txt").write_text(cm["data"]["whitelist.txt"], encoding="utf-8")
    (tmp / "hosts").write_text(f"127.0.0.1 {' '.join(RESOLVED_TO_LOOPBACK)}\n{REBOUND[1]} {REBOUND[0]}\n", encoding="utf-8")

    port = _free_port()
    conf = _replace_once(rendered, "\nhttp_port 3128\n", f"\nhttp_port 127.0.0.1:{port}\n")
    conf = _replace_once(conf, f'"{MOUNT}/whitelist.txt"', f'"{tmp}/whitelist.txt"')
    conf += f"\n# test plumbing\nhosts_file {tmp}/hosts\ndns_nameservers 127.0.0.1\n"
    (tmp / "squid.conf").write_text(conf, encoding="utf-8")
    for f in tmp.iterdir():
        os.chmod(f, 0o644)

    # The container runtime hands the container user its stdout/stderr; squid reopens
    # /dev/stdout for access_log, which fails for a pipe it does not own.
    read_fd, write_fd = os.pipe()
    command = [SQUID, "-N", "-f", str(tmp / "squid.conf")]
    if os.geteuid() == 0:
        os.fchown(write_fd, SQUID_UID, SQUID_UID)
        command = ["setpriv", f"--reuid={SQUID_UID}", f"--regid={SQUID_UID}", "--clear-groups", *command]
    process = subprocess.Popen(command, stdout=write_fd, stderr=write_fd, stdin=subprocess.DEVNULL)
    os.close(write_fd)
    log: list[str] = []

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as out:
            for line in out:
                log.append(line.decode(errors="replace").rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            time.sleep(0.2)
            pytest.fail(f"squid exited with {process.returncode} on the rendered config:\n" + "\n".join(log[-40:]))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("squid did not start listening within 30 s:\n" + "\n".join(log[-40:]))
            time.sleep(0.1)

    yield Squid(port, http_origin, https_origin, conf, rendered, process, log)

    # SIGINT: squid's immediate shutdown (SIGTERM would wait shutdown_lifetime for clients).
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    http_origin.stop()
    https_origin.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def _fetch(squid: Squid, host: str, path: str = "/probe", port: int | None = None) -> tuple[int, str, bool]:
    """Status, body, and whether the origin saw the request."""
    before = len(squid.http.hosts_seen)
    status, body = squid.get(f"http://{host}:{port or squid.http.port}{path}")
    return status, body, len(squid.http.hosts_seen) > before


def test_only_plumbing_differs_from_the_rendered_config(squid: Squid) -> None:
    rendered = [line for line in squid.rendered.splitlines()]
    running = squid.conf.splitlines()
    changed = [line for line in running if line not in rendered]
    assert changed == [
        f"http_port 127.0.0.1:{squid.port}",
        f'acl whitelist dstdomain -n "{Path(squid.conf.split("hosts_file ")[1].split()[0]).parent}/whitelist.txt"',
        "# test plumbing",
        f"hosts_file {Path(squid.conf.split('hosts_file ')[1].split()[0])}",
        "dns_nameservers 127.0.0.1",
    ]
    dropped = [line for line in rendered if line not in running]
    assert dropped == ["http_port 3128", f'acl whitelist dstdomain -n "{MOUNT}/whitelist.txt"']


def test_whitelisted_exact_name_gets_through_over_http(squid: Squid) -> None:
    status, body, reached = _fetch(squid, "allowed.example.org")
    assert (status, body, reached) == (200, "hello from allowed.example.org", True)


def test_wildcard_entry_covers_the_domain_and_its_subdomains(squid: Squid) -> None:
    for host in ("wild.example.org", "sub.wild.example.org", "deep.sub.wild.example.org"):
        status, body, reached = _fetch(squid, host)
        assert (status, body, reached) == (200, f"hello from {host}", True), host


def test_commons_host_is_whitelisted(squid: Squid) -> None:
    assert _fetch(squid, "data.example.org")[0] == 200


def test_entry_dropped_as_covered_is_still_reachable(squid: Squid) -> None:
    # api.covered.example.org was left out of whitelist.txt because .covered.example.org covers it.
    assert "api.covered.example.org" not in (Path(squid.conf.split("hosts_file ")[1].split()[0]).parent / "whitelist.txt").read_text()
    assert _fetch(squid, "api.covered.example.org")[0] == 200


@pytest.mark.parametrize(
    "host",
    [
        "denied.example.org",  # not listed at all
        "sub.allowed.example.org",  # exact entries do not include subdomains
        "evilwild.example.org",  # a wildcard matches on label boundaries only
        "127.0.0.1",  # an IP address is never whitelisted
    ],
)
def test_names_not_whitelisted_are_refused(squid: Squid, host: str) -> None:
    status, body, reached = _fetch(squid, host)
    assert status == 403, (host, status, body[:200])
    assert not reached, f"{host}: squid refused but still contacted the origin"


def test_whitelisted_name_resolving_to_a_denied_address_is_refused(squid: Squid) -> None:
    # 127.0.0.2 is loopback, outside the one internal destination (127.0.0.1/32) listed.
    status, _, reached = _fetch(squid, REBOUND[0])
    assert status == 403 and not reached


def test_no_via_header_and_no_client_address_reach_the_origin(squid: Squid) -> None:
    assert _fetch(squid, "allowed.example.org", path="/headers")[0] == 200
    headers = squid.http.headers_seen[-1]
    assert "via" not in headers, headers
    assert "x-forwarded-for" not in headers, headers
    assert "squid" not in " ".join(headers.values()).lower(), headers


def test_non_safe_port_is_refused(squid: Squid) -> None:
    assert _fetch(squid, "allowed.example.org", port=9)[0] == 403


def test_unknown_client_is_refused(squid: Squid) -> None:
    before = len(squid.http.hosts_seen)
    status, _ = squid.get(f"http://allowed.example.org:{squid.http.port}/probe", source="127.0.0.3")
    assert status == 403 and len(squid.http.hosts_seen) == before


def test_https_connect_to_a_whitelisted_name_gets_through(squid: Squid, tmp_path_factory: pytest.TempPathFactory) -> None:
    cafile = tmp_path_factory.mktemp("ca") / "ca.crt"
    cafile.write_bytes(squid.https.cert_pem)
    body = squid.connect("allowed.example.org", squid.https.port, cafile)
    assert body == "hello from allowed.example.org"
    assert squid.https.hosts_seen[-1] == "allowed.example.org"


@pytest.mark.parametrize("host", ["denied.example.org", "sub.allowed.example.org"])
def test_https_connect_to_a_name_not_whitelisted_is_refused(squid: Squid, host: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    cafile = tmp_path_factory.mktemp("ca") / "ca.crt"
    cafile.write_bytes(squid.https.cert_pem)
    before = len(squid.https.hosts_seen)
    with pytest.raises(OSError, match="403"):
        squid.connect(host, squid.https.port, cafile)
    assert len(squid.https.hosts_seen) == before


def test_connect_to_a_port_outside_ssl_ports_is_refused(squid: Squid, tmp_path_factory: pytest.TempPathFactory) -> None:
    cafile = tmp_path_factory.mktemp("ca") / "ca.crt"
    cafile.write_bytes(squid.https.cert_pem)
    # The plain HTTP origin's port is a Safe_port but not an SSL_port.
    with pytest.raises(OSError, match="403"):
        squid.connect("allowed.example.org", squid.http.port, cafile)


def test_access_log_goes_to_stdout_with_each_decision(squid: Squid) -> None:
    _fetch(squid, "allowed.example.org", path="/logged-allowed")
    _fetch(squid, "denied.example.org", path="/logged-denied")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        allowed = [l for l in squid.log if "/logged-allowed" in l]
        denied = [l for l in squid.log if "/logged-denied" in l]
        if allowed and denied:
            break
        time.sleep(0.1)
    assert allowed and "/200 " in allowed[-1], squid.log[-10:]
    assert denied and "TCP_DENIED/403" in denied[-1], squid.log[-10:]
    assert not [l for l in squid.log if "FATAL" in l or "ERROR" in l]
    assert squid.process.poll() is None


def test_the_egress_proxy_really_runs_without_root(squid: Squid) -> None:
    if os.geteuid() != 0:
        pytest.skip("not running as root: squid already ran as the current non-root user")
    status = Path(f"/proc/{squid.process.pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {str(SQUID_UID)}
    assert ipaddress.ip_address("127.0.0.1").is_loopback


# --- whitelisted names that resolve to non-public addresses, in an isolated network namespace --

# Whitelisted (under .wild.example.org) names and where a hostile or careless DNS record points
# them: the commons' private networks, loopback, the cloud metadata services (AWS v4/v6, EKS Pod
# Identity, Alibaba in the shared range), IPv6 unique- and link-local, an IPv4-mapped address.
PRIVATE_TARGETS = {
    "rfc1918-10": "10.1.2.3",
    "rfc1918-172": "172.20.0.5",
    "rfc1918-192": "192.168.1.10",
    "shared-cgnat": "100.100.100.200",
    "link-local": "169.254.170.23",
    "metadata": "169.254.169.254",
    "loopback": "127.0.0.1",
    "this-network": "0.0.0.1",
    "ula": "fd12:3456::1",
    "aws-v6-metadata": "fd00:ec2::254",
    "v6-link-local": "fe80::1",
    "v6-loopback": "::1",
    "v4-mapped": "::ffff:10.0.0.1",
}
# Controls: public (documentation) addresses squid lets through and then cannot reach (no route
# in the namespace), so they answer 503 rather than 403; one is in deniedDestinations.
PUBLIC_TARGET = ("public.wild.example.org", "203.0.113.7")
DENIED_TARGET = ("denied-public.wild.example.org", "198.51.100.7")
# A name with a public and a private address: refused, since any private address counts.
MIXED_TARGET = ("mixed.wild.example.org", ("203.0.113.8", "10.9.9.9"))

RELAY = """
import os, socket, subprocess, sys, threading
sock_path, port, log_path, squid_uid = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
command = sys.argv[5:]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
# The container's file system as the chart sets it up: the root read-only, squid's run-time
# folder an empty writable one; the test folder stays writable for the socket and the log.
work = os.path.dirname(sock_path)
subprocess.run(["mount", "--bind", work, work], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", "/"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=16m", "tmpfs", "/run/squid"], check=True)
try:
    open("/gen3ws-read-only-probe", "w").close()
    root = "writable"
except OSError:
    root = "read-only"
with open(os.path.join(work, "root-fs"), "w") as f:
    f.write(root)
log = os.open(log_path, os.O_WRONLY | os.O_APPEND)
if os.geteuid() == 0:
    command = ["setpriv", f"--reuid={squid_uid}", f"--regid={squid_uid}", "--clear-groups", *command]
squid = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
server = socket.socket(socket.AF_UNIX)
server.bind(sock_path)
server.listen(16)
def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
def serve(client):
    try:
        upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        client.close()
        return
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    pipe(upstream, client)
threading.Thread(target=lambda: squid.wait() or os._exit(3), daemon=True).start()
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


@dataclass
class IsolatedSquid:
    socket_path: str
    root_fs: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def get(self, url: str) -> int:
        conn = UnixHTTPConnection(self.socket_path)
        try:
            conn.request("GET", url)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _require_netns() -> None:
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode == 0:
        return
    message = f"cannot make a network namespace (unshare --net: {probe.stderr.strip()}); squid's private-address refusals are only tested isolated"
    if os.environ.get("GEN3WS_ALLOW_SKIP") == "1":
        pytest.skip(message)
    pytest.fail(message + ". Run as root, or set GEN3WS_ALLOW_SKIP=1 to skip.")


@pytest.fixture(scope="module")
def isolated_squid() -> Iterator[IsolatedSquid]:
    _require_squid()
    _require_netns()
    tmp = Path(tempfile.mkdtemp(prefix="gen3ws-squid-netns-"))
    os.chmod(tmp, 0o755)
    overrides = {
        "egressProxy": {
            "whitelist": {"domains": [], "wildcardDomains": [".wild.example.org"], "includeCommons": False},
            "allowedClients": ["127.0.0.1/32"],
            "deniedDestinations": [f"{DENIED_TARGET[1]}/32"],
        }
    }
    cm = find(render("defaults.yaml", overrides=overrides), "ConfigMap", f"{FULLNAME}-egress-config")
    (tmp / "whitelist.txt").write_text(cm["data"]["whitelist.txt"], encoding="utf-8")
    lines = [f"{address} {name}.wild.example.org" for name, address in PRIVATE_TARGETS.items()]
    lines += [f"{PUBLIC_TARGET[1]} {PUBLIC_TARGET[0]}", f"{DENIED_TARGET[1]} {DENIED_TARGET[0]}"]
    lines += [f"{address} {MIXED_TARGET[0]}" for address in MIXED_TARGET[1]]
    (tmp / "hosts").write_text("\n".join(lines) + "\n", encoding="utf-8")
    port = _free_port()
    conf = _replace_once(cm["data"]["squid.conf"], "\nhttp_port 3128\n", f"\nhttp_port 127.0.0.1:{port}\n")
    conf = _replace_once(conf, f'"{MOUNT}/whitelist.txt"', f'"{tmp}/whitelist.txt"')
    conf += f"\n# test plumbing\nhosts_file {tmp}/hosts\ndns_nameservers 127.0.0.1\n"
    (tmp / "squid.conf").write_text(conf, encoding="utf-8")
    log_path = tmp / "squid.log"
    log_path.touch()
    for f in tmp.iterdir():
        os.chmod(f, 0o644)
    if os.geteuid() == 0:
        os.chown(log_path, SQUID_UID, SQUID_UID)
    (tmp / "relay.py").write_text(RELAY, encoding="utf-8")
    socket_path = str(tmp / "squid.sock")
    process = subprocess.Popen(
        ["unshare", "--net", "--mount", "--propagation", "private", sys.executable, str(tmp / "relay.py"), socket_path, str(port), str(log_path), str(SQUID_UID), SQUID, "-N", "-f", str(tmp / "squid.conf")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(tmp / "relay.err", "wb"), start_new_session=True,
    )
    isolated = IsolatedSquid(socket_path, tmp / "root-fs", log_path, process)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            pytest.fail(f"the isolated squid exited ({process.returncode}):\n{isolated.log()[-3000:]}\n{(tmp / 'relay.err').read_text()[-2000:]}")
        try:
            isolated.get("http://not-whitelisted.example.net/")
            break
        except OSError:
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                pytest.fail("the isolated squid did not answer within 30 s:\n" + isolated.log()[-3000:])
            time.sleep(0.2)
    yield isolated
    # The whole session: relay and squid (which shares the relay's session).
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("name", sorted(PRIVATE_TARGETS))
def test_whitelisted_name_resolving_to_a_non_public_address_is_refused(isolated_squid: IsolatedSquid, name: str) -> None:
    host = f"{name}.wild.example.org"
    assert isolated_squid.get(f"http://{host}/probe-{name}") == 403, f"{host} -> {PRIVATE_TARGETS[name]}"
    # Refused by the access rules before any connection attempt (which would answer 503 here).
    # squid writes its access log a moment after it answers.
    deadline = time.monotonic() + 5
    while not (lines := [l for l in isolated_squid.log().splitlines() if f"/probe-{name}" in l]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines and "TCP_DENIED/403" in lines[-1], lines


def test_https_connect_to_a_non_public_address_is_refused(isolated_squid: IsolatedSquid) -> None:
    conn = UnixHTTPConnection(isolated_squid.socket_path)
    try:
        conn.request("CONNECT", "metadata.wild.example.org:443", headers={"Host": "metadata.wild.example.org:443"})
        assert conn.getresponse().status == 403
    finally:
        conn.close()


def test_a_name_with_any_private_address_is_refused(isolated_squid: IsolatedSquid) -> None:
    assert isolated_squid.get(f"http://{MIXED_TARGET[0]}/") == 403


def test_public_addresses_pass_the_rules_unless_denied(isolated_squid: IsolatedSquid) -> None:
    """The controls: the 403s above are the address rules, not a broken proxy."""
    # Allowed, then no route in the namespace: squid's "cannot connect" answer.
    assert isolated_squid.get(f"http://{PUBLIC_TARGET[0]}/control") in (502, 503, 504)
    assert isolated_squid.get(f"http://{DENIED_TARGET[0]}/control") == 403


def test_squid_runs_on_a_read_only_root_file_system(isolated_squid: IsolatedSquid) -> None:
    """readOnlyRootFilesystem in the chart: this squid has answered every test above on one."""
    assert isolated_squid.root_fs.read_text() == "read-only"
    assert isolated_squid.get("http://not-whitelisted.example.net/") == 403
    assert isolated_squid.process.poll() is None
    assert "FATAL" not in isolated_squid.log() and "Read-only file system" not in isolated_squid.log()
