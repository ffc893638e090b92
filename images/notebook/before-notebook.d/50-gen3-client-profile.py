#!/usr/bin/env python3
"""Start-up hook that gives gen3-client the workspace's profile from the mounted Fence API key, so `gen3-client` works without a manual `configure`.

docker-stacks' start.sh runs every executable in /usr/local/bin/before-notebook.d/ before the
notebook server starts; this one reads:

- ``GEN3_NO_COMMONS``: set by the spawner when no commons is connected (the embedded dev
  login); the hook prints it and writes nothing.
- ``GEN3_API_KEY``: path of the read-only credentials.json the spawner mounts
  (``{"key_id": ..., "api_key": ...}``, the format the Gen3 portal hands out). Unset or
  missing: nothing to do, exit 0 with one info line (e.g. a server started outside a commons).
- ``GEN3_ENDPOINT``: the commons URL, written as the profile's ``api_endpoint``. When unset,
  the issuer inside the API key is used instead (decoded locally, no network call).
- ``GEN3_PROFILE`` (optional): the profile name. Default: the commons' host name with dots
  replaced by hyphens, e.g. ``https://data.example.org`` -> ``data-example-org``.
- ``GEN3_CLIENT_RUNTIME_DIR`` (optional): a folder that dies with the server. Default:
  ``<temp dir>/gen3-client-<uid>``, which in a container is the container's own /tmp.

Where the key goes. gen3-client reads exactly one file, ``~/.gen3/gen3_client_config.ini``,
and the home folder is the user's persistent drive. A profile needs the API key itself, so
the file with the workspace's profile must not be on the drive, where the key would outlive
the server (and a failed revocation). The hook therefore writes the file into
``GEN3_CLIENT_RUNTIME_DIR`` (folder 0700, file 0600) and makes
``~/.gen3/gen3_client_config.ini`` a symlink to it; ``~/.gen3`` itself stays on the drive
(gen3-client keeps its logs there, which hold no tokens).

Other profiles. The user's own profiles persist in ``~/.gen3/my_profiles.ini`` on the drive,
which the hook only reads: at each start the session's file is that file, byte for byte
(comments included), plus the workspace's profile (a profile of the same name in it is
replaced). A regular ``gen3_client_config.ini`` found on the drive (written by an earlier
image or by ``gen3-client configure`` before the workspace) is moved there: everything but
the workspace's profile is appended to ``my_profiles.ini``, and the file, with the key it may
hold, is replaced by the symlink. Running the hook again while the server runs keeps the
session's file as it is, apart from the workspace's profile.

Once gen3-client rewrites the file. The profile's ``access_token`` starts as a placeholder
that Fence rejects with 401 (gen3-client refuses an empty one); on that 401 gen3-client
trades the API key for an access token and saves it by rewriting the *whole* session file
in its own format (``key = value``, comments dropped, mode kept). That rewrite goes through
the symlink, so it too stays off the drive, and ``my_profiles.ini`` is never touched by
gen3-client. The saved token is kept by a later run of the hook as long as the key stays the
same. Profiles added with ``gen3-client configure`` during a session live in the session's
file and end with the server: copy them into ``my_profiles.ini`` to keep them.

It never prints the key, not even when the key file is malformed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

CONFIG_DIR_NAME = ".gen3"
CONFIG_FILE_NAME = "gen3_client_config.ini"
OWN_PROFILES_NAME = "my_profiles.ini"
DIR_MODE = 0o700
FILE_MODE = 0o600

# Not a token: any value Fence cannot decode gets a 401, which is gen3-client's cue to trade
# the API key for a fresh access token (and to overwrite this value in the file).
ACCESS_TOKEN_PLACEHOLDER = "refresh-with-api-key"
USE_SHEPHERD = "false"
MIN_SHEPHERD_VERSION = ""

LOG_PREFIX = "gen3-client-profile:"

# Section names gen3-client accepts on its --profile flag and configparser/go-ini both read.
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_SECTION_HEADER = re.compile(r"^\s*\[(?P<name>[^\]\r\n]*)\]\s*$")
# Values are written unquoted on one line; anything else could end or corrupt the section.
_PLAIN_VALUE = re.compile(r"^[^\s;#\"'\\]+$")


class HookError(Exception):
    """A problem reported as one line; by construction its text never includes the key file's content."""


