"""A Jupyter kernel client over the kernel WebSocket (`/api/kernels/<id>/channels`, JSON messages as JupyterLab sends without a subprotocol), for timing round trips and output."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import aiohttp


def message(msg_type: str, content: dict[str, Any], session: str, channel: str = "shell") -> dict[str, Any]:
    return {
        "header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "bench", "session": session,
                   "date": datetime.now(timezone.utc).isoformat(), "version": "5.3"},
        "parent_header": {}, "metadata": {}, "content": content, "channel": channel, "buffers": [],
    }


async def start_kernel(http: aiohttp.ClientSession, server_url: str, headers: dict[str, str]) -> str:
    async with http.post(f"{server_url}api/kernels", json={"name": "python3"}, headers=headers) as r:
        if r.status not in (200, 201):
            raise RuntimeError(f"starting a kernel answered {r.status}: {(await r.text())[:200]}")
        return (await r.json())["id"]


class KernelSocket:
    """One open kernel WebSocket: `execute()` sends code and waits for the kernel to go idle again, returning the seconds and the bytes of stream output."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: str):
        self.ws = ws
        self.session = session

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, server_url: str, kernel_id: str, headers: dict[str, str]) -> "KernelSocket":
        session = uuid.uuid4().hex
        ws_url = server_url.replace("http://", "ws://", 1) + f"api/kernels/{kernel_id}/channels?session_id={session}"
        ws = await http.ws_connect(ws_url, headers=headers, max_msg_size=0, heartbeat=None)
        sock = cls(ws, session)
        await sock.execute("pass", timeout=120)  # the kernel is up and answering on this socket
        return sock

    async def execute(self, code: str, timeout: float = 60) -> tuple[float, int]:
        msg = message("execute_request", {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                                          "allow_stdin": False, "stop_on_error": True}, self.session)
        msg_id = msg["header"]["msg_id"]
        began = time.perf_counter()
        await self.ws.send_json(msg)
        output, replied, idle = 0, False, False
        async with asyncio.timeout(timeout):
            while not (replied and idle):
                frame = await self.ws.receive()
                if frame.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"kernel WebSocket closed ({frame.type.name}, {frame.data!r})")
                m = frame.json()
                if m.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = m["header"]["msg_type"]
                if kind == "stream":
                    output += len(m["content"]["text"])
                elif kind == "execute_reply":
                    replied = True
                elif kind == "status" and m["content"]["execution_state"] == "idle":
                    idle = True
        return time.perf_counter() - began, output

    async def close(self) -> None:
        await self.ws.close()
