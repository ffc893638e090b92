"""Pytest fixtures for tests that need the real Kubernetes API server (``@pytest.mark.k8s``).

Use them with ``from tests.support.kube_fixtures import *  # noqa: F403`` in a test
module, or load this module as a plugin (``pytest_plugins`` / ``-p``).

* ``kube_bed`` (session): a started :class:`~tests.support.kubebed.KubeBed`; builds
  the binaries first if needed. ``GEN3WS_SKIP_K8S=1`` turns it into a skip; without
  that, a failed build or start is an error, never a silent skip. One bed serves the
  whole session even when several modules star-import these fixtures.
* ``kube_namespace`` (function, sync): a fresh namespace (with its ``default``
  ServiceAccount) per test, so tests never see each other's objects.
* ``kubelet`` (function, async): a started :class:`~tests.support.kubelet.KubeletHarness`
  for ``kube_namespace``, in the test's event loop; stopped (every process it ran
  killed) after the test.
* ``kubelet_factory`` (function, async): ``await kubelet_factory(namespace, **options)``
  for harnesses with other options; all are stopped after the test.
* ``kubelet_thread_factory`` (function, sync): ``kubelet_thread_factory(namespace,
  **options)`` returns a started :class:`~tests.support.kubelet.KubeletThread`, the
  harness in its own thread, for synchronous tests; all are stopped after the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests.support.kubebed import KubeBed, ensure_binaries, pytest_timeout_paused
from tests.support.kubelet import KubeletHarness, KubeletThread

__all__ = ["kube_bed", "kube_namespace", "kubelet", "kubelet_factory", "kubelet_thread_factory"]

SKIP_ENV = "GEN3WS_SKIP_K8S"

# pytest registers a star-imported fixture once per importing module, and would start
# one session-scoped bed for each; sharing the instance here keeps it to one.
_shared_bed: KubeBed | None = None


@pytest.fixture(scope="session")
def kube_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeBed]:
    global _shared_bed
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the Kubernetes test bed is switched off")
    if _shared_bed is None:
        # A cold build takes minutes, longer than one test's time-out; it is set-up,
        # not the test's own time.
        with pytest_timeout_paused():
            bin_dir = ensure_binaries()
        bed = KubeBed(tmp_path_factory.mktemp("kubebed"), bin_dir=bin_dir)
        bed.start()
        _shared_bed = bed
    try:
        yield _shared_bed
    finally:
        # Every copy of this fixture is torn down at session end; stop() is idempotent.
        _shared_bed.stop()


@pytest.fixture
def kube_namespace(kube_bed: KubeBed) -> str:
    # Namespaces are never deleted: with no namespace controller a deleted namespace
    # only hangs in Terminating. Unique names keep tests apart instead.
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube_bed.create_namespace_sync(name)
    return name


@pytest.fixture
async def kubelet_factory(
    kube_bed: KubeBed, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Callable[..., Awaitable[KubeletHarness]]]:
    started: list[KubeletHarness] = []

    async def make(namespace: str, **options: Any) -> KubeletHarness:
        options.setdefault("state_dir", tmp_path_factory.mktemp("kubelet"))
        harness = await KubeletHarness(kube_bed.kubeconfig, namespace, **options).start()
        started.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in reversed(started):
            await harness.stop()


@pytest.fixture
async def kubelet(
    kubelet_factory: Callable[..., Awaitable[KubeletHarness]], kube_namespace: str
) -> KubeletHarness:
    return await kubelet_factory(kube_namespace)


@pytest.fixture
def kubelet_thread_factory(
    kube_bed: KubeBed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., KubeletThread]]:
    started: list[KubeletThread] = []

    def make(namespace: str, **options: Any) -> KubeletThread:
        options.setdefault("state_dir", tmp_path_factory.mktemp("kubelet"))
        runner = KubeletThread(kube_bed.kubeconfig, namespace, **options).start()
        started.append(runner)
        return runner

    try:
        yield make
    finally:
        for runner in reversed(started):
            runner.stop()
