"""Tests of the Helm chart: lint, rendering and Kubernetes validation, values schema, the hub's chart config layer and the egress proxy's whitelist in a real squid."""
