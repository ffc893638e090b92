"""Gen3LocalSpawner: the embedded mode's spawner — each user's server a local process, their drive a folder."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Float, List, Unicode, default

from .common import Gen3SpawnerMixin


# The notebook image's start-up hook, in a source checkout (the embedded mode runs from one).
IMAGE_HOOKS = Path(__file__).resolve().parents[1] / "images" / "notebook" / "before-notebook.d"


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

    start_hooks = List(
        Unicode(),
        config=True,
        help="""Executables run before the user's server starts, with the server's env and its
        drive as the working folder, as the notebook image's start.sh runs before-notebook.d: the
        default is that folder's hooks in this checkout, so gen3-client is logged in to the commons
        (a profile from the server's API key) in embedded mode too. A failing hook is logged and
        the server starts anyway, as with start.sh.""",
    )

    @default("start_hooks")
    def _start_hooks_default(self) -> list[str]:
        return [str(p) for p in sorted(IMAGE_HOOKS.glob("*")) if p.is_file() and os.access(p, os.X_OK)] if IMAGE_HOOKS.is_dir() else []

    start_hook_timeout = Float(
        60.0,
        config=True,
        help="Seconds a start hook may run before it is stopped and the server starts without it.",
    )

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
        # As the image's /usr/local/bin: gen3-client (scripts/setup.sh installs it next to the
        # hub's Python), the SDK's `gen3` command and Jupyter come first on the server's PATH,
        # unless the operator set PATH in `environment`.
        if "PATH" not in self.environment:
            tools = str(Path(sys.executable).parent)
            env["PATH"] = os.pathsep.join([tools, *(d for d in env.get("PATH", os.defpath).split(os.pathsep) if d and d != tools)])
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
            await self._run_start_hooks()
            return await super().start()
        except Exception:
            await self._cleanup_credentials()
            raise

    async def _run_start_hooks(self) -> None:
        env = self.get_env()
        for hook in self.start_hooks:
            try:
                proc = await asyncio.create_subprocess_exec(
                    hook, env=env, cwd=self.home_dir, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                )
            except OSError as e:
                self.log.warning("Start hook %s of %s could not run: %s", hook, self.user.name, e)
                continue
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), self.start_hook_timeout)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                self.log.warning("Start hook %s of %s ran over %s s and was stopped", hook, self.user.name, self.start_hook_timeout)
                continue
            # The image's hooks never print a key (start.sh shows their output in the pod log).
            text = out.decode(errors="replace").strip()[-2000:]
            if proc.returncode:
                self.log.warning("Start hook %s of %s failed (%s): %s", hook, self.user.name, proc.returncode, text)
            else:
                self.log.info("Start hook %s of %s: %s", Path(hook).name, self.user.name, text)

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
