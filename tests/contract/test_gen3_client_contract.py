"""The real gen3-client with the start-up hook's profile against real Fence and the stand-in: the same case on both, so the stand-in's answers to gen3-client are proven against Fence."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract.test_fence_contract import CALLBACK, HUB_SCOPES, Provider, _standin_provider
from tests.support.gen3client import CONFIG, files_holding, gen3_client, hook_profile, read_profile, run_hooks


@pytest.fixture(scope="module", params=["stand-in", "real"])
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    """As in test_fence_contract, with clients of its own (real Fence refuses a client name twice)."""
    if request.param == "stand-in":
        yield from _standin_provider()
        return
    bed = request.getfixturevalue("real_fence")
    client = bed.create_client("gen3-client-contract", [CALLBACK], HUB_SCOPES)
    yield Provider("real Fence", bed.url, client, client, lambda user: None, lambda user: None, bed.blacklisted)


def test_gen3_client_auth_with_the_hooks_profile_then_refused_after_revocation(provider: Provider, tmp_path: Path) -> None:
    tokens = provider.login("alice")
    minted = provider.call("POST", "/credentials/api/", tokens["access_token"], json={"scope": ["data", "user"]})
    assert minted.status_code == 200, minted.text[:300]
    key = minted.json()
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"key_id": key["key_id"], "api_key": key["api_key"]}))
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GEN3_API_KEY": str(creds),
        "GEN3_ENDPOINT": provider.url,
        "GEN3_CLIENT_RUNTIME_DIR": str(tmp_path / "run"),
        "GEN3_CLIENT_VERSION_CHECK": "false",
    }
    hooks = run_hooks(env, cwd=home)
    assert hooks.returncode == 0, hooks.stderr
    profile = hook_profile(hooks.stdout)

    auth = gen3_client(["auth", f"--profile={profile}"], env, home)

    assert auth.returncode == 0, auth.stderr
    assert "You have access to the following resource(s)" in auth.stderr and "/workspace" in auth.stderr, auth.stderr
    saved = read_profile(home, profile)
    assert saved["access_token"].count(".") == 2, "gen3-client traded the key for a token and saved it"
    assert (home / CONFIG).is_symlink() and files_holding(home, key["api_key"].rsplit(".", 1)[1]) == []

    # Revoked (what the spawner does at stop): the key cannot get a token any more.
    assert provider.call("DELETE", f"/credentials/api/{key['key_id']}", tokens["access_token"]).status_code == 204
    config = tmp_path / "run" / "gen3_client_config.ini"
    config.write_text(config.read_text().replace(saved["access_token"], "expired-token"))
    refused = gen3_client(["auth", f"--profile={profile}"], env, home)
    assert "You have access" not in refused.stderr
    assert "RequestNewAccessToken with error code 401" in refused.stderr + refused.stdout, refused.stderr
