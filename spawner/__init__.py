"""The spawner side of Gen3 Workspace: flavor catalogue, Kubernetes and local spawners."""
