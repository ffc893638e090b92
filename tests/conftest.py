"""Shared fixtures: the Fence stand-in and a real hub in front of it."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import fence as fence_module
from tests.support import hub as hub_module
from tests.support.fence import WORKSPACE_AUTHZ, FenceStandIn
from tests.support.hub import Hub
from tests.support.realdata import DataBed
from tests.support.realfence import FenceBed

# Loggers of the code under test run in this process (spawners driven by tests): at DEBUG, into
# one file, checked with every hub's log at the end of the session.
IN_PROCESS_LOGGERS = ("traitlets", "gen3workspace", "kubespawner", "JupyterHub", "tornado", "oauthenticator")
# A query or form value that should have been redacted (a real code or state is long).
_UNREDACTED = re.compile(r"\b(code|state|access_token|refresh_token|api_key|client_secret)=(?!\[redacted\])([A-Za-z0-9_\-.~%]{12,})")


def leaked_secrets(text: str) -> list[str]:
    """What in `text` is a secret some Fence stand-in of this session issued, or an unredacted code= or state=."""
    found: list[str] = []
    for f in fence_module.INSTANCES:
        secrets_ = [*f.issued_tokens, *f.issued_codes, f.client_secret, *(k["api_key"] for k in f.api_keys.values())]
        found += [f"{s[:12]}… (issued by the Fence stand-in)" for s in secrets_ if s and s in text]
    found += [f"{m.group(1)}={m.group(2)[:6]}…" for m in _UNREDACTED.finditer(text)]
    return found


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Over the whole suite, at debug level: no hub log and no in-process log line carries a code, state, token or key."""
    path = tmp_path_factory.mktemp("in-process-log") / "debug.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    levels = {name: logging.getLogger(name).level for name in IN_PROCESS_LOGGERS}
    for name in IN_PROCESS_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    problems = []
    for log in [path, *dict.fromkeys(hub_module.HUB_LOGS)]:
        if log.exists():
            leaks = leaked_secrets(log.read_text(errors="replace"))
            problems += [f"{log}: {leak}" for leak in leaks[:5]]
    assert not problems, "secrets in logs:\n" + "\n".join(problems)


def make_fence() -> FenceStandIn:
    fence = FenceStandIn()
    fence.add_user("alice", groups=["analysts"])
    # As real Fence answers for the user.yaml policy workspace-gpu: the resource in authz, no group.
    fence.add_user("gpu-gabi", authz={**WORKSPACE_AUTHZ, "/workspace-flavors/gpu": WORKSPACE_AUTHZ["/workspace"]})
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
        f.faults.clear()
        if f._thread is None:
            f.start()


@pytest.fixture(scope="session")
def real_fence() -> Iterator[FenceBed]:
    """Real Fence + arborist + PostgreSQL (tests/support/realfence.py), started once per session."""
    bed = FenceBed().start()
    yield bed
    bed.stop()


@pytest.fixture(scope="session")
def real_data(real_fence: FenceBed) -> Iterator[DataBed]:
    """The real data plane (tests/support/realdata.py) on the session's real Fence bed: indexd, signed URLs over moto S3, manifestservice, sheepdog."""
    bed = DataBed(real_fence).start()
    print(f"\ndata-plane bed: build check {bed.build_seconds:.1f} s, start {bed.start_seconds:.1f} s")
    yield bed
    bed.stop()


@pytest.fixture(scope="module")
def fence_hub(fence: FenceStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    hub = Hub(tmp_path_factory.mktemp("hub"), fence=fence, extra_args=["--egress-proxy", "http://egress.test:3128", "--no-proxy", "internal.commons.test"]).start()
    yield hub
    hub.stop()


__all__ = ["WORKSPACE_AUTHZ", "Path"]
