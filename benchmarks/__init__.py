"""Benchmarks of Gen3 Workspace against stock JupyterHub and KubeSpawner (`make bench`); not part of the test suite."""
