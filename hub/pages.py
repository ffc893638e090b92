"""The hub's page templates (Gen3 Workspace login page) and the values they read, for every way the hub is configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).with_name("templates")


def configure_pages(c: Any, commons_name: str = "", **template_vars: Any) -> None:
    """Put our templates in front of JupyterHub's and give them the commons' name."""
    c.JupyterHub.template_paths = [str(TEMPLATES)]
    c.JupyterHub.template_vars = {"gen3_commons_name": commons_name, **template_vars}
