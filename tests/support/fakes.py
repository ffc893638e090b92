"""Small stand-ins for the JupyterHub objects a spawner reads when tests drive it without a hub."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class FakeGroup:
    def __init__(self, name: str):
        self.name = name


class FakeUser:
    """What a spawner reads of JupyterHub's User."""

    def __init__(self, name: str, groups: list[str] = (), auth_state: dict[str, Any] | None = None):
        self.name = name
        self.id = 7
        self.url = f"/user/{name}/"
        self.groups = [FakeGroup(g) for g in groups]
        self.auth_state = auth_state or {"oauth_user": {"authz": {}}}

    async def get_auth_state(self) -> dict[str, Any]:
        return self.auth_state

    async def save_auth_state(self, state: dict[str, Any]) -> None:
        self.auth_state = state


def fake_hub(api_url: str = "http://hub:8081/hub/api") -> SimpleNamespace:
    """What a spawner reads of JupyterHub's Hub object."""
    base = api_url.rsplit("/api", 1)[0] + "/"
    return SimpleNamespace(public_host="", url=base, base_url="/hub/", api_url=api_url)
