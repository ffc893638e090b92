"""Jupyter Server settings of a Gen3 Workspace notebook: lets the Gen3 portal embed JupyterLab in a frame, shuts idle kernels, terminals and the server down, and turns on Export to Workspace.

The notebook image installs this file as /usr/local/etc/jupyter/jupyter_server_config.py. Jupyter
loads that directory after /etc/jupyter, so these settings sit on top of the docker-stacks
defaults in /etc/jupyter/jupyter_server_config.py without replacing that file. In the embedded
mode the local spawner points JUPYTER_CONFIG_PATH at this folder, so both modes share it.

Environment (set by the spawner; read when the server starts):

- ``GEN3_FRAME_ANCESTORS``: space-separated CSP sources allowed to frame the server, e.g.
  ``https://data.example.org``. Sent as ``Content-Security-Policy: frame-ancestors 'self'
  <sources>``. Unset or invalid: JupyterHub's default, ``frame-ancestors 'none'``, stays.
- ``GEN3_IDLE_TIMEOUT_SECONDS``: idle time after which kernels and terminals are culled
  and the server shuts itself down (default 3600; 0 turns culling off).
- ``GEN3_EXPORT`` and ``GEN3_EXPORT_*``: the Export to Workspace extension, ``gen3ws_export.py``
  next to this file (its docstring lists them).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import Any

DEFAULT_IDLE_TIMEOUT_SECONDS = 3600
# Culling runs on a timer; checking at least every 5 minutes keeps the overshoot small
# without waking the server constantly.
MAX_CULL_INTERVAL_SECONDS = 300

# CSP source expressions that make sense for frame-ancestors: a scheme (https:), a host with
# optional scheme, wildcard subdomain and port, or the 'self' keyword. Everything else (';',
# ',', quotes, 'none', newlines) could end the directive or inject another header.
_CSP_SOURCE = re.compile(
    r"""^(?:
        'self'
      | [a-z][a-z0-9+.-]*:
      | (?:[a-z][a-z0-9+.-]*://)?(?:\*\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*(?::(?:[0-9]{1,5}|\*))?(?:/[^\s;,'"]*)?
    )$""",
    re.IGNORECASE | re.VERBOSE,
)


def _warn(message: str) -> None:
    # Logging is not configured yet while config files load; stderr reaches the pod log.
    print(f"gen3-workspace jupyter config: {message}", file=sys.stderr)


def frame_ancestors_policy(value: str | None) -> str | None:
    """Return the CSP header value for GEN3_FRAME_ANCESTORS, or None to keep the default."""
    if value is None or not value.strip():
        return None
    if any(ord(char) < 0x20 and char != " " for char in value):
        # A line break would end the header and start another one.
        _warn("ignoring GEN3_FRAME_ANCESTORS: it contains control characters")
        return None
    sources = value.split(" ")
    sources = [source for source in sources if source]
    bad = [source for source in sources if not _CSP_SOURCE.match(source)]
    if bad:
        _warn(f"ignoring GEN3_FRAME_ANCESTORS: {bad[0]!r} is not a CSP source like https://portal.example.org")
        return None
    extra = [source for source in sources if source.lower() != "'self'"]
    return " ".join(["frame-ancestors", "'self'", *extra])


def idle_timeout_seconds(value: str | None) -> int:
    """Return GEN3_IDLE_TIMEOUT_SECONDS as an int >= 0, or the default when unset or invalid."""
    if value is None or not value.strip():
        return DEFAULT_IDLE_TIMEOUT_SECONDS
    try:
        seconds = int(value.strip())
    except ValueError:
        seconds = -1
    if seconds < 0:
        _warn(f"ignoring GEN3_IDLE_TIMEOUT_SECONDS={value!r}: not a whole number of seconds >= 0")
        return DEFAULT_IDLE_TIMEOUT_SECONDS
    return seconds


def apply(c: Any, env: Mapping[str, str]) -> None:
    """Set the embedding and idle-shutdown options on the traitlets Config `c` from `env`."""
    policy = frame_ancestors_policy(env.get("GEN3_FRAME_ANCESTORS"))
    if policy is not None:
        # Merge rather than assign: an earlier config file may already set other headers.
        current = c.ServerApp.get("tornado_settings")
        settings = dict(current) if isinstance(current, dict) else {}
        headers = dict(settings.get("headers") or {})
        headers["Content-Security-Policy"] = policy
        settings["headers"] = headers
        c.ServerApp.tornado_settings = settings

    timeout = idle_timeout_seconds(env.get("GEN3_IDLE_TIMEOUT_SECONDS"))
    # The server only counts as idle once no kernel or terminal is left, so both are culled
    # after the same timeout; 0 disables all three, as each option reads 0 as "off".
    c.ServerApp.shutdown_no_activity_timeout = timeout
    c.MappingKernelManager.cull_idle_timeout = timeout
    c.TerminalManager.cull_inactive_timeout = timeout
    if timeout:
        interval = max(1, min(MAX_CULL_INTERVAL_SECONDS, timeout // 2))
        c.MappingKernelManager.cull_interval = interval
        c.TerminalManager.cull_interval = interval
    # An idle kernel with a browser tab still open is still idle: otherwise a forgotten tab
    # keeps a paid-for server up forever. A busy kernel (a running cell) is never culled.
    c.MappingKernelManager.cull_connected = True
    c.MappingKernelManager.cull_busy = False


EXPORT_EXTENSION = "gen3ws_export"


def enable_export(c: Any, folder: str) -> None:
    """Make the Export to Workspace extension beside this file importable and enabled (it stays idle without Gen3 credentials)."""
    if folder not in sys.path:
        # Appended, not prepended: nothing installed in the environment is shadowed by this folder.
        sys.path.append(folder)
    # update(), not assignment: other config files enable their own extensions in the same dict.
    c.ServerApp.jpserver_extensions.update({EXPORT_EXTENSION: True})


if "get_config" in globals():
    # Loaded by Jupyter as a config file: traitlets injects get_config() into the namespace.
    apply(get_config(), os.environ)  # type: ignore[name-defined]  # noqa: F821
    enable_export(get_config(), os.path.dirname(os.path.abspath(__file__)))  # type: ignore[name-defined]  # noqa: F821
