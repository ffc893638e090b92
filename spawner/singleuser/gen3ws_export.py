"""Export to Workspace without FUSE: a Jupyter Server extension that copies the user's newest manifestservice manifests into the drive, each file checked against indexd's size and md5.

The portal's "Export to Workspace" button POSTs a manifest (a JSON list of entries with
``object_id`` and usually ``file_name``) to manifestservice and opens the workspace. Hatchery's
answer was a privileged gen3-fuse sidecar; here the user's own server does it with the user's
own credentials (the Fence API key the spawner mounted, ``GEN3_API_KEY``): every
``GEN3_EXPORT_INTERVAL_SECONDS`` it lists ``<manifestservice>/``, and for each of the newest
``GEN3_EXPORT_KEEP`` manifests it materialises the files under
``<root>/<commons host>/<manifest name>/<file name>``. A file is fetched with a signed URL from
Fence into ``.partial/`` inside that folder (hidden, same file system), its size and md5 are
compared with indexd's record, and only then is it renamed to its final name: a name in the
folder is always a complete, verified file. ``_EXPORT_STATUS.md`` in each folder (and one in the
root) says how far it got and why a file is missing, in words; ``<base_url>gen3-export/status``
returns the same as JSON.

The module needs only the standard library, requests (urllib3's Retry does the retrying) and,
for the extension part, jupyter_server; the notebook image copies it next to
jupyter_server_config.py, which puts that folder on sys.path and enables it. See
docs/architecture.md ("Export to Workspace") for why it fetches in the background rather than on
first open, and docs/operator-guide.md for the settings.

Environment (read once when the server starts):

- ``GEN3_ENDPOINT``, ``GEN3_API_KEY``: the commons and the key file (set by the spawner). Without
  both the extension stays off and writes nothing.
- ``GEN3_EXPORT``: ``0``/``false``/``off`` turns it off.
- ``GEN3_EXPORT_DIR``: the data folder (default ``data`` under the server's root folder).
- ``GEN3_EXPORT_KEEP``: how many of the newest manifests are kept (default 5).
- ``GEN3_EXPORT_INTERVAL_SECONDS``: seconds between two looks at manifestservice (default 5).
- ``GEN3_EXPORT_PARALLEL``: files fetched at the same time (default 4).
- ``GEN3_EXPORT_MAX_MANIFEST_BYTES``, ``GEN3_EXPORT_MAX_ENTRIES``: manifests larger than this are
  refused with a message (defaults 64 MiB, 100000 entries).
- ``GEN3_MANIFEST_SERVICE_URL``, ``GEN3_INDEXD_URL``, ``GEN3_FENCE_URL``: where the services are
  (defaults ``<endpoint>/manifests``, ``<endpoint>/index``, ``<endpoint>/user``, as Gen3's revproxy
  routes them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

log = logging.getLogger("gen3ws_export")

STATUS_NAME = "_EXPORT_STATUS.md"
STATE_NAME = ".gen3-export.json"
PARTIAL_DIR = ".partial"
RESERVED_NAMES = {STATUS_NAME, STATE_NAME, PARTIAL_DIR}
CHUNK = 1024 * 1024
# A name longer than this (in UTF-8 bytes) is cut: Linux refuses components over 255 bytes,
# and the temporary name adds a suffix.
MAX_NAME_BYTES = 200
INDEXD_BULK = 200
# Writing the status of a 1,000-file manifest after every file would rewrite it 1,000 times.
STATUS_EVERY_SECONDS = 1.0
_OFF = {"0", "false", "no", "off"}
# What a GUID may look like in a URL path: indexd's dids (uuid, prefix/uuid, dg.XXXX/uuid).
# Anything else (.., ?, #, spaces) would reach other Fence routes with the user's token.
_GUID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}$")


class ExportError(Exception):
    """A problem with one file or manifest, worded for the user; never carries a token or a signed URL.

    `again`: the next check tries once more (a service not answering, a broken connection); a
    refusal or a checksum mismatch would only fail the same way, so it waits for a restart.
    """

    def __init__(self, message: str, again: bool = False):
        super().__init__(message)
        self.again = again


# --- settings ---------------------------------------------------------------------------


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        log.warning("ignoring %s=%r: not a whole number >= %s", name, value, minimum)
        return default
    return number


@dataclass
class Settings:
    """Where the services are, where the files go and how much to do at once."""

    endpoint: str
    api_key_file: str
    root: Path
    manifest_url: str
    indexd_url: str
    fence_url: str
    keep: int = 5
    interval: float = 5.0
    parallel: int = 4
    max_manifest_bytes: int = 64 * 1024 * 1024
    max_entries: int = 100_000
    enabled: bool = True
    why_off: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str], root_dir: str | Path) -> "Settings":
        endpoint = env.get("GEN3_ENDPOINT", "").strip().rstrip("/")
        key = env.get("GEN3_API_KEY", "").strip()
        root_value = env.get("GEN3_EXPORT_DIR", "").strip()
        root = Path(root_value).expanduser() if root_value else Path(root_dir) / "data"
        if not root.is_absolute():
            root = Path(root_dir) / root
        settings = cls(
            endpoint=endpoint,
            api_key_file=key,
            root=root,
            manifest_url=(env.get("GEN3_MANIFEST_SERVICE_URL", "").strip() or f"{endpoint}/manifests").rstrip("/"),
            indexd_url=(env.get("GEN3_INDEXD_URL", "").strip() or f"{endpoint}/index").rstrip("/"),
            fence_url=(env.get("GEN3_FENCE_URL", "").strip() or f"{endpoint}/user").rstrip("/"),
            keep=_int(env, "GEN3_EXPORT_KEEP", 5, 1),
            interval=float(_int(env, "GEN3_EXPORT_INTERVAL_SECONDS", 5, 1)),
            parallel=_int(env, "GEN3_EXPORT_PARALLEL", 4, 1),
            max_manifest_bytes=_int(env, "GEN3_EXPORT_MAX_MANIFEST_BYTES", 64 * 1024 * 1024, 1),
            max_entries=_int(env, "GEN3_EXPORT_MAX_ENTRIES", 100_000, 1),
        )
        if env.get("GEN3_EXPORT", "").strip().lower() in _OFF:
            settings.enabled, settings.why_off = False, "GEN3_EXPORT turns it off"
        elif not endpoint or urlsplit(endpoint).scheme not in ("http", "https"):
            settings.enabled, settings.why_off = False, "GEN3_ENDPOINT is not set"
        elif not key:
            settings.enabled, settings.why_off = False, "GEN3_API_KEY is not set (no Gen3 credentials in this workspace)"
        return settings

    @property
    def commons_folder(self) -> Path:
        netloc = urlsplit(self.endpoint).netloc or "commons"
        return self.root / safe_file_name(netloc.replace(":", "_"), "commons")


# --- names ------------------------------------------------------------------------------


def safe_file_name(name: str, fallback: str) -> str:
    """One path component for `name`: no '/', '\\', control characters, leading dot or reserved name; `fallback` if nothing is left."""
    name = unicodedata.normalize("NFC", name)
    out = "".join("_" if c in "/\\" or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in name).strip()
    # A leading dot would hide the file in JupyterLab ('..' and '.' included).
    if out.startswith("."):
        out = "_" + out[1:]
    while len(out.encode("utf-8")) > MAX_NAME_BYTES:
        stem, dot, ext = out.rpartition(".")
        if dot and 0 < len(ext) <= 16 and len(stem) > 1:
            out = stem[:-1] + "." + ext
        else:
            out = out[:-1]
    if not out or out in RESERVED_NAMES:
        out = safe_file_name(fallback, "file") if fallback != name else "file"
        if out in RESERVED_NAMES:
            out = "_" + out
    return out


def shown(text: str, limit: int = 120) -> str:
    """`text` for a message: control characters as escapes, cut to `limit`."""
    out = "".join(c if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def md_escape(text: str) -> str:
    """`text` inside a Markdown table cell: no markup, links or HTML of a file name gets rendered."""
    # Only what can start markup inside a table cell; '_' inside a word never does, and
    # '(' only matters after an (escaped) ']'. The file stays readable in the text editor.
    text = re.sub(r"([\\`*\[\]<>|~&])", r"\\\1", shown(text, 200))
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)


def numbered(name: str, n: int) -> str:
    """'a.txt' -> 'a (2).txt'."""
    stem, dot, ext = name.rpartition(".")
    if dot and stem:
        return f"{stem} ({n}).{ext}"
    return f"{name} ({n})"


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


# --- HTTP -------------------------------------------------------------------------------


def http_session(parallel: int) -> requests.Session:
    """One pooled session; urllib3 retries refused connections and 5xx answers with backoff."""
    retry = Retry(
        total=3,
        connect=3,
        read=2,
        status=3,
        backoff_factor=0.5,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "POST"}),  # every POST here is a read (token, bulk lookup)
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=8, pool_maxsize=parallel + 4)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _answer_words(resp: requests.Response) -> str:
    """What a refusal said, without echoing an HTML page: a JSON message or S3's <Message>, else nothing."""
    kind = resp.headers.get("Content-Type", "")
    text = resp.text[:4000] if resp.content is not None else ""
    if "json" in kind:
        try:
            data = resp.json()
        except ValueError:
            return ""
        if isinstance(data, dict):
            for key in ("message", "error", "detail"):
                if isinstance(data.get(key), str):
                    return shown(data[key], 200)
        return ""
    match = re.search(r"<Message>([^<]{1,300})</Message>", text)
    return shown(match.group(1), 200) if match else ""


