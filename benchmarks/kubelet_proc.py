"""The kubelet harness in a process of its own, so its work does not share a GIL or event loop with the hub being measured.

``python -m benchmarks.kubelet_proc KUBECONFIG NAMESPACE STATE_DIR`` plays the kubelet for the
namespace's singleuser pods until its stdin closes; it prints ``ready`` once it watches.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from tests.support.kubelet import KubeletHarness


async def main(kubeconfig: str, namespace: str, state_dir: str) -> None:
    harness = await KubeletHarness(kubeconfig, namespace, state_dir=state_dir).start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    try:
        # Returns at EOF: the benchmark closed our stdin (or died).
        await loop.run_in_executor(None, sys.stdin.read)
    finally:
        await harness.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(*sys.argv[1:4]))
