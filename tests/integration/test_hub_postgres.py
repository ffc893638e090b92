"""The hub on a real PostgreSQL (Debian's server, a private cluster) through the chart's config layer: users, servers, auth state and pending key revocations survive a hub restart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chart_install import chart_configs, chart_engine_config, generated_secret_values, hub_kubeconfig, install_chart, users_namespace
from tests.support.charthub import ChartHub
from tests.support.fence import FenceStandIn
from tests.support.kube_fixtures import *  # noqa: F403
from tests.support.kubebed import KubeBed
from tests.support.postgres import Postgres

pytestmark = pytest.mark.k8s


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    pg = Postgres().start()
    yield pg
    pg.remove()


@pytest.fixture(scope="module")
def fence() -> Iterator[FenceStandIn]:
    f = FenceStandIn()
    f.add_user("alice", groups=["analysts"])
    f.add_user("bob", groups=["analysts"])
    f.start()
    yield f
    f.stop()


@pytest.fixture
def hub(kube_bed: KubeBed, fence: FenceStandIn, postgres: Postgres, kubelet_thread_factory: Any, tmp_path: Path) -> Iterator[ChartHub]:
    ns = f"pg-{uuid.uuid4().hex[:6]}"
    kube_bed.create_namespace_sync(ns)
    values = {
        "commons": {"url": fence.url},
        "auth": {"clientId": fence.client_id, "clientSecret": fence.client_secret},
        "hub": {"db": {"type": "external", "url": postgres.url(), "password": postgres.password}},
        "networkPolicy": {"hub": {"database": {"to": [{"ipBlock": {"cidr": "127.0.0.1/32"}}]}}},
    }
    install_chart(kube_bed, ns, values=values)
    config, flavors = chart_configs(kube_bed, ns)
    db = yaml.safe_load(config)["hub"]["db"]
    assert (db["type"], db["url"]) == ("external", postgres.url()) and postgres.password not in config, "the password stays in the Secret"
    kubelet_thread_factory(users_namespace(ns))  # users' pods live in the chart's users' namespace
    kubeconfig = hub_kubeconfig(kube_bed, ns, tmp_path / "hub-kubeconfig")
    h = ChartHub(
        tmp_path, fence, kubeconfig, config, flavors, base_url=yaml.safe_load(config)["hub"]["baseUrl"], chart_db=True,
        # The chart's own setting (a hub restart keeps users' servers); the test plumbing turns it on.
        extra_config="c.JupyterHub.cleanup_servers = False\n",
        # What the chart's hub Secret gives the hub for hub.db.password.
        extra_env={"GEN3WS_DB_PASSWORD": postgres.password},
        engine_conf=chart_engine_config(kube_bed, ns),
        # As the chart runs it: the hub makes its cookie secret and crypt key in the hub Secret.
        keys_from_secret=True,
    ).start()
    h.release_namespace, h.kube_bed = ns, kube_bed  # type: ignore[attr-defined]
    try:
        yield h
    finally:
        for user in ("alice", "bob"):
            h.api("DELETE", f"users/{user}/server")
        for user in ("alice", "bob"):
            try:
                h.wait_for_server(user, ready=False, timeout=60)
            except Exception:  # noqa: BLE001 - best-effort cleanup of a failed test
                pass
        h.stop()


def start(hub: ChartHub, user: str) -> None:
    r = hub.api("POST", f"users/{user}/server", json={"flavor": "python-small"})
    assert r.status_code in (201, 202), r.text
    hub.wait_for_server(user)


def test_state_survives_a_hub_restart_on_postgresql(hub: ChartHub, fence: FenceStandIn, postgres: Postgres) -> None:
    alice_session, _ = hub.login("alice")
    start(hub, "alice")
    alice_before = hub.user_model("alice")
    keys = generated_secret_values(hub.kube_bed, hub.release_namespace)  # type: ignore[attr-defined]
    assert sorted(k for k in keys if k in ("cookie-secret", "crypt-key")) == ["cookie-secret", "crypt-key"], "the hub stored its keys"
    state_before = hub.api("GET", "users/alice").json()
    assert state_before["auth_state"]["access_token"], "auth state is stored (encrypted) in PostgreSQL"

    # Bob's server stops while Fence is down: the key id waits in the spawner's state.
    hub.login("bob")
    start(hub, "bob")
    (bob_key,) = fence.active_keys("bob")
    fence.fail_500 = True
    r = hub.api("DELETE", "users/bob/server")
    assert r.status_code in (202, 204)
    hub.wait_for_server("bob", ready=False)
    fence.fail_500 = False
    assert fence.active_keys("bob") == [bob_key]

    hub.stop()
    assert sorted(postgres.psql("SELECT name FROM users", database=postgres.database).stdout.split()) == ["alice", "bob"]
    hub.start()

    # Users, the running server, auth state and the pending revocation all came back.
    assert {u["name"] for u in hub.api("GET", "users").json()} >= {"alice", "bob"}
    alice = hub.wait_for_server("alice")
    assert alice["servers"][""]["started"] == alice_before["servers"][""]["started"], "the same server, not a new one"
    # The same crypt key (read back from the Secret): the stored auth state decrypts.
    assert hub.api("GET", "users/alice").json()["auth_state"]["access_token"] == state_before["auth_state"]["access_token"]
    # The same cookie secret: alice's browser is still logged in.
    home = alice_session.get(f"{hub.url}hub/home", allow_redirects=False, timeout=30)
    assert home.status_code == 200 and "alice" in home.text, (home.status_code, home.headers.get("location"))
    assert generated_secret_values(hub.kube_bed, hub.release_namespace) == keys  # type: ignore[attr-defined]
    bob = hub.api("GET", "users/bob", params={"include_stopped_servers": "1"}).json()
    assert bob["servers"][""]["state"]["gen3_pending_revocations"] == [bob_key]

    # Bob's next start revokes the old key first.
    start(hub, "bob")
    assert bob_key not in fence.active_keys("bob")
    assert len(fence.active_keys("bob")) == 1
