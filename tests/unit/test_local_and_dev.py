"""Embedded-mode safety: one folder per user and server, and a dev login that trusts only real loopback peers."""

from __future__ import annotations

from types import SimpleNamespace

from gen3workspace.hub.auth import Gen3OAuthenticator
from gen3workspace.hub.devauth import _client_addresses, _loopback
from gen3workspace.spawner.local import safe_name

TRICKY = ["alice", "a@", "a-40", "a-40-6140", "bob@x.org", "bob-40x.org", "A", "a", "..", ".", ".hidden", "ünï", "c3", "-c3", "a b", "a_b", "a.b"]


def test_safe_name_is_one_to_one_and_never_escapes_the_folder() -> None:
    names = {safe_name(n) for n in TRICKY}
    assert len(names) == len(TRICKY)
    for n in names:
        assert "/" not in n and not n.startswith(".") and n.isascii()


def request(peer: str, headers: dict[str, str], spoofed_remote: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(_orig_remote_ip=peer, remote_ip=spoofed_remote or peer, headers=headers)


def test_dev_login_ignores_forgeable_headers() -> None:
    # A remote client behind the proxy, claiming X-Real-Ip: 127.0.0.1 (tornado would believe it).
    forged = request("127.0.0.1", {"X-Forwarded-For": "203.0.113.9", "X-Real-Ip": "127.0.0.1"}, spoofed_remote="127.0.0.1")
    assert not all(_loopback(a) for a in _client_addresses(forged))
    # A client that puts a loopback address first; the proxy appends the real peer last.
    prefixed = request("127.0.0.1", {"X-Forwarded-For": "127.0.0.1, 203.0.113.9"})
    assert not all(_loopback(a) for a in _client_addresses(prefixed))
    local = request("127.0.0.1", {"X-Forwarded-For": "127.0.0.1"})
    assert all(_loopback(a) for a in _client_addresses(local))


def test_logout_goes_through_fence_even_with_a_logout_redirect() -> None:
    auth = Gen3OAuthenticator(commons_url="https://data.example.org", logout_redirect_url="https://portal.example.org/")
    assert auth.fence_logout_redirect() == "https://data.example.org/user/logout?next=https%3A%2F%2Fdata.example.org%2F"
    auth = Gen3OAuthenticator(commons_url="https://data.example.org", logout_redirect_url="https://p.example.org/", post_logout_url="")
    assert auth.fence_logout_redirect().endswith("next=https%3A%2F%2Fp.example.org%2F")
    auth = Gen3OAuthenticator(commons_url="https://data.example.org", logout_redirect_url="https://p.example.org/", end_fence_session=False)
    assert auth.fence_logout_redirect() == "https://p.example.org/"


def test_hub_asks_fence_for_the_credentials_scope_and_warns_without_it(caplog) -> None:
    assert "credentials" in Gen3OAuthenticator(commons_url="https://data.example.org").scope
    assert "lacks 'credentials'" not in caplog.text
    Gen3OAuthenticator(commons_url="https://data.example.org", scope=["openid", "user", "data"])
    assert "lacks 'credentials'" in caplog.text and "--allowed-scopes" in caplog.text


def test_refresh_margin_fits_the_token_lifetime() -> None:
    auth = Gen3OAuthenticator(commons_url="https://data.example.org", refresh_margin_seconds=300)
    assert auth.refresh_margin({"iat": 1000, "exp": 1000 + 1200}) == 300
    # A commons with 5-minute tokens: a fresh token must not count as expiring already.
    assert auth.refresh_margin({"iat": 1000, "exp": 1000 + 300}) == 150
    assert auth.refresh_margin({}) == 300


def test_refresh_pre_spawn_stays_off(caplog) -> None:
    auth = Gen3OAuthenticator(commons_url="https://data.example.org", refresh_pre_spawn=True)
    assert auth.refresh_pre_spawn is False
    assert "refresh_pre_spawn is ignored" in caplog.text


def test_the_embedded_hub_defines_the_fence_admin_role_only_with_fence_login(tmp_path) -> None:
    from traitlets.config import Config

    from gen3workspace.hub.auth import FENCE_ADMIN_GROUP, FENCE_ADMIN_ROLE
    from gen3workspace.hub.local import LocalSettings, configure

    c = Config()
    configure(c, LocalSettings(data_dir=str(tmp_path), commons_url="https://data.example.org", client_id="ws"))
    (role,) = [r for r in c.JupyterHub.load_roles if r["name"] == FENCE_ADMIN_ROLE]
    assert role["groups"] == [FENCE_ADMIN_GROUP] and "access:servers" not in role["scopes"]
    dev = Config()
    configure(dev, LocalSettings(data_dir=str(tmp_path)))
    assert "load_roles" not in dev.JupyterHub


async def test_refresh_of_an_auth_state_without_token_response_checks_the_token_instead_of_failing() -> None:
    # An auth_state set through the REST API (or by an older hub) has no `token_response`;
    # upstream's refresh would raise a TypeError there, a 500 for the user.
    from tests.support.fakes import FakeUser
    from tests.support.fence import FenceStandIn

    fence = FenceStandIn()
    fence.add_user("alice")
    fence.start()
    try:
        auth = Gen3OAuthenticator(commons_url=fence.url.removesuffix("/user"), client_id=fence.client_id, client_secret=fence.client_secret)
        user = FakeUser("alice", auth_state={"access_token": fence.mint_access_token("alice"), "oauth_user": {"username": "alice"}})
        model = await auth.refresh_user(user)
        assert isinstance(model, dict) and model["name"] == "alice"
        assert model["auth_state"]["oauth_user"]["authz"], "the userinfo is read again from Fence"
        # A token Fence refuses, and no refresh token: a new login, not an error.
        user = FakeUser("alice", auth_state={"access_token": "not-a-token", "oauth_user": {"username": "alice"}})
        assert await auth.refresh_user(user) is False
        assert await auth.refresh_user(FakeUser("alice", auth_state={"oauth_user": {}})) is False
    finally:
        fence.stop()


def test_the_workspace_permission_counts_as_allow_config() -> None:
    """JupyterHub warns "No allow config found" unless some allow setting is on; ours gates every login."""
    from gen3workspace.hub.auth import Gen3OAuthenticator

    assert Gen3OAuthenticator(commons_url="https://data.example.org").any_allow_config is True
    assert Gen3OAuthenticator(commons_url="https://data.example.org", require_workspace_permission=False).any_allow_config is False


def test_a_refused_flavor_is_one_log_line_however_often_jupyterhub_reports_it() -> None:
    import io
    import logging

    from gen3workspace.spawner.common import FlavorError, quiet_refusals

    stream = io.StringIO()
    log = logging.getLogger("test-quiet-refusals")
    log.propagate = False
    log.addHandler(logging.StreamHandler(stream))
    quiet_refusals(log)
    quiet_refusals(log)  # idempotent
    assert len(log.filters) == 1

    def report(error: FlavorError) -> None:
        # What JupyterHub does with one spawn hook's HTTPError: two tracebacks, two error lines.
        try:
            raise error
        except FlavorError:
            log.exception("Exception applying user_options for bob")
            log.error("Failed to spawn single-user server with form", exc_info=True)
        log.error(f"Error starting bob's server: {error}")
        log.error(f"Error starting server bob: {error}")

    report(FlavorError(403, "You are not allowed to launch the flavor 'python-gpu'."))
    lines = stream.getvalue().splitlines()
    assert lines == ["Exception applying user_options for bob: You are not allowed to launch the flavor 'python-gpu'."], lines

    # Already logged by whoever raised it: nothing more.
    stream.truncate(0), stream.seek(0)
    report(FlavorError(403, "You may not launch r-large.", logged=True))
    assert stream.getvalue() == ""
    # Other errors pass untouched, tracebacks included.
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("unrelated")
    assert "Traceback" in stream.getvalue() and "boom" in stream.getvalue()
