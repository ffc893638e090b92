"""Process checks shared by tests that must prove nothing was left running."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie has stopped all the same)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
