"""Test support: the Fence stand-in, hub and browser harnesses, the Kubernetes test bed."""
