"""Prints what the identity gate costs: latency of a request to a user's server through the hub's gate versus straight to the server, and the portal's status call.

Runs the embedded hub against the Fence stand-in (the test support), launches one server with
a bearer token as the portal would, then times sequential GETs. Numbers only; no assertions.
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import make_fence  # noqa: E402
from tests.support.hub import Hub  # noqa: E402

BASE = "/lw-workspace/"


def timed(session: requests.Session, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        r = session.get(url, timeout=30)
        out.append((time.perf_counter() - start) * 1000)
        r.raise_for_status()
    return out


def report(name: str, samples: list[float]) -> None:
    samples = sorted(samples)
    p95 = samples[int(len(samples) * 0.95) - 1]
    print(f"{name:<34} median {statistics.median(samples):7.2f} ms   p95 {p95:7.2f} ms   n={len(samples)}")


def main(n: int = 300) -> None:
    fence = make_fence().start()
    with tempfile.TemporaryDirectory() as tmp:
        hub = Hub(Path(tmp), fence=fence, extra_args=["--base-url", BASE]).start()
        try:
            s = requests.Session()
            s.headers["Authorization"] = f"bearer {fence.mint_access_token('alice')}"
            s.post(hub.url + "launch?id=python-small", timeout=60).raise_for_status()
            model = hub.wait_for_server("alice")
            direct = model["servers"][""]["url"]
            # The server's own address, as the hub logged it when it came up.
            found = re.search(r"Server at (http://127\.0\.0\.1:\d+)" + re.escape(direct), hub.log())
            host = found.group(1) if found else None
            report("status (launcher API)", timed(s, hub.url + "status", n))
            report("server /api through the gate", timed(s, f"http://127.0.0.1:{hub.port}{direct}api", n))
            if host:
                report("server /api directly", timed(requests.Session(), f"{host}{direct}api", n))
            s.post(hub.url + "terminate", timeout=60)
        finally:
            hub.stop()
            fence.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
