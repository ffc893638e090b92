"""Pytest fixtures for tests that need the real Kubernetes API server (``@pytest.mark.k8s``).

Use them with ``from tests.support.kube_fixtures import *  # noqa: F403`` in a test
module (or load this module as a plugin: ``-p tests.support.kube_fixtures``).

* ``kube_bed`` (session): a started :class:`~tests.support.kubebed.KubeBed`; builds
  the binaries first if needed. ``GEN3WS_SKIP_K8S=1`` turns it into a skip; without
  that, a failed build or start is an error, never a silent skip.
* ``kube_namespace`` (function): a fresh namespace (with its ``default``
  ServiceAccount) per test, so tests never see each other's objects.
* ``kubelet`` (function): a started :class:`~tests.support.kubelet.KubeletHarness`
  for ``kube_namespace``; stopped (every process it ran killed) after the test.
* ``kubelet_factory`` (function): ``await kubelet_factory(namespace, **options)`` for
  harnesses with other options; all are stopped after the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests.support.kubebed import KubeBed, ensure_binaries, pytest_timeout_paused
from tests.support.kubelet import KubeletHarness

__all__ = ["kube_bed", "kube_namespace", "kubelet", "kubelet_factory"]

SKIP_ENV = "GEN3WS_SKIP_K8S"


@pytest.fixture(scope="session")
def kube_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeBed]:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the Kubernetes test bed is switched off")
    # A cold build takes minutes, longer than one test's time-out; it is set-up, not
    # the test's own time.
    with pytest_timeout_paused():
        bin_dir = ensure_binaries()
    bed = KubeBed(tmp_path_factory.mktemp("kubebed"), bin_dir=bin_dir)
    bed.start()
    try:
        yield bed
    finally:
        bed.stop()


@pytest.fixture
async def kube_namespace(kube_bed: KubeBed) -> str:
    # Namespaces are never deleted: with no namespace controller a deleted namespace
    # only hangs in Terminating. Unique names keep tests apart instead.
    name = f"t-{uuid.uuid4().hex[:10]}"
    await kube_bed.create_namespace(name)
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
