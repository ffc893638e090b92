"""A real JupyterHub configured exactly as the Helm chart configures it, running here against the kube test bed."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from gen3workspace.hub.local import find_proxy_command
from .fence import FenceStandIn, free_port
from .hub import Hub

# Only what cannot exist here changes: addresses (no Services, so loopback), the proxy started
# by the hub (no proxy Deployment), the database path, and the server command (no image, so
# the harness runs this venv's singleuser server).
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
c.ConfigurableHTTPProxy.should_start = True
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.pid_file = "{proxy_pid}"
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
        keys_from_secret: bool = False,
    ):
        """`config_yaml` and `flavors_yaml`: the data of the ConfigMaps the chart installed.

        `chart_db`: use the database the chart config names (hub.db) instead of a sqlite file.
        The hub Secret's values are made once, so a restarted hub reads what it stored.

        `keys_from_secret`: give the hub no cookie secret, crypt key or proxy token, as the chart
        does without hub.existingSecret: the hub makes them in the chart's hub Secret through
        its ServiceAccount (the kubeconfig) and reads them back when it restarts.

        `read_only_root`: run the hub (and the proxy it starts) in a mount namespace whose root
        file system is read-only except /tmp, as the chart's readOnlyRootFilesystem has it
        (needs root for unshare and mount).
        """
        super().__init__(tmp, fence=fence, extra_config=extra_config)
        self.chart_db = chart_db
        self.read_only_root = read_only_root
        # Fixed per instance, so a restarted hub is found where the servers it started expect it.
        self.hub_port, self.api_port = free_port(), free_port()
        generated = {} if keys_from_secret else {
            "GEN3WS_COOKIE_SECRET": secrets.token_hex(32),
            "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
            "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(32),
        }
        self.secret_env = {**generated, **(extra_env or {})}
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
                config=str(config), port=self.port, hub_port=self.hub_port, api_port=self.api_port,
                db_line="" if self.chart_db else f'c.JupyterHub.db_url = "sqlite:///{self.tmp / "jupyterhub.sqlite"}"',
                chp=find_proxy_command(), flavors=str(flavors), singleuser=str(Path(sys.executable).with_name("jupyterhub-singleuser")),
                base=self.base_url, test_config=str(test_config), proxy_pid=self.tmp / "proxy.pid",
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

