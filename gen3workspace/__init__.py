"""Gen3 Workspace: JupyterHub for Gen3 data commons (authenticator, spawners, CLI)."""
