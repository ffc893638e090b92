"""The hub side of Gen3 Workspace: Fence authenticator, hub configuration, CLI and templates."""
