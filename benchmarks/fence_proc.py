"""The Fence stand-in in a process of its own, as Fence is a service of its own: its token signing then does not share a GIL with the hub being measured.

``python -m benchmarks.fence_proc`` prints one JSON line (url, client id and secret), then answers
JSON-line commands on stdin: add_user, mint_access_token, calls_since, until stdin closes.
:class:`FenceProcess` is the benchmark's side of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def serve() -> None:
    from tests.support.fence import FenceStandIn

    fence = FenceStandIn().start()
    print(json.dumps({"url": fence.url, "client_id": fence.client_id, "client_secret": fence.client_secret}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "add_user":
            fence.add_user(cmd["name"])
            out: Any = True
        elif op == "mint_access_token":
            out = fence.mint_access_token(cmd["name"])
        elif op == "calls_since":
            out = [[c.method, c.path, c.status] for c in fence.calls[cmd["n"]:]]
        else:
            out = {"error": f"unknown op {op}"}
        print(json.dumps(out), flush=True)
    fence.stop()


class FenceProcess:
    """What the benchmark needs of the stand-in, over a pipe to its process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.fence_proc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        info = json.loads(self._readline())
        self.url, self.client_id, self.client_secret = info["url"], info["client_id"], info["client_secret"]
        self._seen = 0

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the Fence stand-in process exited")
        return line

    def _call(self, op: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._readline())

    def add_user(self, name: str) -> None:
        self._call("add_user", name=name)

    def mint_access_token(self, name: str) -> str:
        return str(self._call("mint_access_token", name=name))

    def calls_since(self, n: int) -> list[str]:
        """Calls from the n-th on, as 'METHOD path → status'."""
        return [f"{m} {p} → {s}" for m, p, s in self._call("calls_since", n=n)]

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


if __name__ == "__main__":
    serve()
