"""Shared fixtures: the Fence stand-in and a real hub in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fence import WORKSPACE_AUTHZ, FenceStandIn
from tests.support.hub import Hub
from tests.support.realfence import FenceBed


def make_fence() -> FenceStandIn:
    fence = FenceStandIn()
    fence.add_user("alice", groups=["analysts"])
    fence.add_user("gpu-gabi", groups=["gpu-users"])
    fence.add_user("nobody-ned", authz={"/programs/open": [{"service": "peregrine", "method": "read"}]})
    fence.add_user("admin-ada", is_admin=True)
    return fence


@pytest.fixture(scope="module")
def fence() -> Iterator[FenceStandIn]:
    f = make_fence().start()
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _reset_fence(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "fence" in request.fixturenames:
        f: FenceStandIn = request.getfixturevalue("fence")
        f.fail_500 = False
        f.reject_refresh = False
        f.token_delay = 0.0
        f.login_redirect_whitelist = []
        f.auto_login = None
        f.access_token_lifetime = 1200
        if f._thread is None:
            f.start()


@pytest.fixture(scope="session")
def real_fence() -> Iterator[FenceBed]:
    """Real Fence + arborist + PostgreSQL (tests/support/realfence.py), started once per session."""
    bed = FenceBed().start()
    yield bed
    bed.stop()


@pytest.fixture(scope="module")
def fence_hub(fence: FenceStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    hub = Hub(tmp_path_factory.mktemp("hub"), fence=fence, extra_args=["--egress-proxy", "http://egress.test:3128", "--no-proxy", "internal.commons.test"]).start()
    yield hub
    hub.stop()


__all__ = ["WORKSPACE_AUTHZ", "Path"]
