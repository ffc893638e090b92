"""A stand-in for Gen3's revproxy: one origin for the portal, Fence (`/user/`), the data services (`/index/`, `/ga4gh/`, `/manifests/`, `/api/`) and the workspace (`/lw-workspace/`).

Like revproxy it routes by path prefix with nginx's `proxy_pass` rule: an upstream given with a
path (even just `/`) replaces the matched prefix by that path, one without a path gets the
request's path unchanged; `regex_routes` are nginx's `location ~` blocks (tried first, in
order). With `tls=True` it also listens with TLS on `tls_port`, with a self-signed certificate
for 127.0.0.1 (`ca_file`), for clients that only speak https (the SDK's `gen3 drs-pull`). It
turns the commons' `access_token` cookie into `Authorization: bearer <token>` for the
workspace and serves a page that makes the portal Workspace page's calls
(tests/support/portal_page.html). HTTP and WebSockets are relayed; it runs in a thread with its
own event loop, like the Fence stand-in.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL
from aiohttp import web

from gen3workspace.hub.cli import free_port

PORTAL_PAGE = Path(__file__).with_name("portal_page.html")
HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "content-length", "content-encoding", "host"}


class RevProxy:
    """`routes` maps a path prefix to an upstream base URL; the longest prefix wins."""

    def __init__(
        self,
        routes: dict[str, str],
        workspace_prefix: str = "/lw-workspace/",
        bearer_from_cookie: bool = True,
        host: str = "127.0.0.1",
        port: int | None = None,
        regex_routes: list[tuple[str, str]] | None = None,
        tls: bool = False,
    ):
        self.routes = dict(routes)
        # (pattern, upstream URL template with \1-style groups), matched against the path.
        self.regex_routes = [(re.compile(p), t) for p, t in (regex_routes or [])]
        self.workspace_prefix = workspace_prefix
        self.bearer_from_cookie = bearer_from_cookie
        self.host = host
        self.port = port or free_port()
        self.tls_port = free_port() if tls else None
        self.ca_file: Path | None = None
        self.pages: dict[str, str] = {}
        self.requests: list[tuple[str, str, int]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"https://{self.host}:{self.tls_port}"

    def _ssl_context(self) -> ssl.SSLContext:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.host)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(self.host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        folder = Path(tempfile.mkdtemp(prefix="revproxy-tls-"))
        self.ca_file = folder / "cert.pem"
        self.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.ca_file, folder / "key.pem")
        return context

    def start(self) -> "RevProxy":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True, name="revproxy")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("revproxy stand-in did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        loop.run_until_complete(web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start())
        if self.tls_port:
            loop.run_until_complete(web.TCPSite(self._runner, self.host, self.tls_port, reuse_address=True, ssl_context=self._ssl_context()).start())
        ready.set()
        loop.run_forever()
        loop.close()

    def _upstream_url(self, request: web.Request) -> str | None:
        """The URL to relay `request` to, by nginx's rules, or None when no route matches."""
        path, query = request.raw_path.split("?", 1) if "?" in request.raw_path else (request.raw_path, "")
        suffix = f"?{query}" if query else ""
        for pattern, template in self.regex_routes:
            match = pattern.match(path)
            if match:
                return match.expand(template) + suffix
        best = max((p for p in self.routes if path.startswith(p)), key=len, default=None)
        if best is None:
            return None
        upstream = self.routes[best]
        if urlsplit(upstream).path:
            return upstream + path[len(best):] + suffix
        return upstream.rstrip("/") + path + suffix

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path in self.pages:
            return web.Response(text=self.pages[request.path], content_type="text/html")
        if request.path == "/portal/workspace":
            return web.Response(text=PORTAL_PAGE.read_text(), content_type="text/html")
        if request.path.startswith("/wts/"):
            # The portal asks the workspace token service first; no external IdPs here.
            return web.json_response({})
        url = self._upstream_url(request)
        if url is None:
            return web.Response(status=404, text="revproxy stand-in: no route")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers["Host"] = request.host
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-For"] = request.remote or "127.0.0.1"
        token = request.cookies.get("access_token")
        if self.bearer_from_cookie and token and request.path.startswith(self.workspace_prefix) and "Authorization" not in headers:
            headers["Authorization"] = f"bearer {token}"
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, url, headers)
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.request(request.method, URL(url, encoded=True), headers=headers, data=await request.read(), allow_redirects=False) as up:
                body = await up.read()
                self.requests.append((request.method, request.path, up.status))
                resp = web.Response(status=up.status, body=body)
                for k, v in up.headers.items():
                    if k.lower() not in HOP or k.lower() == "content-encoding":
                        resp.headers.add(k, v)
                return resp

    async def _websocket(self, request: web.Request, url: str, headers: dict[str, str]) -> web.StreamResponse:
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        for k in list(headers):
            if k.lower().startswith("sec-websocket"):
                del headers[k]
        async with aiohttp.ClientSession() as session:
            try:
                up = await session.ws_connect("ws" + url[4:], headers=headers, protocols=protocols, max_msg_size=0)
            except aiohttp.WSServerHandshakeError as e:
                self.requests.append(("WS", request.path, e.status))
                return web.Response(status=e.status)
            self.requests.append(("WS", request.path, 101))
            down = web.WebSocketResponse(protocols=[up.protocol] if up.protocol else (), max_msg_size=0)
            await down.prepare(request)

            async def pump(src: Any, dst: Any) -> None:
                async for msg in src:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await dst.send_str(msg.data)
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        await dst.send_bytes(msg.data)
                    else:
                        break
                await dst.close()

            await asyncio.gather(pump(up, down), pump(down, up), return_exceptions=True)
            return down
