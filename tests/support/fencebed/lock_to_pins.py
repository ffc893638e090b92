"""Turns Fence's poetry.lock and pyproject.toml into a uv requirements file and constraints file."""
# Run with the Python that will run Fence (>= 3.13, so tomllib is there).
import sys
import tomllib
from pathlib import Path

src, out = Path(sys.argv[1]), Path(sys.argv[2])
lock = tomllib.loads((src / "poetry.lock").read_text())
project = tomllib.loads((src / "pyproject.toml").read_text())

pins = []
for package in lock["package"]:
    # Dev-only packages (pytest, moto, a git-sourced test helper) are not what Fence runs with.
    if "main" not in package.get("groups", ["main"]):
        continue
    line = f"{package['name']}=={package['version']}"
    markers = package.get("markers")
    if isinstance(markers, dict):
        markers = markers.get("main")
    if markers:
        line += f" ; {markers}"
    pins.append(line)

wanted = [name for name in project["tool"]["poetry"]["dependencies"] if name != "python"]
(out / "constraints.txt").write_text("\n".join(sorted(pins)) + "\n")
(out / "requirements.txt").write_text("\n".join(wanted) + "\n")
print(f"{len(wanted)} requirements, {len(pins)} pins", file=sys.stderr)
