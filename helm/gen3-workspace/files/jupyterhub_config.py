# JupyterHub config of the gen3-workspace chart: all logic lives in gen3workspace.hub.chartconfig,
# which reads config.yaml (next to this file) and the hub Secret's environment variables.
from gen3workspace.hub.chartconfig import apply

apply(c)  # noqa: F821 - `c` is provided by JupyterHub when it loads this file
