"""The log filter redacts OAuth codes and states, tokens, keys and Authorization values from every line, tracebacks included."""

from __future__ import annotations

import io
import logging

import pytest

from gen3workspace.hub import logscrub
from gen3workspace.hub.auth import Gen3OAuthenticator

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize(
    "line, secret",
    [
        ("403 GET /hub/oauth_callback?code=Zx9abcDEF123456789&state=eyJzdGF0ZSI6 (127.0.0.1): refused", "Zx9abcDEF123456789"),
        ("403 GET /hub/oauth_callback?state=s3cr3tStateValue42&code=c0de", "s3cr3tStateValue42"),
        ("POST /user/credentials/cdis/access_token body api_key=k3yValue0123456789", "k3yValue0123456789"),
        ('answer {"access_token": "plainOpaqueToken123", "token_type": "Bearer"}', "plainOpaqueToken123"),
        ("headers: {'Authorization': 'Bearer opaque-bearer-0123456789'}", "opaque-bearer-0123456789"),
        (f"minted {JWT} for alice", JWT),
        ("client_secret=cs-verySecretValue123 sent", "cs-verySecretValue123"),
    ],
)
def test_secrets_are_redacted(line: str, secret: str) -> None:
    assert secret not in logscrub.scrub(line)
    assert "[redacted]" in logscrub.scrub(line)


def test_ordinary_lines_are_untouched() -> None:
    line = "302 GET /hub/spawn -> /hub/spawn-pending/alice (alice@127.0.0.1) 12.0ms; key_id=3f2a"
    assert logscrub.scrub(line) == line


def test_the_authenticator_installs_it_on_tornado_and_the_hub_handlers() -> None:
    stream = io.StringIO()
    hub_log = logging.getLogger("test-hub-app")
    hub_log.propagate = False
    handler = logging.StreamHandler(stream)
    hub_log.addHandler(handler)
    tornado_general = logging.getLogger("tornado.general")
    # As JupyterHub wires it: Tornado's loggers write through the app's handlers.
    saved = (tornado_general.parent, tornado_general.propagate)
    tornado_general.parent, tornado_general.propagate = hub_log, True
    try:
        Gen3OAuthenticator(log=hub_log)
        tornado_general.warning("%d %s: %s", 403, "GET /hub/oauth_callback?code=AbCdEf0123456789&state=StAtE0123456789xx (127.0.0.1)", "no")
        try:
            raise RuntimeError(f"token answer was {JWT}")
        except RuntimeError:
            hub_log.exception("login failed")
    finally:
        tornado_general.parent, tornado_general.propagate = saved
        hub_log.removeHandler(handler)
    out = stream.getvalue()
    assert "AbCdEf0123456789" not in out and "StAtE0123456789xx" not in out
    assert JWT not in out and "RuntimeError" in out