@dataclass(frozen=True)
class Profile:
    """The gen3-client profile this workspace owns."""

    name: str
    key_id: str
    api_key: str = field(repr=False)  # kept out of repr so a stray debug print cannot leak it
    api_endpoint: str


@dataclass(frozen=True)
class Outcome:
    """What a run did, for the one line the hook prints and for tests."""

    changed: bool
    message: str
    config_path: Path | None = None


def read_credentials(path: Path) -> tuple[str, str]:
    """Return (key_id, api_key) from a Gen3 credentials.json, raising HookError without quoting it."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise HookError(f"cannot read the API key file {path}: {err.strerror or type(err).__name__}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        # json's own messages are position-only, but say nothing at all about the content:
        # the next version of a decoder could quote it.
        raise HookError(
            f"the API key file {path} is not valid JSON; expected the credentials.json format "
            '{"key_id": ..., "api_key": ...}'
        ) from None
    if not isinstance(data, dict):
        raise HookError(f"the API key file {path} is not a JSON object with key_id and api_key")
    values = []
    for name in ("key_id", "api_key"):
        value = data.get(name)
        if not isinstance(value, str) or not _PLAIN_VALUE.match(value):
            raise HookError(f"the API key file {path} has no usable {name!r} (a non-empty string without spaces)")
        values.append(value)
    return values[0], values[1]


def endpoint_from_api_key(api_key: str) -> str:
    """Return scheme://host[:port] of the API key's issuer, decoded locally (the key is a JWT)."""
    try:
        payload = api_key.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        issuer = urlsplit(claims["iss"])
        if issuer.scheme not in ("http", "https") or not issuer.hostname:
            raise ValueError
        return f"{issuer.scheme}://{issuer.netloc}"
    except (IndexError, KeyError, TypeError, ValueError):
        raise HookError("GEN3_ENDPOINT is not set and the API key does not name its commons (no 'iss' claim)") from None


def normalise_endpoint(value: str) -> str:
    """Return the endpoint without a trailing slash (what `gen3-client configure` stores), or raise."""
    value = value.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or not _PLAIN_VALUE.match(value):
        raise HookError(f"GEN3_ENDPOINT {value!r} is not an http(s) URL like https://data.example.org")
    return value.rstrip("/")


def profile_name(env: Mapping[str, str], endpoint: str) -> str:
    """GEN3_PROFILE when set, else the endpoint's host name with dots turned into hyphens."""
    override = env.get("GEN3_PROFILE", "").strip()
    if override:
        if not _PROFILE_NAME.match(override):
            raise HookError(f"GEN3_PROFILE {override!r} is not a usable profile name (letters, digits, '.', '_', '-')")
        return override
    host = urlsplit(endpoint).hostname or ""
    # Hyphens rather than dots: go-ini reads dots in a section name as parent.child nesting.
    return host.lower().replace(".", "-")


def _split_blocks(lines: Sequence[str]) -> list[tuple[str | None, list[str]]]:
    """Split INI lines into (section name or None for the preamble, lines) blocks, header included."""
    blocks: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in lines:
        match = _SECTION_HEADER.match(line)
        if match:
            blocks.append((match.group("name").strip(), [line]))
        else:
            blocks[-1][1].append(line)
    return blocks


def _parse_values(block: Sequence[str]) -> dict[str, str]:
    """key=value pairs of one section, in either spelling gen3-client writes (`k=v`, `k = v`)."""
    values: dict[str, str] = {}
    for line in block[1:]:
        stripped = line.strip()
        if not stripped or stripped[0] in "#;" or "=" not in stripped:
            continue
        key, _, value = stripped.partition("=")
        values[key.strip().lower()] = value.strip()
    return values


