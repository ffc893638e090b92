"""Contract tests: the same Fence cases against real Fence and the stand-in."""
