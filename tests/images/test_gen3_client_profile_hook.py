"""Tests of the notebook start-up hook that turns the mounted Fence API key into a gen3-client profile."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.images.helpers import COMMONS, HOOK, load_module, make_api_key, write_credentials

hook = load_module(HOOK, "gen3_client_profile_hook")

KEY_ID = "8c1f3b6e-0d5a-4b8e-9f21-3a7c5e2d9b10"
SIGNATURE = "SIGxSECRETxDO-NOT-LEAK-7f3a9c"
API_KEY = make_api_key(signature=SIGNATURE)
PROFILE = "commons-example-org"
KEY_ORDER = ["key_id", "api_key", "access_token", "api_endpoint", "use_shepherd", "min_shepherd_version"]

# Other profiles as gen3-client's go-ini writes them (aligned " = "), with a comment, to
# check the hook leaves foreign bytes alone.
OTHER_PROFILES = (
    "; written by gen3-client\n"
    "[other-commons]\n"
    "key_id               = 11111111-2222-3333-4444-555555555555\n"
    "api_key              = other.api.key\n"
    "access_token         = other.access.token\n"
    "api_endpoint         = https://other.example.net\n"
    "use_shepherd         = true\n"
    "min_shepherd_version = 2.0.0\n"
    "\n"
    "[training]\n"
    "key_id=abc\n"
    "api_key=def\n"
    "access_token=ghi\n"
    "api_endpoint=https://training.example.com\n"
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    # Outside HOME, read-only, like the Secret the spawner mounts at /etc/gen3.
    path = write_credentials(tmp_path / "credentials.json", KEY_ID, API_KEY)
    path.chmod(0o444)
    return path


RunHook = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_hook(home: Path, key_file: Path, tmp_path: Path) -> RunHook:
    """Run the hook as start.sh does: a separate process, with only the env the pod has."""

    def run(**overrides: str | None) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "GEN3_API_KEY": str(key_file),
            "GEN3_ENDPOINT": COMMONS + "/",
            "GEN3_CLIENT_RUNTIME_DIR": str(tmp_path / "runtime"),
        }
        for name, value in overrides.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return subprocess.run(
            [sys.executable, str(HOOK)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )

    return run


def config_path(home: Path) -> Path:
    return home / ".gen3" / "gen3_client_config.ini"


def own_path(home: Path) -> Path:
    return home / ".gen3" / "my_profiles.ini"


def files_holding(folder: Path, secret: str) -> list[Path]:
    """Regular files under `folder` (symlinks not followed) that contain `secret`."""
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()]


def read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(path.read_text(encoding="utf-8"))
    return parser


def assert_no_secret(result: subprocess.CompletedProcess[str]) -> None:
    for stream in (result.stdout, result.stderr):
        assert API_KEY not in stream
        assert SIGNATURE not in stream  # a partial leak counts too
        assert "Traceback" not in stream


def test_writes_the_profile_named_after_the_commons(run_hook: RunHook, home: Path) -> None:
    result = run_hook()

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 1
    assert f"--profile={PROFILE}" in result.stdout
    ini = read_ini(config_path(home))
    assert ini.sections() == [PROFILE]
    section = ini[PROFILE]
    assert list(section) == KEY_ORDER
    assert section["key_id"] == KEY_ID
    assert section["api_key"] == API_KEY
    assert section["api_endpoint"] == COMMONS  # trailing slash dropped, as gen3-client configure does
    assert section["access_token"] == hook.ACCESS_TOKEN_PLACEHOLDER
    assert section["use_shepherd"] == "false"
    assert section["min_shepherd_version"] == ""
    assert_no_secret(result)


def test_lines_are_plain_key_equals_value(run_hook: RunHook, home: Path) -> None:
    # Older gen3-client releases parse each line with ^key=(\S*) in a fixed order.
    assert run_hook().returncode == 0
    lines = config_path(home).read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"[{PROFILE}]"
    assert [line.split("=", 1)[0] for line in lines[1:7]] == KEY_ORDER
    assert all(" " not in line for line in lines)


def test_gen3_profile_overrides_the_name(run_hook: RunHook, home: Path) -> None:
    result = run_hook(GEN3_PROFILE="mycommons")

    assert result.returncode == 0, result.stderr
    assert read_ini(config_path(home)).sections() == ["mycommons"]


def test_endpoint_comes_from_the_key_when_gen3_endpoint_is_unset(run_hook: RunHook, home: Path) -> None:
    result = run_hook(GEN3_ENDPOINT=None)

    assert result.returncode == 0, result.stderr
    assert read_ini(config_path(home))[PROFILE]["api_endpoint"] == COMMONS


def test_keeps_other_profiles_byte_for_byte(run_hook: RunHook, home: Path) -> None:
    config_path(home).parent.mkdir(mode=0o700)
    config_path(home).write_text(OTHER_PROFILES, encoding="utf-8")

    assert run_hook().returncode == 0

    text = config_path(home).read_text(encoding="utf-8")
    assert text.startswith(OTHER_PROFILES)
    ini = read_ini(config_path(home))
    assert ini.sections() == ["other-commons", "training", PROFILE]
    assert ini["other-commons"]["access_token"] == "other.access.token"
    assert ini[PROFILE]["api_key"] == API_KEY


def test_replaces_a_stale_profile_in_place(run_hook: RunHook, home: Path) -> None:
    # A profile of the workspace's name in the user's own file is replaced where it stands.
    before, after = OTHER_PROFILES.split("[training]")
    stale = f"[{PROFILE}]\nkey_id=old\napi_key=old.key.value\naccess_token=old.token\napi_endpoint={COMMONS}\n\n"
    own_path(home).parent.mkdir(mode=0o700)
    own_path(home).write_text(before + stale + "[training]" + after, encoding="utf-8")

    assert run_hook().returncode == 0

    text = config_path(home).read_text(encoding="utf-8")
    assert text.startswith(before + f"[{PROFILE}]\n")
    assert text.endswith("\n\n[training]" + after)
    ini = read_ini(config_path(home))
    assert ini.sections() == ["other-commons", PROFILE, "training"]
    assert ini[PROFILE]["key_id"] == KEY_ID
    assert ini[PROFILE]["access_token"] == hook.ACCESS_TOKEN_PLACEHOLDER  # the old key's token is dropped
    assert "old" not in text
    assert own_path(home).read_text(encoding="utf-8") == before + stale + "[training]" + after, "the user's file is only read"


def test_second_run_changes_nothing(run_hook: RunHook, home: Path) -> None:
    config_path(home).parent.mkdir(mode=0o700)
    config_path(home).write_text(OTHER_PROFILES, encoding="utf-8")
    assert run_hook().returncode == 0
    first = config_path(home).read_bytes()
    first_stat = config_path(home).stat()

    second = run_hook()

    assert second.returncode == 0, second.stderr
    assert config_path(home).read_bytes() == first
    assert config_path(home).stat().st_mtime_ns == first_stat.st_mtime_ns  # not even rewritten
    assert config_path(home).stat().st_ino == first_stat.st_ino
    assert "already up to date" in second.stdout


def test_keeps_the_token_gen3_client_saved_for_the_same_key(run_hook: RunHook, home: Path, tmp_path: Path) -> None:
    assert run_hook().returncode == 0
    # What gen3-client does after trading the key for an access token: go-ini rewrites the file.
    ini = read_ini(config_path(home))
    ini[PROFILE]["access_token"] = "real.access.token"
    with config_path(home).open("w", encoding="utf-8") as handle:
        ini.write(handle)

    assert run_hook().returncode == 0
    assert read_ini(config_path(home))[PROFILE]["access_token"] == "real.access.token"

    # The next server start mints a new key: the old key's token must go.
    new_key = write_credentials(tmp_path / "new-credentials.json", "new-key-id", make_api_key(signature="NEWSIG"))
    assert run_hook(GEN3_API_KEY=str(new_key)).returncode == 0
    section = read_ini(config_path(home))[PROFILE]
    assert section["key_id"] == "new-key-id"
    assert section["access_token"] == hook.ACCESS_TOKEN_PLACEHOLDER


def test_file_is_0600_and_directory_0700(run_hook: RunHook, home: Path) -> None:
    assert run_hook().returncode == 0

    assert stat.S_IMODE(config_path(home).stat().st_mode) == 0o600
    assert stat.S_IMODE(config_path(home).parent.stat().st_mode) == 0o700


def test_tightens_modes_left_open_by_hand(run_hook: RunHook, home: Path) -> None:
    config_path(home).parent.mkdir()
    config_path(home).parent.chmod(0o755)
    config_path(home).write_text(OTHER_PROFILES, encoding="utf-8")
    config_path(home).chmod(0o644)

    assert run_hook().returncode == 0

    assert stat.S_IMODE(config_path(home).stat().st_mode) == 0o600
    assert stat.S_IMODE(config_path(home).parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("key_path", [None, ""], ids=["unset", "empty"])
def test_without_gen3_api_key_it_does_nothing(run_hook: RunHook, home: Path, key_path: str | None) -> None:
    result = run_hook(GEN3_API_KEY=key_path)

    assert result.returncode == 0
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 1
    assert "GEN3_API_KEY is not set" in result.stdout
    assert not (home / ".gen3").exists()


def test_with_no_commons_connected_it_says_so_and_writes_nothing(run_hook: RunHook, home: Path) -> None:
    from gen3workspace.spawner.common import NO_COMMONS_MESSAGE, NO_COMMONS_NOTE

    # What the spawner sets for a server with no commons (spawner/common.py gen3_env).
    result = run_hook(GEN3_NO_COMMONS=NO_COMMONS_MESSAGE, GEN3_API_KEY=str(NO_COMMONS_NOTE), GEN3_ENDPOINT=None)

    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.strip() == f"gen3-client-profile: {NO_COMMONS_MESSAGE}"
    assert "No Gen3 commons is connected" in result.stdout and "--commons-url" in result.stdout
    assert not (home / ".gen3").exists()


def test_with_a_missing_key_file_it_does_nothing(run_hook: RunHook, home: Path, tmp_path: Path) -> None:
    result = run_hook(GEN3_API_KEY=str(tmp_path / "nowhere" / "credentials.json"))

    assert result.returncode == 0
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 1
    assert "does not exist" in result.stdout
    assert not (home / ".gen3").exists()


MALFORMED_KEY_FILES: dict[str, bytes] = {
    "truncated-json": ('{"key_id": "k", "api_key": "' + API_KEY).encode(),
    "not-an-object": json.dumps([KEY_ID, API_KEY]).encode(),
    "no-key-id": json.dumps({"api_key": API_KEY}).encode(),
    "api-key-with-space": json.dumps({"key_id": KEY_ID, "api_key": API_KEY + " trailing"}).encode(),
    "api-key-with-newline": json.dumps({"key_id": KEY_ID, "api_key": API_KEY + "\n[evil]"}).encode(),
    "api-key-not-a-string": json.dumps({"key_id": KEY_ID, "api_key": {"value": API_KEY}}).encode(),
    "not-utf8": b"\xff\xfe" + API_KEY.encode(),
}


@pytest.mark.parametrize("content", MALFORMED_KEY_FILES.values(), ids=MALFORMED_KEY_FILES.keys())
def test_malformed_key_file_fails_without_printing_the_key(
    run_hook: RunHook, home: Path, tmp_path: Path, content: bytes
) -> None:
    bad = tmp_path / "bad-credentials.json"
    bad.write_bytes(content)

    result = run_hook(GEN3_API_KEY=str(bad))

    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("gen3-client-profile: error:")
    assert str(bad) in result.stderr  # says which file, so the operator can look
    assert_no_secret(result)
    assert not config_path(home).exists()


@pytest.mark.parametrize(
    "overrides",
    [
        {"GEN3_ENDPOINT": "ftp://commons.example.org"},
        {"GEN3_ENDPOINT": "not a url"},
        {"GEN3_PROFILE": "bad name]"},
    ],
    ids=["endpoint-scheme", "endpoint-garbage", "profile-name"],
)
def test_bad_settings_fail_without_printing_the_key(run_hook: RunHook, home: Path, overrides: dict[str, str]) -> None:
    result = run_hook(**overrides)

    assert result.returncode == 1
    assert result.stderr.startswith("gen3-client-profile: error:")
    assert_no_secret(result)
    assert not config_path(home).exists()


def test_no_endpoint_anywhere_fails_without_printing_the_key(run_hook: RunHook, tmp_path: Path) -> None:
    keyless = write_credentials(tmp_path / "opaque.json", KEY_ID, "opaque-" + SIGNATURE)  # not a JWT: no issuer

    result = run_hook(GEN3_API_KEY=str(keyless), GEN3_ENDPOINT=None)

    assert result.returncode == 1
    assert "GEN3_ENDPOINT is not set" in result.stderr
    assert SIGNATURE not in result.stderr + result.stdout


def test_an_existing_file_that_is_not_text_is_left_alone(run_hook: RunHook, home: Path) -> None:
    config_path(home).parent.mkdir(mode=0o700)
    original = b"[other]\napi_key=\xff\xfeOTHER-SECRET\n"
    config_path(home).write_bytes(original)

    result = run_hook()

    assert result.returncode == 1
    assert "OTHER-SECRET" not in result.stderr + result.stdout
    assert_no_secret(result)
    assert config_path(home).read_bytes() == original


# --- the pure merge function, on strings -----------------------------------------------------


def profile() -> object:
    return hook.Profile(PROFILE, KEY_ID, API_KEY, COMMONS)


def test_render_appends_after_a_blank_line() -> None:
    existing = "[a]\nkey_id=1\n"

    text = hook.render_config(existing, profile())

    assert text.startswith("[a]\nkey_id=1\n\n[" + PROFILE + "]\n")


def test_render_adds_a_missing_final_newline_before_appending() -> None:
    text = hook.render_config("[a]\nkey_id=1", profile())

    assert text.startswith("[a]\nkey_id=1\n\n[")
    assert read_ini_string(text).sections() == ["a", PROFILE]


def test_render_drops_duplicates_of_its_own_section() -> None:
    existing = f"[{PROFILE}]\nkey_id=x\n\n[a]\nkey_id=1\n\n[{PROFILE}]\nkey_id=y\n"

    text = hook.render_config(existing, profile())

    assert read_ini_string(text).sections() == [PROFILE, "a"]
    assert text.count(f"[{PROFILE}]") == 1


def test_render_is_a_fixed_point() -> None:
    once = hook.render_config(OTHER_PROFILES, profile())

    assert hook.render_config(once, profile()) == once


def test_profile_repr_hides_the_key() -> None:
    assert API_KEY not in repr(profile())


def read_ini_string(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_configure_profile_is_callable_with_env_and_home(home: Path, key_file: Path, tmp_path: Path) -> None:
    env = {"GEN3_API_KEY": str(key_file), "GEN3_ENDPOINT": COMMONS, "GEN3_CLIENT_RUNTIME_DIR": str(tmp_path / "run")}
    outcome = hook.configure_profile(env, home)

    assert outcome.changed
    assert outcome.config_path == tmp_path / "run" / "gen3_client_config.ini"
    assert config_path(home).resolve() == outcome.config_path
    assert read_ini(config_path(home))[PROFILE]["key_id"] == KEY_ID


# --- the key stays off the persistent drive (issue 15.5) -------------------------------------------


def test_the_key_is_not_written_to_the_drive(run_hook: RunHook, home: Path, tmp_path: Path) -> None:
    assert run_hook().returncode == 0

    assert config_path(home).is_symlink()
    assert config_path(home).resolve() == tmp_path / "runtime" / "gen3_client_config.ini"
    assert files_holding(home, SIGNATURE) == []
    assert files_holding(tmp_path / "runtime", SIGNATURE) == [tmp_path / "runtime" / "gen3_client_config.ini"]
    assert stat.S_IMODE((tmp_path / "runtime").stat().st_mode) == 0o700


def test_a_key_left_on_the_drive_by_an_earlier_image_is_removed_and_other_profiles_kept(run_hook: RunHook, home: Path) -> None:
    legacy = OTHER_PROFILES + f"\n[{PROFILE}]\nkey_id=old\napi_key=old.{SIGNATURE}\naccess_token=x\napi_endpoint={COMMONS}\n"
    config_path(home).parent.mkdir(mode=0o700)
    config_path(home).write_text(legacy, encoding="utf-8")

    assert run_hook().returncode == 0

    assert files_holding(home, SIGNATURE) == []
    assert own_path(home).read_text(encoding="utf-8") == OTHER_PROFILES + "\n"
    assert stat.S_IMODE(own_path(home).stat().st_mode) == 0o600
    assert read_ini(config_path(home)).sections() == ["other-commons", "training", PROFILE]


def test_a_new_session_starts_from_the_users_own_profiles(run_hook: RunHook, home: Path, tmp_path: Path) -> None:
    own_path(home).parent.mkdir(mode=0o700)
    own_path(home).write_text(OTHER_PROFILES, encoding="utf-8")
    assert run_hook().returncode == 0
    # The server stops: the runtime folder goes with it; the drive keeps the dangling link.
    for child in (tmp_path / "runtime").iterdir():
        child.unlink()
    (tmp_path / "runtime").rmdir()

    assert run_hook().returncode == 0

    assert config_path(home).read_text(encoding="utf-8").startswith(OTHER_PROFILES)
    assert read_ini(config_path(home))[PROFILE]["api_key"] == API_KEY


def test_a_runtime_dir_on_the_drive_is_refused(run_hook: RunHook, home: Path) -> None:
    result = run_hook(GEN3_CLIENT_RUNTIME_DIR=str(home / "tmp"))

    assert result.returncode == 1
    assert "inside the home folder" in result.stderr
    assert files_holding(home, SIGNATURE) == []
    assert_no_secret(result)


def test_without_a_key_a_link_left_by_a_dead_session_is_removed(run_hook: RunHook, home: Path, tmp_path: Path) -> None:
    assert run_hook().returncode == 0
    shutil.rmtree(tmp_path / "runtime")  # the server stopped

    assert run_hook(GEN3_API_KEY=None).returncode == 0

    assert not config_path(home).is_symlink() and not config_path(home).exists()