def _is_blank(line: str) -> bool:
    return not line.strip()


def render_config(existing: str, profile: Profile) -> str:
    """Return `existing` with `profile`'s section written in; every other byte is left alone.

    Pure: no I/O, so the merge rules (replace in place, drop duplicates, keep a refreshed
    access token, append when absent) are testable on strings.
    """
    lines = existing.splitlines(keepends=True)
    blocks = _split_blocks(lines)
    ours = [i for i, (name, _) in enumerate(blocks) if name == profile.name]

    access_token = ACCESS_TOKEN_PLACEHOLDER
    if ours:
        old = _parse_values(blocks[ours[0]][1])
        same_key = (
            old.get("key_id") == profile.key_id
            and old.get("api_key") == profile.api_key
            and old.get("api_endpoint") == profile.api_endpoint
        )
        if same_key and old.get("access_token"):
            # gen3-client saved a real token for this very key: throwing it away would only
            # cost a round trip, but rewriting it would break idempotence.
            access_token = old["access_token"]

    section = [
        f"[{profile.name}]\n",
        f"key_id={profile.key_id}\n",
        f"api_key={profile.api_key}\n",
        f"access_token={access_token}\n",
        f"api_endpoint={profile.api_endpoint}\n",
        f"use_shepherd={USE_SHEPHERD}\n",
        f"min_shepherd_version={MIN_SHEPHERD_VERSION}\n",
    ]

    if not ours:
        prefix = existing
        if prefix and not prefix.endswith(("\n", "\r")):
            prefix += "\n"
        if prefix.strip() and not _is_blank(prefix.splitlines()[-1]):
            prefix += "\n"  # one blank line between profiles, as gen3-client writes them
        return prefix + "".join(section)

    out: list[str] = []
    for index, (_, block) in enumerate(blocks):
        if index == ours[0]:
            trailing: list[str] = []
            for line in reversed(block[1:]):
                if not _is_blank(line):
                    break
                trailing.insert(0, line)
            is_last = index == len(blocks) - 1
            if not trailing and not is_last:
                trailing = ["\n"]
            out.extend(section + trailing)
        elif index in ours:
            continue  # a duplicate of our section: configparser refuses files that have one
        else:
            out.extend(block)
    return "".join(out)


