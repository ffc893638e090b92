"""Gen3LocalSpawner: the embedded mode's spawner — each user's server a local process, their drive a folder."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Unicode, default

from .common import Gen3SpawnerMixin


def safe_name(username: str) -> str:
    """A folder name for any username, one-to-one: keeps [a-z0-9._], writes every other byte as -XX.

    '-' is always escaped, so it only ever starts an escape and two names never share a folder;
    a leading '.' is escaped too, so no name is '.', '..' or hidden.
    """
    out = []
    for i, byte in enumerate(username.encode()):
        ch = chr(byte)
        keep = byte < 128 and (ch.isdigit() or "a" <= ch <= "z" or ch == "_" or (ch == "." and i > 0))
        out.append(ch if keep else f"-{byte:02x}")
    return "".join(out) or "-"


class Gen3LocalSpawner(Gen3SpawnerMixin, SimpleLocalProcessSpawner):
    """Runs a user's chosen flavor as a local jupyterhub-singleuser with the same env and credentials as on Kubernetes."""

    data_dir = Unicode(
        config=True,
        help="Folder holding users' drives (drives/<user>) and their credentials (credentials/<user>).",
    )

    @default("data_dir")
    def _data_dir_default(self) -> str:
        return str(Path(os.environ.get("GEN3WS_DATA_DIR", "var")).absolute())

    local_mode_note = (
        "Local mode: the flavor's image, CPU, memory and GPU are not applied here. Your server runs "
        "as a local process with this machine's Python; your drive is a folder on this machine."
    )

    def progress_intro(self) -> dict[str, Any]:
        # Nothing here applies the flavor's CPU, memory or GPU: say so instead of claiming them.
        name = self.flavor.display_name if self.flavor else "your workspace"
        return {"progress": 2, "message": f"Starting {name} as a local process on this machine (its image, CPU, memory and GPU are not applied here)"}

    @default("home_dir")
    def _home_dir_default(self) -> str:
        return str(Path(self.data_dir) / "drives" / safe_name(self.user.name))

    @default("notebook_dir")
    def _notebook_dir_default(self) -> str:
        return self.home_dir

    @default("credentials_mount_path")
    def _credentials_mount_path_default(self) -> str:
        # One folder per server: named servers each get their own key.
        folder = safe_name(self.user.name) + (f"--{safe_name(self.name)}" if self.name else "")
        return str(Path(self.data_dir) / "credentials" / folder)

    @default("default_url")
    def _default_url_default(self) -> str:
        return "/lab"

    @default("cmd")
    def _cmd_default(self) -> list[str]:
        # The singleuser server of the hub's own environment, whatever PATH says.
        return [str(Path(sys.executable).with_name("jupyterhub-singleuser"))]

    @default("args")
    def _args_default(self) -> list[str]:
        return ["--allow-root"] if os.geteuid() == 0 else []

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        # The notebook image's Jupyter Server settings (portal embedding, idle culling).
        env["JUPYTER_CONFIG_PATH"] = str(Path(__file__).with_name("singleuser"))
        # As in the notebook image: gen3-client's release check asks GitHub before every command.
        env["GEN3_CLIENT_VERSION_CHECK"] = "false"
        # The image's start-up hook keeps gen3-client's file (it holds the key) here, off the
        # drive; the folder goes with the credentials when the server stops.
        env["GEN3_CLIENT_RUNTIME_DIR"] = str(Path(self.credentials_mount_path) / "gen3-client")
        return env

    async def start(self) -> Any:
        async with self.spawn_scope():
            return await self._start_in_scope()

    async def _start_in_scope(self) -> Any:
        self.flavor = await self.choose_flavor(self.user_options)
        Path(self.home_dir).mkdir(parents=True, exist_ok=True)
        key = await self.mint_api_key()
        if key:
            self._write_credentials(key)
        try:
            return await super().start()
        except Exception:
            await self._cleanup_credentials()
            raise

    def _write_credentials(self, key: dict[str, str]) -> None:
        folder = Path(self.credentials_mount_path)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        target = folder / "credentials.json"
        # Created 0600 before the key is written, so it is never readable by others.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.credentials_json(key))
        os.chmod(target, 0o400)

    async def _cleanup_credentials(self) -> None:
        await self.revoke_api_key()
        shutil.rmtree(self.credentials_mount_path, ignore_errors=True)