class Credentials:
    """The user's access token, exchanged from the workspace's Fence API key and renewed before it expires."""

    def __init__(self, settings: Settings, session: requests.Session):
        self.settings = settings
        self.session = session
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if self._token and time.time() < self._expires - 300:
                return self._token
            try:
                key = json.loads(Path(self.settings.api_key_file).read_text())["api_key"]
            except (OSError, ValueError, KeyError, TypeError):
                raise ExportError(f"the workspace's Gen3 API key file {self.settings.api_key_file} cannot be read; restart the server from the hub") from None
            try:
                resp = self.session.post(f"{self.settings.fence_url}/credentials/api/access_token", json={"api_key": key}, timeout=(10, 30))
            except requests.RequestException:
                raise ExportError("Fence (the commons' login service) is not answering, so no file can be fetched; trying again shortly", again=True) from None
            if resp.status_code != 200:
                raise ExportError(f"Fence refused the workspace's API key (HTTP {resp.status_code}); restart the server from the hub to get a new one")
            try:
                token = resp.json()["access_token"]
                payload = token.split(".")[1]
                claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
                self._expires = float(claims.get("exp") or time.time() + 600)
            except (ValueError, KeyError, IndexError, TypeError):
                raise ExportError("Fence answered the token request with something that is not a token") from None
            self._token = token
            return token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}", "Accept": "application/json"}


