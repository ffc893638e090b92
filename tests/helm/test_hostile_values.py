"""Chart values that would widen the egress whitelist, inject a CSP directive or render impossible network objects are refused by `helm template`."""

from __future__ import annotations

from typing import Any

import pytest

from gen3workspace.spawner import grammar

from .chart import template_text

BAD: list[tuple[str, dict[str, Any]]] = [
    ("wildcard-tld", {"egressProxy": {"whitelist": {"wildcardDomains": [".com"]}}}),
    ("wildcard-public-suffix", {"egressProxy": {"whitelist": {"wildcardDomains": [".co.uk"]}}}),
    ("wildcard-wildcard-suffix", {"egressProxy": {"whitelist": {"wildcardDomains": [".foo.ck"]}}}),
    ("wildcard-upper-case", {"egressProxy": {"whitelist": {"wildcardDomains": [".Example.org"]}}}),
    ("domain-tld", {"egressProxy": {"whitelist": {"domains": ["com"]}}}),
    ("domain-public-suffix", {"egressProxy": {"whitelist": {"domains": ["gov.uk"]}}}),
    ("domain-trailing-newline", {"egressProxy": {"whitelist": {"domains": ["example.org\n"]}}}),
    ("commons-url-dot-tld", {"commons": {"url": "https://.com"}}),
    ("commons-url-userinfo", {"commons": {"url": "https://evil.example.net@data.example.org"}}),
    ("commons-url-userinfo-password", {"commons": {"url": "https://a:b@data.example.org"}}),
    ("commons-url-path", {"commons": {"url": "https://data.example.org/portal"}}),
    ("commons-url-query", {"commons": {"url": "https://data.example.org?x=1"}}),
    ("commons-url-port-too-big", {"commons": {"url": "https://data.example.org:99999"}}),
    ("commons-url-single-label", {"commons": {"url": "https://com"}}),
    ("frame-ancestor-directive", {"hub": {"frameAncestors": ["https://portal.example.org; script-src *"]}}),
    ("frame-ancestor-comma", {"hub": {"frameAncestors": ["https://a.example.org,https://b.example.org"]}}),
    ("frame-ancestor-space", {"hub": {"frameAncestors": ["https://a.example.org https://b.example.org"]}}),
    ("frame-ancestor-quote", {"hub": {"frameAncestors": ["'unsafe-inline'"]}}),
    ("frame-ancestor-star", {"hub": {"frameAncestors": ["*"]}}),
    ("frame-ancestor-newline", {"hub": {"frameAncestors": ["https://a.example.org\nX-Evil: 1"]}}),
    ("cidr-octet", {"egressProxy": {"allowedClients": ["999.0.0.0/8"]}}),
    ("cidr-prefix", {"egressProxy": {"allowedClients": ["10.0.0.0/33"]}}),
    ("cidr-v6-prefix", {"egressProxy": {"allowedClients": ["fc00::/129"]}}),
    ("cidr-v6-garbage", {"egressProxy": {"deniedDestinations": ["::gg/8"]}}),
    ("cidr-without-prefix", {"egressProxy": {"deniedDestinations": ["10.0.0.0"]}}),
    ("cidr-except", {"networkPolicy": {"egressProxy": {"exceptCidrs": ["300.1.1.1/8"]}}}),
    ("port-zero", {"egressProxy": {"sslPorts": [0]}}),
    ("port-too-big", {"egressProxy": {"safePorts": [70000]}}),
    ("port-range-from-zero", {"egressProxy": {"sslPorts": ["0-10"]}}),
    ("port-range-too-big", {"egressProxy": {"sslPorts": ["1-70000"]}}),
    ("port-range-reversed", {"egressProxy": {"safePorts": ["100-50"]}}),
    ("port-list-injection", {"egressProxy": {"safePorts": ["443 80"]}}),
    ("no-proxy-comma", {"spawner": {"noProxy": ["a.example.org,b.example.org"]}}),
    ("node-selector-key", {"hub": {"nodeSelector": {"bad key": "x"}}}),
    ("node-selector-value", {"proxy": {"nodeSelector": {"gen3.org/x": "a b"}}}),
    ("extra-env-name", {"hub": {"extraEnv": {"1X": "a"}}}),
    (
        "end-port-below-port",
        {"networkPolicy": {"notebook": {"allowedInternal": [
            {"name": "db", "to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"port": 5432, "endPort": 5000}]}
        ]}}},
    ),
]

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("wildcard-under-public-suffix", {"egressProxy": {"whitelist": {"wildcardDomains": [".example.co.uk", ".pypi.org"]}}}),
    ("exception-of-a-wildcard-rule", {"egressProxy": {"whitelist": {"domains": ["www.ck"]}}}),
    ("commons-url-port", {"commons": {"url": "https://data.example.org:8443/"}}),
    ("frame-ancestors", {"hub": {"frameAncestors": ["https://portal.example.org", "https:", "*.example.org", "'self'"]}}),
    ("cidrs", {"egressProxy": {"allowedClients": ["10.0.0.0/8", "fc00::/7", "2001:db8::/32"]}}),
    ("port-ranges", {"egressProxy": {"sslPorts": [443, "1025-65535", "8443-8443"]}}),
    ("labels-and-env", {"hub": {"nodeSelector": {"kubernetes.io/arch": "amd64"}, "extraEnv": {"_X": "a"}}}),
]


@pytest.mark.parametrize("name, overrides", BAD, ids=[b[0] for b in BAD])
def test_the_chart_refuses(name: str, overrides: dict[str, Any]) -> None:
    r = template_text("defaults.yaml", overrides=overrides)
    assert r.returncode != 0, f"{name} rendered"
    assert "Error" in r.stderr


@pytest.mark.parametrize("name, overrides", GOOD, ids=[g[0] for g in GOOD])
def test_the_chart_accepts(name: str, overrides: dict[str, Any]) -> None:
    r = template_text("defaults.yaml", overrides=overrides)
    assert r.returncode == 0, r.stderr[-2000:]


def test_python_and_chart_agree_on_domains() -> None:
    # The same grammar and the same public suffix list on both sides.
    for value, wildcard in [(".com", True), (".co.uk", True), (".foo.ck", True), ("gov.uk", False), ("com", False)]:
        with pytest.raises(grammar.GrammarError):
            grammar.check_domain(value, wildcard)
    for value, wildcard in [(".example.co.uk", True), (".pypi.org", True), ("www.ck", False), (".s3.amazonaws.com", True)]:
        assert grammar.check_domain(value, wildcard) == value
