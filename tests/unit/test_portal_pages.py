"""Small pieces of the pages a portal user sees: the embedded mode's progress text and the frame-leaving logout answer."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gen3workspace.hub.pages import leave_frame
from gen3workspace.spawner.flavors import load_catalogue, default_catalogue_path
from gen3workspace.spawner.local import Gen3LocalSpawner


class FakeHandler:
    def __init__(self, dest: str | None):
        self.request = SimpleNamespace(headers={"Sec-Fetch-Dest": dest} if dest else {})
        self.headers: dict[str, str] = {}
        self.body = ""

    def set_header(self, k: str, v: str) -> None:
        self.headers[k] = v

    def finish(self, body: Any) -> None:
        self.body = body


def test_local_progress_does_not_claim_cpu_or_memory() -> None:
    flavor = load_catalogue(default_catalogue_path()).get("r-large")
    spawner = Gen3LocalSpawner.__new__(Gen3LocalSpawner)
    spawner.flavor = flavor
    message = Gen3LocalSpawner.progress_intro(spawner)["message"]
    assert "R — large" in message and "not applied" in message
    assert "4 CPU" not in message and "16 GiB" not in message


def test_logout_in_a_frame_moves_the_whole_window() -> None:
    target = "https://data.example.org/user/logout?next=https%3A%2F%2Fdata.example.org%2F</script>"
    framed = FakeHandler("iframe")
    assert leave_frame(framed, target) is True
    assert "window.top.location.href" in framed.body
    assert "</script>\"" not in framed.body  # the target cannot close the script early
    top = FakeHandler("document")
    assert leave_frame(top, target) is False and top.body == ""