# --- one manifest -----------------------------------------------------------------------


@dataclass
class Entry:
    """One file of a manifest, with where it goes and how it is doing."""

    index: int
    guid: str
    name: str
    wanted_name: str
    size: int | None = None
    md5: str | None = None
    state: str = "waiting"  # waiting, fetching, done, failed
    again: bool = True  # a failed entry is queued again at the next check
    message: str = ""
    note: str = ""
    done_bytes: int = 0


@dataclass
class Manifest:
    """A manifest of the newest N and its folder."""

    filename: str
    folder: Path
    last_modified: str = ""
    entries: list[Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    loaded: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    status_written: float = 0.0
    state_dirty: bool = False

    def counts(self) -> dict[str, int]:
        out = {"waiting": 0, "fetching": 0, "done": 0, "failed": 0}
        for entry in self.entries:
            out[entry.state] += 1
        return out


def parse_manifest(raw: bytes, max_entries: int) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """The usable entries of a manifest (index, entry) and a message for each unusable one; ExportError when it is not a manifest."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        where = f" (at character {e.pos})" if isinstance(e, json.JSONDecodeError) else ""
        raise ExportError(f"the manifest is not valid JSON{where}; nothing was fetched from it") from None
    if not isinstance(data, list):
        raise ExportError("the manifest is not a JSON list of files (the portal's format: [{\"object_id\": ..., \"file_name\": ...}]); nothing was fetched from it")
    if len(data) > max_entries:
        raise ExportError(f"the manifest lists {len(data)} files, more than this workspace takes from one manifest ({max_entries}); nothing was fetched from it. Export fewer files at a time")
    usable: list[tuple[int, dict[str, Any]]] = []
    problems: list[str] = []
    for i, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            problems.append(f"entry {i} is not an object; skipped")
            continue
        guid = item.get("object_id")
        if not isinstance(guid, str) or not guid.strip():
            label = item.get("file_name")
            named = f" ({shown(label, 80)})" if isinstance(label, str) else ""
            problems.append(f"entry {i}{named} has no object_id, so there is nothing to fetch; skipped")
            continue
        if not _GUID.match(guid.strip()) or ".." in guid:
            problems.append(f"entry {i}: object_id {shown(guid, 80)!r} is not a GUID; skipped")
            continue
        usable.append((i, item))
    return usable, problems


class ExportSync:
    """Polls manifestservice and keeps the newest manifests' files in the data folder, verified."""

    def __init__(self, settings: Settings, session: requests.Session | None = None, storage_session: requests.Session | None = None):
        self.settings = settings
        self.session = session or http_session(settings.parallel)
        # The bucket gets its own session: no Gen3 token is ever sent to it.
        self.storage = storage_session or http_session(settings.parallel)
        self.credentials = Credentials(settings, self.session)
        self.manifests: dict[str, Manifest] = {}
        self.current: list[str] = []
        self.problem = ""
        self._absent = False
        self.last_check = 0.0
        self.checks = 0
        self._queue: "queue.Queue[tuple[Manifest, Entry]]" = queue.Queue()
        self._queued: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._poll_lock = threading.Lock()

    # --- life cycle ---

    def start(self) -> "ExportSync":
        """Start the workers and the poller as daemon threads: a stopping server never waits for a download."""
        self.start_workers()
        t = threading.Thread(target=self._poll_forever, name="gen3-export-poll", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def start_workers(self) -> None:
        """The `parallel` threads that fetch files: the bound on concurrent downloads."""
        for n in range(self.settings.parallel):
            t = threading.Thread(target=self._work, name=f"gen3-export-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the poller must outlive any one bad answer
                log.exception("gen3 export: a check of the manifests failed")
            self._stop.wait(self.settings.interval)

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is queued or being fetched (for tests and the benchmark)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                if not self._queued:
                    return True
            time.sleep(0.05)
        return False

    # --- one look at manifestservice ---

    def poll(self) -> None:
        """List the manifests, load the newest N, queue their missing files, retire the older ones."""
        with self._poll_lock:
            self.checks += 1
            self.last_check = time.time()
            try:
                newest = self._list_manifests()
            except ExportError as e:
                self.problem, self._absent = str(e), bool(getattr(e, "absent", False))
                self._write_root_status()
                return
            self.problem, self._absent = "", False
            names = [m["filename"] for m in newest]
            for item in newest:
                name = item["filename"]
                manifest = self.manifests.get(name)
                if manifest is None:
                    folder = self.settings.commons_folder / safe_file_name(name[:-5] if name.endswith(".json") else name, "manifest")
                    manifest = self.manifests[name] = Manifest(name, folder, str(item.get("last_modified") or ""))
                self._sync_manifest(manifest)
            for old in [m for n, m in self.manifests.items() if n not in names]:
                self._retire(old)
                del self.manifests[old.filename]
            self.current = names
            self._write_root_status()

    def _list_manifests(self) -> list[dict[str, Any]]:
        try:
            resp = self.session.get(f"{self.settings.manifest_url}/", headers=self.credentials.headers(), timeout=(10, 30))
        except requests.RequestException:
            raise ExportError("manifestservice (where the portal's exports are kept) is not answering; trying again shortly", again=True) from None
        if resp.status_code == 404:
            # A commons without manifestservice: say so, but do not put a data folder into every drive for it.
            error = ExportError(f"there is no manifestservice at {self.settings.manifest_url}/ (HTTP 404), so nothing exported from the portal can arrive", again=True)
            error.absent = True  # type: ignore[attr-defined]
            raise error
        if resp.status_code != 200:
            raise ExportError(f"manifestservice refused to list your exports (HTTP {resp.status_code}{': ' + _answer_words(resp) if _answer_words(resp) else ''})")
        try:
            listed = resp.json()["manifests"]
            items = [m for m in listed if isinstance(m, dict) and isinstance(m.get("filename"), str)]
        except (ValueError, KeyError, TypeError):
            raise ExportError("manifestservice answered the list of your exports with something that is not a list") from None
        # manifestservice lists oldest first; sort anyway, by its own timestamp.
        items.sort(key=lambda m: (float(m.get("last_modified_timestamp") or 0), m["filename"]))
        return list(reversed(items[-self.settings.keep :]))

    def _fetch_manifest(self, manifest: Manifest) -> bytes:
        url = f"{self.settings.manifest_url}/file/{quote(manifest.filename, safe='')}"
        try:
            with self.session.get(url, headers=self.credentials.headers(), timeout=(10, 60), stream=True) as resp:
                if resp.status_code != 200:
                    raise ExportError(f"manifestservice refused the manifest (HTTP {resp.status_code}); trying again shortly", again=True)
                declared = resp.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.settings.max_manifest_bytes:
                    raise ExportError(self._too_big())
                body = bytearray()
                for chunk in resp.iter_content(CHUNK):
                    body += chunk
                    if len(body) > self.settings.max_manifest_bytes:
                        raise ExportError(self._too_big())
                return bytes(body)
        except requests.RequestException:
            raise ExportError("manifestservice stopped answering while sending the manifest; trying again shortly", again=True) from None

    def _too_big(self) -> str:
        return f"the manifest is larger than this workspace takes ({human_size(self.settings.max_manifest_bytes)}); nothing was fetched from it. Export fewer files at a time"

    def _sync_manifest(self, manifest: Manifest) -> None:
        if not manifest.loaded:
            try:
                raw = self._fetch_manifest(manifest)
                usable, problems = parse_manifest(raw, self.settings.max_entries)
            except ExportError as e:
                manifest.problems = [str(e)]
                # A manifest that is broken stays broken (they never change); one that could
                # not be read is asked for again at the next check.
                manifest.loaded = not e.again
                self._write_status(manifest, force=True)
                return
            manifest.problems = problems
            manifest.entries = self._plan(manifest, usable)
            manifest.loaded = True
            self._prepare_folder(manifest)
            # Listed at once, before indexd is asked: the user sees what is coming.
            self._write_status(manifest, force=True)
        self._prepare_folder(manifest)
        with self._lock:
            pending = [
                e for e in manifest.entries
                if e.state != "done" and (e.state != "failed" or e.again) and (manifest.filename, e.name) not in self._queued
            ]
        if pending:
            self._lookup(pending)
        for entry in pending:
            if entry.state == "failed" and entry.size is None:
                continue  # indexd said no; the message is set
            if self._already_there(manifest, entry):
                manifest.state_dirty = True
                continue
            entry.state, entry.message = "waiting", ""
            with self._lock:
                self._queued.add((manifest.filename, entry.name))
            self._queue.put((manifest, entry))
        if manifest.state_dirty and not any(m == manifest.filename for m, _ in list(self._queued)):
            self._save_state(manifest)
        self._write_status(manifest, force=True)

    def _plan(self, manifest: Manifest, usable: list[tuple[int, dict[str, Any]]]) -> list[Entry]:
        """One Entry per distinct GUID, each with a distinct safe name in the folder."""
        entries: list[Entry] = []
        by_guid: dict[str, Entry] = {}
        taken: set[str] = set()
        for index, item in usable:
            guid = item["object_id"].strip()
            wanted = item.get("file_name") if isinstance(item.get("file_name"), str) else ""
            if guid in by_guid:
                manifest.problems.append(f"entry {index} names the same object_id as entry {by_guid[guid].index}; it is fetched once, as {by_guid[guid].name}")
                continue
            base = safe_file_name(wanted, guid.rsplit("/", 1)[-1]) if wanted else safe_file_name(guid.rsplit("/", 1)[-1], "file")
            name, n = base, 1
            while name.lower() in taken:
                n += 1
                name = numbered(base, n)
            entry = Entry(index, guid, name, wanted)
            if wanted and base != wanted:
                entry.note = f"the manifest calls it {shown(wanted)!r}, which cannot be a file name here"
            if n > 1:
                entry.note = (entry.note + "; " if entry.note else "") + f"another file of this manifest is already called {base}"
            taken.add(name.lower())
            by_guid[guid] = entry
            entries.append(entry)
        return entries

    def _prepare_folder(self, manifest: Manifest) -> None:
        first = not manifest.folder.exists()
        manifest.folder.mkdir(parents=True, exist_ok=True)
        partial = manifest.folder / PARTIAL_DIR
        if not any((manifest.filename, e.name) in self._queued for e in manifest.entries):
            # Nothing of ours is being fetched into it: what is there was left by a server that stopped.
            shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(exist_ok=True)
        if first or not manifest.state_dirty:
            self._load_state(manifest)

    def _load_state(self, manifest: Manifest) -> None:
        try:
            done = json.loads((manifest.folder / STATE_NAME).read_text()).get("done", {})
        except (OSError, ValueError, AttributeError):
            return
        for entry in manifest.entries:
            record = done.get(entry.name) if isinstance(done, dict) else None
            if entry.state != "done" and isinstance(record, dict) and record.get("guid") == entry.guid:
                final = manifest.folder / entry.name
                if final.is_file() and final.stat().st_size == record.get("size"):
                    entry.state, entry.size, entry.md5, entry.done_bytes = "done", record.get("size"), record.get("md5"), record.get("size") or 0
                    entry.message = "verified: size and md5 match indexd"

    def _already_there(self, manifest: Manifest, entry: Entry) -> bool:
        """A file under the final name with indexd's size and md5 (the server stopped before it saved its state): taken as done."""
        final = manifest.folder / entry.name
        try:
            if final.is_symlink() or not final.is_file() or final.stat().st_size != entry.size:
                return False
            digest = hashlib.md5(usedforsecurity=False)
            with final.open("rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    digest.update(chunk)
        except OSError:
            return False
        if digest.hexdigest() != entry.md5:
            return False
        entry.state, entry.done_bytes, entry.message = "done", entry.size or 0, "verified: size and md5 match indexd"
        return True

    def _lookup(self, entries: list[Entry]) -> None:
        """Size and md5 of each entry from indexd: one bulk call per 200, a single lookup for what bulk did not find."""
        try:
            headers = self.credentials.headers()
        except ExportError as e:
            for entry in entries:
                entry.state, entry.message, entry.size, entry.again = "failed", str(e), None, e.again
            return
        records: dict[str, dict[str, Any]] = {}
        try:
            for start in range(0, len(entries), INDEXD_BULK):
                chunk = [e.guid for e in entries[start : start + INDEXD_BULK]]
                resp = self.session.post(f"{self.settings.indexd_url}/bulk/documents", json=chunk, headers=headers, timeout=(10, 60))
                if resp.status_code == 200:
                    for doc in resp.json():
                        if isinstance(doc, dict) and isinstance(doc.get("did"), str):
                            records[doc["did"]] = doc
            for entry in entries:
                if entry.guid in records:
                    continue
                resp = self.session.get(f"{self.settings.indexd_url}/index/{quote(entry.guid, safe='/:')}", headers=headers, timeout=(10, 30))
                if resp.status_code == 200:
                    records[entry.guid] = resp.json()
                elif resp.status_code == 404:
                    entry.state, entry.size, entry.again = "failed", None, False
                    entry.message = "the commons' file index (indexd) does not know this object_id; ask whoever made the manifest"
                else:
                    entry.state, entry.size, entry.again = "failed", None, True
                    entry.message = f"the file index (indexd) answered HTTP {resp.status_code}; trying again at the next check"
        except (requests.RequestException, ValueError):
            for entry in entries:
                if entry.guid not in records and entry.state != "failed":
                    entry.state, entry.size, entry.again = "failed", None, True
                    entry.message = "the file index (indexd) is not answering; trying again at the next check"
        for entry in entries:
            doc = records.get(entry.guid)
            if doc is None:
                continue
            size, md5 = doc.get("size"), (doc.get("hashes") or {}).get("md5")
            if not isinstance(size, int) or size < 0 or not isinstance(md5, str) or not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
                entry.state, entry.size, entry.again = "failed", None, False
                entry.message = "indexd has no size or md5 for this file, so it cannot be verified; not fetched"
                continue
            entry.size, entry.md5 = size, md5.lower()
            entry.state, entry.message = "waiting", ""

    # --- one file ---

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                manifest, entry = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if manifest.filename in self.manifests:
                    entry.state, entry.message, entry.done_bytes = "fetching", "", 0
                    self._write_status(manifest)
                    self._fetch(manifest, entry)
                    entry.state, entry.message = "done", "verified: size and md5 match indexd"
                    manifest.state_dirty = True
            except ExportError as e:
                entry.state, entry.message, entry.again = "failed", str(e), e.again
            except Exception as e:  # noqa: BLE001 - one file's bug must not stop the others
                log.exception("gen3 export: unexpected error fetching entry %s", entry.index)
                entry.state, entry.message, entry.again = "failed", f"unexpected error ({type(e).__name__}); trying again at the next check"
            finally:
                with self._lock:
                    self._queued.discard((manifest.filename, entry.name))
                    last = not any(m == manifest.filename for m, _ in self._queued)
                if manifest.filename in self.manifests:
                    if manifest.state_dirty and last:
                        self._save_state(manifest)
                    self._write_status(manifest, force=last)
                    if last:
                        self._write_root_status()

    def _signed_url(self, entry: Entry) -> str:
        try:
            resp = self.session.get(f"{self.settings.fence_url}/data/download/{quote(entry.guid, safe='/:')}", headers=self.credentials.headers(), timeout=(10, 30))
        except requests.RequestException:
            raise ExportError("Fence (which signs download links) is not answering; trying again at the next check", again=True) from None
        if resp.status_code in (401, 403):
            raise ExportError(f"you are not allowed to read this file: Fence refused a download link (HTTP {resp.status_code}). Ask the commons for access to its project")
        if resp.status_code == 404:
            raise ExportError("Fence does not know this file (HTTP 404)")
        if resp.status_code != 200:
            words = _answer_words(resp)
            raise ExportError(f"Fence could not sign a download link (HTTP {resp.status_code}{': ' + words if words else ''}); trying again at the next check", again=True)
        try:
            url = resp.json()["url"]
        except (ValueError, KeyError, TypeError):
            raise ExportError("Fence answered the download request with something that is not a link; trying again at the next check", again=True) from None
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise ExportError("Fence's download link is not an http(s) URL; not fetched")
        return url

    def _fetch(self, manifest: Manifest, entry: Entry) -> None:
        """Fetch into .partial/, check size and md5 against indexd, then rename into place."""
        assert entry.size is not None and entry.md5 is not None
        final = manifest.folder / entry.name
        if final.exists() and not final.is_file():
            raise ExportError(f"there is a folder called {entry.name} here; the file was not saved")
        url = self._signed_url(entry)
        partial = manifest.folder / PARTIAL_DIR
        partial.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=partial, prefix="f-", suffix=".part")
        tmp = Path(tmp_name)
        digest = hashlib.md5(usedforsecurity=False)
        got = 0
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    with self.storage.get(url, stream=True, timeout=(10, 60)) as resp:
                        if resp.status_code != 200:
                            words = _answer_words(resp)
                            if resp.status_code in (400, 403) and "expired" in words.lower():
                                raise ExportError(f"the download link expired before the storage served it (HTTP {resp.status_code}: {words}); a fresh link is asked for at the next check", again=True)
                            raise ExportError(f"the storage refused the download (HTTP {resp.status_code}{': ' + words if words else ''}); trying again at the next check", again=True)
                        for chunk in resp.iter_content(CHUNK):
                            if self._stop.is_set():
                                raise ExportError("the server is stopping; the file is fetched again at the next start", again=True)
                            got += len(chunk)
                            if got > entry.size:
                                raise ExportError(f"the storage sent more bytes than indexd's size ({entry.size}); the file was not saved")
                            digest.update(chunk)
                            out.write(chunk)
                            entry.done_bytes = got
                except requests.RequestException:
                    raise ExportError(f"the connection to the storage broke after {human_size(got)} of {human_size(entry.size)}; trying again at the next check", again=True) from None
                out.flush()
                os.fsync(out.fileno())
            if got != entry.size:
                raise ExportError(f"size mismatch: indexd says {entry.size} bytes, the storage sent {got}; the file was not saved")
            if digest.hexdigest() != entry.md5:
                raise ExportError(f"md5 mismatch: indexd says {entry.md5}, the bytes have {digest.hexdigest()}; the file was not saved")
            if final.exists() and not self._ours(manifest, entry.name):
                raise ExportError(f"a file called {entry.name} that the export did not write is already here; it was left alone and the export not saved")
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _ours(self, manifest: Manifest, name: str) -> bool:
        try:
            done = json.loads((manifest.folder / STATE_NAME).read_text()).get("done", {})
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(done, dict) and name in done

    def _save_state(self, manifest: Manifest) -> None:
        with manifest.lock:
            done = {e.name: {"guid": e.guid, "size": e.size, "md5": e.md5} for e in manifest.entries if e.state == "done"}
            _atomic_write(manifest.folder / STATE_NAME, json.dumps({"manifest": manifest.filename, "done": done}, indent=1))
            manifest.state_dirty = False

    def _retire(self, manifest: Manifest) -> None:
        """A manifest no longer among the newest N: remove what the export wrote; anything the user put there stays."""
        folder = manifest.folder
        try:
            done = json.loads((folder / STATE_NAME).read_text()).get("done", {})
        except (OSError, ValueError, AttributeError):
            done = {}
        for name in done if isinstance(done, dict) else {}:
            if safe_file_name(name, "x") == name:
                (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder / PARTIAL_DIR, ignore_errors=True)
        for name in (STATE_NAME, STATUS_NAME):
            (folder / name).unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            log.info("gen3 export: kept %s: it holds files the export did not write", folder)

    # --- what the user sees ---

    def snapshot(self) -> dict[str, Any]:
        """The state of every manifest, as the REST handler returns it."""
        out = []
        for name in list(self.current) or list(self.manifests):
            m = self.manifests.get(name)
            if m is None:
                continue
            out.append(
                {
                    "manifest": m.filename,
                    "folder": str(m.folder),
                    "counts": m.counts(),
                    "problems": list(m.problems),
                    "files": [{"name": e.name, "object_id": e.guid, "size": e.size, "state": e.state, "message": e.message, "note": e.note} for e in m.entries],
                }
            )
        return {"root": str(self.settings.root), "last_check": self.last_check, "problem": self.problem, "manifests": out}

    def write_statuses(self) -> None:
        """Write every status file now (the fetches write theirs as they finish)."""
        for name in list(self.current):
            if name in self.manifests:
                self._write_status(self.manifests[name], force=True)
        self._write_root_status()

    def _write_status(self, manifest: Manifest, force: bool = False) -> None:
        now = time.time()
        if not force and now - manifest.status_written < STATUS_EVERY_SECONDS:
            return
        with manifest.lock:
            manifest.status_written = now
            counts = manifest.counts()
            total = len(manifest.entries)
            lines = [
                f"# Export {md_escape(manifest.filename)}",
                "",
                f"From {md_escape(self.settings.endpoint)}; last checked {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))}.",
                "",
                f"**{counts['done']} of {total} files done**"
                + (f", {counts['fetching']} being fetched" if counts["fetching"] else "")
                + (f", {counts['waiting']} waiting" if counts["waiting"] else "")
                + (f", {counts['failed']} failed" if counts["failed"] else "")
                + ". A file appears in this folder only once its size and md5 match the commons' index (indexd).",
                "",
            ]
            if manifest.problems:
                lines += ["## Problems with the manifest", ""] + [f"- {md_escape(p)}" for p in manifest.problems] + [""]
            if manifest.entries:
                lines += ["| file | size | status |", "|---|---|---|"]
                for e in manifest.entries:
                    state = {"waiting": "waiting", "fetching": f"fetching ({human_size(e.done_bytes)})", "done": "done", "failed": "**failed**"}[e.state]
                    words = "; ".join(w for w in (e.message, e.note) if w)
                    if e.state == "failed" and not e.again:
                        words += ". Not tried again until the server restarts"
                    lines.append(f"| {md_escape(e.name)} | {human_size(e.size)} | {state}{': ' + md_escape(words) if words else ''} |")
            try:
                manifest.folder.mkdir(parents=True, exist_ok=True)
                _atomic_write(manifest.folder / STATUS_NAME, "\n".join(lines) + "\n")
            except OSError as e:
                log.warning("gen3 export: cannot write the status of %s: %s", manifest.filename, e.strerror)

    def _write_root_status(self) -> None:
        if self._absent and not self.settings.root.exists():
            return
        lines = [
            "# Files exported from the portal",
            "",
            f"Commons: {md_escape(self.settings.endpoint)}. Last checked {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self.last_check))}; "
            f"the newest {self.settings.keep} exports are kept here, each in its own folder with an {STATUS_NAME}.",
            "",
        ]
        if self.problem:
            lines += [f"**Problem:** {md_escape(self.problem)}", ""]
        for name in self.current:
            m = self.manifests.get(name)
            if m is None:
                continue
            c = m.counts()
            rel = m.folder.relative_to(self.settings.root)
            lines.append(f"- {md_escape(str(rel))}: {c['done']} of {len(m.entries)} done" + (f", {c['failed']} failed" if c["failed"] else "") + (f" ({len(m.problems)} problems with the manifest)" if m.problems else ""))
        if not self.current and not self.problem:
            lines.append("No exports yet: choose files in the portal and press Export to Workspace.")
        try:
            self.settings.root.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.settings.root / STATUS_NAME, "\n".join(lines) + "\n")
        except OSError as e:
            log.warning("gen3 export: cannot write %s: %s", self.settings.root / STATUS_NAME, e.strerror)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the Jupyter Server extension -------------------------------------------------------


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "gen3ws_export"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from jupyter_server.base.handlers import APIHandler
    from jupyter_server.utils import url_path_join
    from tornado import web

    settings = Settings.from_env(os.environ, serverapp.root_dir)
    if not settings.enabled:
        serverapp.log.info("Gen3 export to workspace is off: %s", settings.why_off)
        return
    # urllib3 logs each retry with the request's path and query, which for a signed URL is its
    # signature: a credential for an hour. This server process makes no other urllib3 calls
    # worth a retry warning (kernels are processes of their own).
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    sync = ExportSync(settings).start()
    serverapp.log.info("Gen3 export to workspace: the newest %s manifests of %s go to %s", settings.keep, settings.endpoint, settings.root)

    class StatusHandler(APIHandler):
        @web.authenticated
        def get(self) -> None:
            self.finish(json.dumps(sync.snapshot()))

    serverapp.web_app.add_handlers(".*$", [(url_path_join(serverapp.base_url, "gen3-export", "status"), StatusHandler)])
    serverapp.web_app.settings["gen3_export"] = sync


# The classic name jupyter_server also looks for.
load_jupyter_server_extension: Callable[[Any], None] = _load_jupyter_server_extension
