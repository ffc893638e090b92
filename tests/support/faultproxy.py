"""A fault-injecting forward HTTP proxy for the export tests: passes requests on to the real services and, for the ones a rule picks, breaks them the way a network or a bucket does (cut mid-body, refused, expired link)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from gen3workspace.hub.cli import free_port

HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization", "host"}
# What S3 answers for a presigned URL past X-Amz-Date + X-Amz-Expires (moto checks neither).
EXPIRED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Request has expired</Message>'
    b"<X-Amz-Expires>3600</X-Amz-Expires></Error>"
)

Rule = Callable[[str, str], "str | None"]


def signed_url_expired(url: str, clock_offset: float) -> bool:
    """True when a SigV4 presigned URL is past its expiry on a clock `clock_offset` seconds ahead."""
    q = parse_qs(urlsplit(url).query)
    if "X-Amz-Date" not in q or "X-Amz-Expires" not in q:
        return False
    signed = datetime.strptime(q["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    return time.time() + clock_offset > signed + int(q["X-Amz-Expires"][0])


class FaultProxy:
    """`rule(method, url)` returns None (pass through), "cut" (send half the body, then close), "refuse" (close without an answer) or "s3-expiry" (enforce presigned-URL expiry with `clock_offset`)."""

    def __init__(self) -> None:
        self.rule: Rule = lambda method, url: None
        self.clock_offset = 0.0
        self.seen: list[tuple[str, str, str]] = []
        self.port = free_port()
        proxy = self
        upstream = requests.Session()
        upstream.trust_env = False

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                url = self.path
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                action = proxy.rule(self.command, url)
                if action == "s3-expiry":
                    action = "expired" if signed_url_expired(url, proxy.clock_offset) else None
                proxy.seen.append((self.command, url, action or "pass"))
                if action == "refuse":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if action == "expired":
                    self._send(403, {"Content-Type": "application/xml"}, EXPIRED_BODY)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                resp = upstream.request(self.command, url, headers=headers, data=body, stream=True, allow_redirects=False, timeout=60)
                content = resp.raw.read(decode_content=False)
                out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP and k.lower() != "content-length"}
                if action == "cut" and len(content) > 1:
                    self.send_response(resp.status_code)
                    for k, v in out.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content[: len(content) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._send(resp.status_code, out, content)

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="faultproxy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
