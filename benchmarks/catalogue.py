"""Prints what the flavor catalogue costs per request (hot-reload check) and per reload, for the example catalogue."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from gen3workspace.spawner.flavors import CatalogueWatcher, default_catalogue_path


def per_call(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flavors.yaml"
        shutil.copy(default_catalogue_path(), path)
        watcher = CatalogueWatcher(path)
        watcher.current()
        unchanged = [per_call(watcher.current, 20_000) for _ in range(5)]
        reloads = []
        for i in range(50):
            path.write_text(default_catalogue_path().read_text() + f"\n# edit {i}\n")
            start = time.perf_counter()
            watcher.current()
            reloads.append(time.perf_counter() - start)
    print(f"check, file unchanged (every flavor page and spawn): {statistics.median(unchanged) * 1e6:.1f} µs")
    print(f"reload after an edit (parse + validate):            {statistics.median(reloads) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
