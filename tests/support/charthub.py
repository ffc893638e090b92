"""A real JupyterHub configured exactly as the Helm chart configures it, running here against the kube test bed, behind the chart's own engine config run by the real nginx."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gen3workspace.hub.local import find_engine_command
from .fence import FenceStandIn, free_port
from .hub import HUB_LOGS, Hub

# Only what cannot exist here changes: addresses (no Services, so loopback), the engine run
# here from the chart's ConfigMap (no proxy Deployment), the database path, and the server
# command (no image, so the harness runs this venv's singleuser server).
PLUMBING = """\
import os
from gen3workspace.hub.chartconfig import apply
apply(c, {config!r}, environ=os.environ)
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.hub_connect_url = "http://127.0.0.1:{hub_port}"
{db_line}
c.JupyterHub.cleanup_servers = True
c.Gen3KubeSpawner.flavor_file = {flavors!r}
c.Gen3KubeSpawner.cmd = [{singleuser!r}]
c.Gen3KubeSpawner.args = ["--allow-root"]
c.Gen3KubeSpawner.start_timeout = 120
c.Gen3OAuthenticator.oauth_callback_url = "http://127.0.0.1:{port}{base}hub/oauth_callback"
load_subconfig({test_config!r})
"""


class ChartHub(Hub):
    """JupyterHub + the chart's config layer + Gen3KubeSpawner on the hub ServiceAccount's kubeconfig."""

    ready_marker = "JupyterHub is now running"

    def __init__(
        self, tmp: Path, fence: FenceStandIn, kubeconfig: Path, config_yaml: str, flavors_yaml: str, base_url: str = "/workspace/",
        chart_db: bool = False, extra_config: str = "", extra_env: dict[str, str] | None = None, read_only_root: bool = False,
        engine_conf: str = "", keys_from_secret: bool = False,
    ):
        """`config_yaml` and `flavors_yaml`: the data of the ConfigMaps the chart installed.

        `chart_db`: use the database the chart config names (hub.db) instead of a sqlite file.
        The hub Secret's values are made once, so a restarted hub reads what it stored.

        `read_only_root`: run the hub in a mount namespace whose root file system is read-only
        except /tmp, as the chart's readOnlyRootFilesystem has it (needs root for unshare and mount).

        `engine_conf`: the chart's proxy ConfigMap (nginx.conf), run with the real nginx on
        loopback in place of the proxy pods: only its listen and hub addresses change.

        `keys_from_secret`: give the hub no cookie secret or crypt key, as the chart does without
        hub.existingSecret: the hub makes them in the chart's hub Secret through its
        ServiceAccount (the kubeconfig) and reads them back when it restarts.
        """
        super().__init__(tmp, fence=fence, extra_config=extra_config)
        self.chart_db = chart_db
        self.read_only_root = read_only_root
        # Fixed per instance, so a restarted hub is found where the servers it started expect it.
        self.hub_port = free_port()
        generated = {} if keys_from_secret else {
            "GEN3WS_COOKIE_SECRET": secrets.token_hex(32),
            "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
        }
        self.secret_env = {**generated, **(extra_env or {})}
        self.engine_conf = engine_conf
        self.engine: subprocess.Popen[bytes] | None = None
        self.engine_dir: Path | None = None
        self.kubeconfig = kubeconfig
        self.config_yaml = config_yaml
        self.flavors_yaml = flavors_yaml
        self.base_url = base_url

    def command(self, test_config: Path, env: dict[str, str]) -> list[str]:
        assert self.fence is not None
        config = self.tmp / "config.yaml"
        config.write_text(self.config_yaml)
        flavors = self.tmp / "flavors.yaml"
        flavors.write_text(self.flavors_yaml)
        cfg = self.tmp / "jupyterhub_config.py"
        cfg.write_text(
            PLUMBING.format(
                config=str(config), port=self.port, hub_port=self.hub_port,
                db_line="" if self.chart_db else f'c.JupyterHub.db_url = "sqlite:///{self.tmp / "jupyterhub.sqlite"}"',
                flavors=str(flavors), singleuser=str(Path(sys.executable).with_name("jupyterhub-singleuser")),
                base=self.base_url, test_config=str(test_config),
            )
        )
        # What the chart's hub Secret gives the hub as env.
        env.update(KUBECONFIG=str(self.kubeconfig), GEN3WS_CLIENT_SECRET=self.fence.client_secret, **self.secret_env)
        hub = [sys.executable, "-m", "jupyterhub", "--config", str(cfg), "--debug"]
        if not self.read_only_root:
            return hub
        # /tmp holds this hub's files (its database too), like the chart's emptyDir and volume.
        remount = 'mount --bind /tmp /tmp && mount -o remount,bind,ro / && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", remount, "read-only-root", *hub]


    # --- the engine, as the proxy pods run it -------------------------------------------

    def start(self, timeout: float = 90) -> "ChartHub":
        self.start_engine()
        try:
            super().start(timeout)
        except BaseException:
            self.stop_engine()
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        try:
            return super().stop(sig, timeout)
        finally:
            self.stop_engine()

    def local_engine_conf(self) -> str:
        import re

        conf, listens = re.subn(r"^(\s*)listen 8080;$", rf"\1listen 127.0.0.1:{self.port};", self.engine_conf, flags=re.M)
        conf, hubs = re.subn(r"^(\s*)server [a-z0-9.-]+-hub\.[a-z0-9-]+\.svc:8081;$", rf"\1server 127.0.0.1:{self.hub_port};", conf, flags=re.M)
        assert listens == 1 and hubs == 1, "the chart's engine config no longer has the addresses this bed replaces"
        return conf

    def start_engine(self) -> None:
        if self.engine is not None:
            return
        if not self.engine_conf:
            raise RuntimeError("ChartHub needs engine_conf: the installed chart's proxy ConfigMap (chart_install.chart_engine_config)")
        nginx = find_engine_command()
        assert nginx, "nginx is not installed: run scripts/setup.sh"
        # As in the pod: a non-root user, writing only its own folders (the emptyDirs).
        self.engine_dir = Path(tempfile.mkdtemp(prefix="gen3ws-engine-"))
        for sub in ("temp", "cache"):
            (self.engine_dir / sub).mkdir()
        (self.engine_dir / "nginx.conf").write_text(self.local_engine_conf())
        cmd = [nginx, "-p", f"{self.engine_dir}/", "-c", str(self.engine_dir / "nginx.conf"), "-e", "stderr"]
        if os.geteuid() == 0:
            for root, dirs, files in os.walk(self.engine_dir):
                for p in [root, *(os.path.join(root, d) for d in [*dirs, *files])]:
                    os.chown(p, 65534, 65534)
            # nginx opens /dev/stdout for its access log: a pipe made by that user, as a
            # container runtime gives it one, not this test's root-owned log file.
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", 'exec "$@" 2>&1 | cat', "engine", *cmd]
        log_path = self.tmp / "engine.log"
        HUB_LOGS.append(log_path)
        self._engine_log = open(log_path, "ab")
        self.engine = subprocess.Popen(cmd, stdout=self._engine_log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 20
        while not (self.engine_dir / "engine.pid").exists():
            if self.engine.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the engine did not start: {log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    def stop_engine(self) -> None:
        if self.engine is None:
            return
        if self.engine.poll() is None:
            assert self.engine_dir is not None
            try:
                # The master's own pid (the Popen may be the shell of the pipe above).
                os.kill(int((self.engine_dir / "engine.pid").read_text()), signal.SIGQUIT)
            except (OSError, ValueError):
                self.engine.send_signal(signal.SIGQUIT)
            try:
                self.engine.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.engine.pid, signal.SIGKILL)
                self.engine.wait(10)
        self._engine_log.close()
        self.engine = None
        if self.engine_dir is not None:
            shutil.rmtree(self.engine_dir, ignore_errors=True)
