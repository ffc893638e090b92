"""The data plane the export tests run against, behind one interface: records, objects and manifests put in through the services' own APIs, and the addresses a fault rule needs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
from aiohttp import web

from gen3workspace.hub.cli import free_port


class DataPlane(Protocol):
    url: str

    def api_key(self, user: str) -> dict[str, str]: ...
    def add_object(self, data: bytes, file_name: str, md5: str | None = None, size: int | None = None, readable: bool = True) -> str: ...
    def entry(self, guid: str, file_name: str, data: bytes) -> dict[str, Any]: ...
    def unknown_guid(self) -> str: ...
    def post_manifest(self, user: str, entries: list[dict[str, Any]]) -> str: ...
    def put_raw_manifest(self, user: str, raw: bytes) -> str: ...
    def clear_manifests(self, user: str) -> None: ...
    def is_bucket(self, url: str) -> bool: ...
    def is_indexd(self, url: str) -> bool: ...


def portal_entry(guid: str, file_name: str, data: bytes, commons_url: str) -> dict[str, Any]:
    """A manifest entry as the portal's Discovery page exports it (the study's `__manifest` items)."""
    return {"md5sum": hashlib.md5(data).hexdigest(), "file_name": file_name, "file_size": len(data), "object_id": guid, "commons_url": commons_url}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class StandInPlane:
    """Until the real bed is in: manifestservice, indexd, Fence's data routes and a bucket on one loopback origin, from REAL-GEN3.md's shapes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.records: dict[str, dict[str, Any]] = {}
        self.objects: dict[str, bytes] = {}
        self.manifests: dict[str, dict[str, tuple[float, bytes]]] = {}
        self.keys: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    def _token(self, user: str, kind: str) -> str:
        return f"{_b64({'alg': 'none'})}.{_b64({'sub': user, 'exp': int(time.time()) + 3600, 'iss': self.url + '/user', 'kind': kind})}.x"

    def _user(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        try:
            payload = auth.split()[1].split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (IndexError, ValueError):
            return None
        return claims.get("sub") if claims.get("kind") == "access" else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        user = self._user(request)
        if path == "/user/credentials/api/access_token" and request.method == "POST":
            body = await request.json()
            for u, key in self.keys.items():
                if key == body.get("api_key"):
                    return web.json_response({"access_token": self._token(u, "access")})
            return web.Response(status=401, text="<html><body>Unauthorized</body></html>", content_type="text/html")
        if path.startswith("/user/data/download/"):
            guid = path[len("/user/data/download/") :]
            rec = self.records.get(guid)
            if rec is None:
                return web.json_response({"error": "not found"}, status=404)
            if user is None or not rec["_readable"]:
                return web.Response(status=401, text="<!DOCTYPE html><html><title>401 Unauthorized</title><p>You don't have access</p></html>", content_type="text/html")
            date = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            return web.json_response({"url": f"{self.url}/bucket/{rec['_key']}?X-Amz-Date={date}&X-Amz-Expires=3600&X-Amz-Signature=abc"})
        if path == "/index/bulk/documents" and request.method == "POST":
            ids = await request.json()
            return web.json_response([self._doc(r) for g, r in self.records.items() if g in ids])
        if path.startswith("/index/index/"):
            rec = self.records.get(path[len("/index/index/") :])
            return web.json_response(self._doc(rec)) if rec else web.json_response({"error": "no record found"}, status=404)
        if path.startswith("/bucket/"):
            data = self.objects.get(path[len("/bucket/") :])
            return web.Response(body=data, content_type="binary/octet-stream") if data is not None else web.Response(status=404)
        if path.startswith("/manifests/"):
            if user is None:
                return web.json_response({"error": "no token"}, status=403)
            mine = self.manifests.setdefault(user, {})
            if path == "/manifests/" and request.method == "POST":
                entries = await request.json()
                if not isinstance(entries, list) or not all(isinstance(e, dict) and "object_id" in e for e in entries):
                    return web.json_response({"error": "bad manifest"}, status=400)
                return web.json_response({"filename": self._store(user, json.dumps(entries).encode())})
            if path == "/manifests/":
                items = sorted(mine.items(), key=lambda kv: kv[1][0])
                return web.json_response({"manifests": [{"filename": n, "last_modified": str(t), "last_modified_timestamp": t} for n, (t, _) in items]})
            if path.startswith("/manifests/file/"):
                item = mine.get(path[len("/manifests/file/") :])
                return web.Response(body=item[1], content_type="text/html") if item else web.json_response({"error": "nope"}, status=404)
        return web.Response(status=404, text="no route")

    def _doc(self, rec: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in rec.items() if not k.startswith("_")}

    def _store(self, user: str, raw: bytes) -> str:
        name = "manifest-" + datetime.now().isoformat().replace(":", "-") + ".json"
        self.manifests.setdefault(user, {})[name] = (time.time(), raw)
        return name

    # --- the interface ---

    def api_key(self, user: str) -> dict[str, str]:
        key = self.keys.setdefault(user, self._token(user, "key"))
        return {"key_id": f"key-{user}", "api_key": key}

    def add_object(self, data: bytes, file_name: str, md5: str | None = None, size: int | None = None, readable: bool = True) -> str:
        guid = f"dg.TEST/{uuid.uuid4()}"
        key = f"{uuid.uuid4()}/{file_name.replace('/', '_')}"
        self.objects[key] = data
        self.records[guid] = {
            "did": guid, "size": len(data) if size is None else size, "hashes": {"md5": md5 or hashlib.md5(data).hexdigest()},
            "file_name": file_name, "urls": [f"s3://bucket/{key}"], "_key": key, "_readable": readable,
        }
        return guid

    def entry(self, guid: str, file_name: str, data: bytes) -> dict[str, Any]:
        return portal_entry(guid, file_name, data, self.url)

    def unknown_guid(self) -> str:
        return f"dg.TEST/{uuid.uuid4()}"

    def post_manifest(self, user: str, entries: list[dict[str, Any]]) -> str:
        token = self._token(user, "access")
        r = requests.post(f"{self.url}/manifests/", json=entries, headers={"Authorization": f"bearer {token}"}, timeout=30)
        r.raise_for_status()
        return r.json()["filename"]

    def put_raw_manifest(self, user: str, raw: bytes) -> str:
        return self._store(user, raw)

    def clear_manifests(self, user: str) -> None:
        self.manifests.pop(user, None)

    def is_bucket(self, url: str) -> bool:
        return urlsplit(url).path.startswith("/bucket/")

    def is_indexd(self, url: str) -> bool:
        return urlsplit(url).path.startswith("/index/")

    # --- life cycle ---

    def start(self) -> "StandInPlane":
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=1024**3)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)


@contextlib.contextmanager
def data_plane() -> Iterator[DataPlane]:
    plane = StandInPlane().start()
    try:
        yield plane
    finally:
        plane.stop()
