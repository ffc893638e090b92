"""Gen3 Workspace test suite: unit, integration (real hub, Fence stand-in) and end-to-end (real browser) tests."""