def _write_private(path: Path, content: str) -> None:
    """Replace `path` atomically with a 0600 file: never a moment with the key world-readable."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def runtime_dir(env: Mapping[str, str]) -> Path:
    """GEN3_CLIENT_RUNTIME_DIR, else a per-user folder in the temp dir (the container's own /tmp)."""
    value = env.get("GEN3_CLIENT_RUNTIME_DIR", "").strip()
    if value:
        return Path(value)
    return Path(tempfile.gettempdir()) / f"gen3-client-{os.getuid()}"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        path.chmod(DIR_MODE)  # it holds keys: tighten a folder made by hand


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return ""
    except UnicodeDecodeError:
        raise HookError(f"{path} is not UTF-8 text; move it aside and restart the server") from None


def _without_section(text: str, name: str) -> str:
    """`text` minus every section called `name` (the workspace's, with its key)."""
    return "".join("".join(block) for section, block in _split_blocks(text.splitlines(keepends=True)) if section != name)


def _move_drive_file_aside(config_path: Path, own_path: Path, profile_name: str) -> bool:
    """Append a regular config file's other profiles to my_profiles.ini and delete the file; True if there was one."""
    if config_path.is_symlink() or not config_path.exists():
        return False
    rest = _without_section(_read_text(config_path), profile_name)
    if rest.strip():
        own = _read_text(own_path)
        if own and not own.endswith("\n"):
            own += "\n"
        _write_private(own_path, own + ("\n" if own.strip() else "") + rest)
    config_path.unlink()
    return True


def _link(link: Path, target: Path) -> bool:
    """Make `link` a symlink to `target`, replacing whatever is there atomically; True if it changed."""
    if link.is_symlink() and os.readlink(link) == str(target):
        return False
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
    return True


def _drop_dead_link(home: Path) -> None:
    """Remove a link left by an earlier session whose file died with its server.

    Without it `gen3-client configure` would try to create the file at the dead target; with
    it gone, it writes a plain file on the drive (the user's own key, their choice), which
    the next start with a workspace key moves into my_profiles.ini.
    """
    link = home / CONFIG_DIR_NAME / CONFIG_FILE_NAME
    if link.is_symlink() and not link.exists():
        link.unlink()


def configure_profile(env: Mapping[str, str], home: Path) -> Outcome:
    """Write the workspace's profile into the session's gen3-client file and link it from home/.gen3."""
    no_commons = env.get("GEN3_NO_COMMONS", "").strip()
    if no_commons:
        # The spawner's word that no commons is connected (GEN3_API_KEY then names its note).
        _drop_dead_link(home)
        return Outcome(False, no_commons)
    key_path_value = env.get("GEN3_API_KEY", "").strip()
    if not key_path_value:
        _drop_dead_link(home)
        return Outcome(False, "GEN3_API_KEY is not set; no gen3-client profile written")
    key_path = Path(key_path_value)
    if not key_path.exists():
        _drop_dead_link(home)
        return Outcome(False, f"GEN3_API_KEY points to {key_path}, which does not exist; no gen3-client profile written")

    key_id, api_key = read_credentials(key_path)
    endpoint_value = env.get("GEN3_ENDPOINT", "").strip()
    endpoint = normalise_endpoint(endpoint_value) if endpoint_value else endpoint_from_api_key(api_key)
    profile = Profile(profile_name(env, endpoint), key_id, api_key, endpoint)

    config_dir = home / CONFIG_DIR_NAME
    config_path = config_dir / CONFIG_FILE_NAME
    own_path = config_dir / OWN_PROFILES_NAME
    session_dir = runtime_dir(env)
    session_path = session_dir / CONFIG_FILE_NAME
    if session_dir.resolve() == config_dir.resolve() or home.resolve() in session_dir.resolve().parents:
        raise HookError(f"GEN3_CLIENT_RUNTIME_DIR {session_dir} is inside the home folder (the persistent drive); the key must not go there")
    try:
        _private_dir(config_dir)
        _private_dir(session_dir)
        moved = _move_drive_file_aside(config_path, own_path, profile.name)
        # The session's file, once it exists, is the base: it holds what gen3-client saved
        # and what the user configured since the server started.
        existing = _read_text(session_path) if session_path.exists() and not moved else _read_text(own_path)
        content = render_config(existing, profile)
        changed = moved or not session_path.exists() or content != _read_text(session_path)
        if changed:
            _write_private(session_path, content)
        elif session_path.stat().st_mode & 0o777 != FILE_MODE:
            session_path.chmod(FILE_MODE)
            changed = True
        changed = _link(config_path, session_path) or changed
    except OSError as err:
        raise HookError(f"cannot write the gen3-client profile: {err.strerror or type(err).__name__}") from None

    verb = "written" if changed else "already up to date"
    return Outcome(
        changed,
        f"gen3-client profile {profile.name!r} for {endpoint} {verb} in {session_path}, linked from {config_path} "
        f"(use: gen3-client <command> --profile={profile.name})",
        session_path,
    )


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, home: Path | None = None) -> int:
    """Run the hook; 0 when the profile is written or there is nothing to do, 1 on an error."""
    del argv  # no options: start.sh passes none
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or os.path.expanduser("~")) if home is None else home
    try:
        outcome = configure_profile(env, home)
    except HookError as err:
        print(f"{LOG_PREFIX} error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - a traceback could show the key among the locals
        print(f"{LOG_PREFIX} error: unexpected {type(err).__name__}; no gen3-client profile written", file=sys.stderr)
        return 1
    print(f"{LOG_PREFIX} {outcome.message}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
