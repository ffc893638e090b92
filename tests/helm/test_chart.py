"""The chart lints, renders valid Kubernetes objects for every values file, refuses bad values by key, and renders the security properties the design promises."""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gen3workspace.spawner.flavors import default_catalogue_path, validate_catalogue

from .chart import (
    BAD_VALUES_DIR,
    CHART,
    FULLNAME,
    METADATA_V4,
    METADATA_V6,
    NAMESPACE,
    RELEASE,
    VALUES_DIR,
    Obj,
    find,
    find_all,
    helm,
    hub_config,
    ip_block_allows,
    notes_text,
    pod_templates,
    render,
    selector_matches,
    template_text,
)

VALUES_FILES = sorted(p.name for p in VALUES_DIR.glob("*.yaml"))
BAD_VALUES_FILES = sorted(p.name for p in BAD_VALUES_DIR.glob("*.yaml"))
K8S_VERSIONS = ["1.30", "1.35"]
# What KubeSpawner adds to every user pod on top of the common labels the hub is configured with.
KUBESPAWNER_POD_LABELS = {"component": "singleuser-server", "app.kubernetes.io/component": "singleuser-server"}


def test_the_matrix_covers_the_issue() -> None:
    assert set(VALUES_FILES) >= {
        "defaults.yaml", "external-db.yaml", "ingress.yaml", "gpu-flavor.yaml",
        "egress-off.yaml", "custom-whitelist.yaml", "existing-secret.yaml", "hub-existing-secret.yaml",
    }


# ---- lint, render, validate -------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES)
def test_helm_lint_strict(values: str) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(VALUES_DIR / values))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_helm_lint_strict_with_the_chart_defaults() -> None:
    # helm lint reports `required`/`fail` only as INFO, so the bare chart lints clean ...
    out = helm("lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr


def test_install_without_required_values_says_what_is_missing() -> None:
    # ... while rendering it for real (as helm install does) stops with a message naming the key.
    out = template_text()
    assert out.returncode != 0
    assert "commons.url is required" in out.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("values", VALUES_FILES)
def test_rendered_objects_validate_strictly(values: str, version: str) -> None:
    docs = render(values)
    assert len(docs) >= 15
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(e.message)
    assert not problems, "\n".join(problems)


def test_kubernetes_version_constraint() -> None:
    for version in K8S_VERSIONS:
        out = template_text("defaults.yaml", extra=["--kube-version", f"{version}.0"])
        assert out.returncode == 0, out.stderr
    too_old = template_text("defaults.yaml", extra=["--kube-version", "1.29.0"])
    assert too_old.returncode != 0 and "kubeVersion" in too_old.stderr


def test_validation_catches_a_broken_object() -> None:
    """The validator in use is strict: the matrix above could not pass by validating nothing."""
    deployment = copy.deepcopy(find(render("defaults.yaml"), "Deployment", f"{FULLNAME}-hub"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicie"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.35", strict=True)


@pytest.mark.parametrize("bad", BAD_VALUES_FILES)
def test_bad_values_are_refused_naming_the_key(bad: str) -> None:
    path = BAD_VALUES_DIR / bad
    expected = re.search(r"^# expect: (.+)$", path.read_text(encoding="utf-8"), re.M)
    assert expected, f"{bad} must say which key the error names (# expect: ...)"
    out = template_text(path)
    assert out.returncode != 0, f"{bad} was accepted"
    assert expected.group(1).strip() in out.stderr, out.stderr


def test_schema_refusals_come_from_the_schema_not_from_templates() -> None:
    """A misspelled key and a bad flavor are refused by values.schema.json (before any template runs)."""
    for bad in ("misspelled-key.yaml", "flavor-memory-with-space.yaml", "unknown-flavor-key.yaml"):
        out = template_text(BAD_VALUES_DIR / bad)
        assert "values don't meet the specifications of the schema" in out.stderr, out.stderr


# ---- security properties ------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_container_is_non_root_without_privilege_escalation(values: str) -> None:
    templates = pod_templates(render(values))
    assert {name for name, _ in templates} >= {f"{FULLNAME}-hub", f"{FULLNAME}-proxy"}
    for name, template in templates:
        spec = template["spec"]
        pod_sc = spec.get("securityContext") or {}
        containers = spec.get("containers", []) + spec.get("initContainers", [])
        assert containers
        for c in containers:
            sc = c.get("securityContext") or {}
            where = f"{name}/{c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert uid is not None and uid != 0, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert "ALL" in (sc.get("capabilities") or {}).get("drop", []), where
            assert not (sc.get("capabilities") or {}).get("add"), where
            assert sc.get("readOnlyRootFilesystem") is True, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        if not name.endswith("-hub"):
            # Only the hub talks to the Kubernetes API.
            assert spec.get("automountServiceAccountToken") is False, name


@pytest.mark.parametrize("values", VALUES_FILES)
def test_rbac_is_namespaced_and_minimal(values: str) -> None:
    docs = render(values)
    assert not find_all(docs, "ClusterRole") and not find_all(docs, "ClusterRoleBinding")
    user_ns = hub_config(docs)["spawner"]["namespace"]
    assert user_ns != NAMESPACE, "users' servers must not share the release namespace"
    keys_role = f"{FULLNAME}-hub-keys"
    assert [r["metadata"]["namespace"] for r in find_all(docs, "Role") if r["metadata"]["name"] != keys_role] == [user_ns], "only the keys Role in the release namespace"
    role = find(docs, "Role", f"{FULLNAME}-hub")
    # Exactly what KubeSpawner and spawner/kube.py call: no list/watch on Secrets, no PVC delete.
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    assert granted == ROLE_VERBS
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""], rule
        assert not rule.get("nonResourceURLs") and not rule.get("resourceNames"), rule
    binding = find(docs, "RoleBinding", f"{FULLNAME}-hub")
    assert binding["metadata"]["namespace"] == user_ns
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    hub_sa = find(docs, "Deployment", f"{FULLNAME}-hub")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": hub_sa, "namespace": NAMESPACE}]


# (resource, verb) the hub's Role grants; tests/integration/test_kube_chart.py proves them on a real API server.
ROLE_VERBS = {
    ("pods", "list"), ("pods", "watch"), ("pods", "create"), ("pods", "delete"),
    ("events", "list"), ("events", "watch"),
    ("persistentvolumeclaims", "get"), ("persistentvolumeclaims", "create"),
    ("secrets", "get"), ("secrets", "create"), ("secrets", "update"), ("secrets", "delete"),
}


@pytest.mark.parametrize("values", ["defaults.yaml", "custom-whitelist.yaml"])
def test_the_users_namespace_is_created_restricted_and_kept(values: str) -> None:
    docs = render(values)
    user_ns = hub_config(docs)["spawner"]["namespace"]
    assert user_ns == {"defaults.yaml": f"{NAMESPACE}-workspace-users", "custom-whitelist.yaml": "workspace-users"}[values]
    namespace = find(docs, "Namespace")
    assert namespace["metadata"]["name"] == user_ns
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"
    # helm uninstall must not take the users' drives with it.
    assert namespace["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    in_user_ns = sorted((d["kind"], d["metadata"]["name"]) for d in docs if d["metadata"].get("namespace") == user_ns)
    assert in_user_ns == [("NetworkPolicy", f"{FULLNAME}-notebooks"), ("Role", f"{FULLNAME}-hub"), ("RoleBinding", f"{FULLNAME}-hub")]


def test_a_namespace_the_operator_made_is_used_as_it_is() -> None:
    docs = render("external-db-existing-secret.yaml")
    assert not find_all(docs, "Namespace")
    assert hub_config(docs)["spawner"]["namespace"] == "workspace-users-by-hand"
    assert find(docs, "Role", f"{FULLNAME}-hub")["metadata"]["namespace"] == "workspace-users-by-hand"


def test_the_users_namespace_check_refuses_an_existing_namespace_it_does_not_own() -> None:
    """lookup answers only against a cluster (tests/integration/test_kube_chart.py runs it); here the check must be there."""
    text = (CHART / "templates" / "hub" / "namespace.yaml").read_text(encoding="utf-8")
    assert 'lookup "v1" "Namespace" "" $name' in text
    assert '"meta.helm.sh/release-name"' in text and '"meta.helm.sh/release-namespace"' in text


def _pod_labels(docs: list[Obj], deployment: str) -> dict[str, str]:
    return find(docs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]


def _notebook_labels(docs: list[Obj]) -> dict[str, str]:
    """The labels a user's pod gets: what the hub is configured with plus KubeSpawner's own."""
    from gen3workspace.hub.chartconfig import KUBESPAWNER_COMMON_LABELS

    return {**KUBESPAWNER_COMMON_LABELS, **hub_config(docs)["spawner"]["commonLabels"], **KUBESPAWNER_POD_LABELS, "hub.jupyter.org/username": "alice"}


def _peer_is(peer: Obj, labels: dict[str, str], namespace: str, policy_ns: str) -> bool:
    """Whether a NetworkPolicy peer selects pods with these labels in this namespace."""
    if "ipBlock" in peer or "podSelector" not in peer:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}):
            return False
    elif namespace != policy_ns:
        return False
    return selector_matches(peer["podSelector"], labels)


def _ports(rule: Obj) -> list[tuple[Any, str]]:
    return sorted((p["port"], p.get("protocol", "TCP")) for p in rule.get("ports") or [])


@pytest.mark.parametrize("values", VALUES_FILES)
def test_notebook_egress_allows_only_what_is_listed(values: str) -> None:
    docs = render(values)
    config = hub_config(docs)
    user_ns = config["spawner"]["namespace"]
    policy = find(docs, "NetworkPolicy", f"{FULLNAME}-notebooks")
    assert policy["metadata"]["namespace"] == user_ns
    assert "Egress" in policy["spec"]["policyTypes"]
    # The policy must actually select users' pods, and nothing of the chart's own.
    assert selector_matches(policy["spec"]["podSelector"], _notebook_labels(docs))
    for name, template in pod_templates(docs):
        assert not selector_matches(policy["spec"]["podSelector"], template["metadata"]["labels"]), name

    values_tree = yaml.safe_load((VALUES_DIR / values).read_text(encoding="utf-8"))
    egress_on = (values_tree.get("egressProxy") or {}).get("enabled", True)
    internal = ((values_tree.get("networkPolicy") or {}).get("notebook") or {}).get("allowedInternal") or []
    dns = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["networkPolicy"]["dns"]

    # Not the proxy: a user's server never calls it, so it may not reach any of its ports.
    components = {"hub": (f"{FULLNAME}-hub", [(8081, "TCP")]), "proxy": (f"{FULLNAME}-proxy", [])}
    if egress_on:
        components["egress"] = (f"{FULLNAME}-egress", [(3128, "TCP")])
    seen: dict[str, list[tuple[Any, str]]] = {}
    seen_internal: list[str] = []
    for rule in policy["spec"]["egress"]:
        peers = rule.get("to")
        assert peers, f"an egress rule without 'to' allows every destination: {rule}"
        assert rule.get("ports"), f"an egress rule without ports allows every port: {rule}"
        for peer in peers:
            label = next((k for k, (dep, _) in components.items() if _peer_is(peer, _pod_labels(docs, dep), NAMESPACE, user_ns)), None)
            if label:
                seen[label] = _ports(rule)
                continue
            if peer.get("namespaceSelector") == dns["namespaceSelector"] and peer.get("podSelector") == dns["podSelector"]:
                seen["dns"] = _ports(rule)
                continue
            entry = next((e for e in internal if any(_same_peer(peer, want) for want in e["to"])), None)
            assert entry is not None, f"egress to something not listed in the values: {peer}"
            assert _ports(rule) == _ports(entry), entry["name"]
            seen_internal.append(entry["name"])
    expected = {k: ports for k, (_, ports) in components.items() if ports} | {"dns": [(53, "TCP"), (53, "UDP")]}
    assert seen == expected
    assert sorted(set(seen_internal)) == sorted(e["name"] for e in internal)


def _same_peer(rendered: Obj, wanted: Obj) -> bool:
    if "ipBlock" in wanted:
        # The chart may only narrow an ipBlock (cutting out the metadata address).
        got = rendered.get("ipBlock") or {}
        return got.get("cidr") == wanted["ipBlock"]["cidr"] and set(wanted["ipBlock"].get("except") or []) <= set(got.get("except") or [])
    return rendered == wanted


@pytest.mark.parametrize("values", VALUES_FILES)
def test_the_metadata_address_is_never_allowed(values: str) -> None:
    docs = render(values)
    policies = find_all(docs, "NetworkPolicy")
    assert policies, "NetworkPolicies are on by default"
    for policy in policies:
        for rule in policy["spec"].get("egress") or []:
            assert rule.get("to"), f"{policy['metadata']['name']}: egress to anywhere"
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    block = peer["ipBlock"]
                    assert not ip_block_allows(block, METADATA_V4), f"{policy['metadata']['name']}: {block}"
                    assert not ip_block_allows(block, METADATA_V6), f"{policy['metadata']['name']}: {block}"
    squid = [d for d in find_all(docs, "ConfigMap") if "squid.conf" in d.get("data", {})]
    for cm in squid:
        conf = cm["data"]["squid.conf"]
        metadata = re.search(r"^acl metadata dst (.+)$", conf, re.M)
        assert metadata and {"169.254.169.254/32", "fd00:ec2::254/128"} <= set(metadata.group(1).split())
        # Refused before anything is allowed, internal destinations included.
        allows = [i for i, line in enumerate(conf.splitlines()) if line.startswith("http_access allow")]
        assert conf.splitlines().index("http_access deny metadata") < min(allows)


def test_a_wide_internal_range_gets_the_metadata_address_cut_out() -> None:
    """The check above is not vacuous: custom-whitelist.yaml lists 169.254.0.0/16."""
    policy = find(render("custom-whitelist.yaml"), "NetworkPolicy", f"{FULLNAME}-notebooks")
    blocks = [p["ipBlock"] for r in policy["spec"]["egress"] for p in r["to"] if "ipBlock" in p]
    wide = next(b for b in blocks if b["cidr"] == "169.254.0.0/16")
    assert "169.254.169.254/32" in wide["except"] and "169.254.1.0/24" in wide["except"]
    narrow = next(b for b in blocks if b["cidr"] == "10.40.0.0/16")
    assert "except" not in narrow, "ranges without the metadata address are left alone"
    assert ip_block_allows(narrow, ipaddress.ip_address("10.40.1.2"))


@pytest.mark.parametrize("cidr,contains", [("0.0.0.0/0", True), ("128.0.0.0/1", True), ("169.254.169.0/24", True), ("169.254.168.0/24", False), ("10.0.0.0/8", False), ("169.254.169.255/32", False)])
def test_metadata_containment_arithmetic_in_the_template(cidr: str, contains: bool) -> None:
    overrides = {"networkPolicy": {"notebook": {"allowedInternal": [{"name": "x", "to": [{"ipBlock": {"cidr": cidr}}], "ports": [{"port": 80}]}]}}}
    policy = find(render("defaults.yaml", overrides=overrides), "NetworkPolicy", f"{FULLNAME}-notebooks")
    block = next(p["ipBlock"] for r in policy["spec"]["egress"] for p in r["to"] if "ipBlock" in p)
    assert ("169.254.169.254/32" in (block.get("except") or [])) is contains
    assert (ipaddress.ip_address("169.254.169.254") in ipaddress.ip_network(cidr)) is contains


@pytest.mark.parametrize("values", VALUES_FILES)
def test_component_policies_select_their_pods_and_let_users_in(values: str) -> None:
    docs = render(values)
    if find_all(docs, "NetworkPolicy") == []:
        pytest.skip("no NetworkPolicies in this values file")
    nb = _notebook_labels(docs)
    user_ns = hub_config(docs)["spawner"]["namespace"]
    for suffix, deployment in (("hub", "hub"), ("proxy", "proxy"), ("egress", "egress")):
        policies = [p for p in find_all(docs, "NetworkPolicy") if p["metadata"]["name"] == f"{FULLNAME}-{suffix}"]
        if not policies:
            assert suffix == "egress" and not [d for d in docs if d["metadata"]["name"] == f"{FULLNAME}-egress"]
            continue
        policy = policies[0]
        assert selector_matches(policy["spec"]["podSelector"], _pod_labels(docs, f"{FULLNAME}-{deployment}")), suffix
        if suffix in ("hub", "egress"):
            peers = [p for r in policy["spec"]["ingress"] for p in r.get("from", [])]
            assert any(_peer_is(p, nb, user_ns, NAMESPACE) for p in peers), f"users' servers cannot reach the {suffix}"


def test_egress_proxy_only_serves_users_servers() -> None:
    docs = render("custom-whitelist.yaml")
    policy = find(docs, "NetworkPolicy", f"{FULLNAME}-egress")
    peers = [p for r in policy["spec"]["ingress"] for p in r["from"]]
    assert len(peers) == 1 and _peer_is(peers[0], _notebook_labels(docs), "workspace-users", NAMESPACE)
    internet = [p["ipBlock"] for r in policy["spec"]["egress"] for p in r["to"] if "ipBlock" in p]
    v4 = next(b for b in internet if b["cidr"] == "0.0.0.0/0")
    v6 = next(b for b in internet if b["cidr"] == "::/0")
    # The non-public ranges and the operator's deniedDestinations, each in its own family.
    assert set(v4["except"]) == set(NON_PUBLIC_V4) | {"203.0.113.0/24"}
    assert set(v6["except"]) == set(NON_PUBLIC_V6) | {"2001:db8::/32"}
    # The internal destination the operator listed is the only private range it may reach.
    assert [b for b in internet if b["cidr"] not in ("0.0.0.0/0", "::/0")] == [{"cidr": "10.40.0.0/16"}]


def _squid_acl(docs: list[Obj], name: str) -> list[str]:
    conf = find(docs, "ConfigMap", f"{FULLNAME}-egress-config")["data"]["squid.conf"]
    match = re.search(rf"^acl {name} dst (.+)$", conf, re.M)
    assert match, name
    return match.group(1).split()


NON_PUBLIC_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3"]
NON_PUBLIC_V6 = ["::/128", "::1/128", "64:ff9b:1::/48", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8"]
# Addresses a whitelisted name must never lead to: the commons' private networks, the metadata
# services of AWS (v4, v6 and EKS Pod Identity), GCP, Azure, Alibaba (100.100.100.200), OCI.
INTERNAL_ADDRESSES = [
    "10.1.2.3", "172.16.5.4", "172.31.255.254", "192.168.1.1", "100.64.0.1", "100.100.100.200",
    "169.254.169.254", "169.254.170.23", "169.254.0.1", "127.0.0.1", "0.0.0.0", "192.0.0.192",
    "198.18.0.1", "224.0.0.251", "255.255.255.255",
    "::1", "::", "fd00:ec2::254", "fd12:3456::1", "fe80::1", "fec0::1", "ff02::1", "64:ff9b:1::a00:1",
]
PUBLIC_ADDRESSES = ["8.8.8.8", "1.1.1.1", "151.101.0.223", "100.63.255.255", "172.32.0.1", "2606:4700::1111", "2a00:1450:4001::200e"]


def test_squid_and_the_policy_refuse_every_non_public_range() -> None:
    docs = render("defaults.yaml")
    blocked = _squid_acl(docs, "blocked_destinations")
    assert blocked == NON_PUBLIC_V4 + NON_PUBLIC_V6
    networks = [ipaddress.ip_network(c) for c in blocked]
    for address in map(ipaddress.ip_address, INTERNAL_ADDRESSES):
        assert any(address in n for n in networks), f"{address} is not refused"
    for address in map(ipaddress.ip_address, PUBLIC_ADDRESSES):
        assert not any(address in n for n in networks), f"the public address {address} is refused"
    # Every listed range is a non-public one (Python's table of special-purpose ranges; its
    # start is enough: 192.0.0.0/24 holds two global anycast addresses no download needs).
    for n in networks:
        start = n.network_address
        assert not start.is_global or start.is_multicast or start.is_reserved or getattr(start, "is_site_local", False), n
    assert _squid_acl(docs, "metadata") == ["169.254.169.254/32", "fd00:ec2::254/128"]
    assert "acl internal_destinations" not in find(docs, "ConfigMap", f"{FULLNAME}-egress-config")["data"]["squid.conf"]
    policy = find(docs, "NetworkPolicy", f"{FULLNAME}-egress")
    blocks = {p["ipBlock"]["cidr"]: p["ipBlock"]["except"] for r in policy["spec"]["egress"] for p in r["to"] if "ipBlock" in p}
    assert blocks == {"0.0.0.0/0": NON_PUBLIC_V4, "::/0": NON_PUBLIC_V6}


def test_internal_destinations_are_the_only_exception_and_never_the_metadata_address() -> None:
    docs = render("custom-whitelist.yaml")
    assert _squid_acl(docs, "internal_destinations") == ["10.40.0.0/16"]
    conf = find(docs, "ConfigMap", f"{FULLNAME}-egress-config")["data"]["squid.conf"]
    assert "http_access deny blocked_destinations !internal_destinations" in conf.splitlines()
    wide = render("defaults.yaml", overrides={"egressProxy": {"internalDestinations": ["169.254.0.0/16"]}})
    policy = find(wide, "NetworkPolicy", f"{FULLNAME}-egress")
    internal = [p["ipBlock"] for r in policy["spec"]["egress"] for p in r["to"] if p.get("ipBlock", {}).get("cidr") == "169.254.0.0/16"]
    assert internal == [{"cidr": "169.254.0.0/16", "except": ["169.254.169.254/32"]}]


def test_squid_sends_no_via_header_and_no_client_address() -> None:
    conf = find(render("defaults.yaml"), "ConfigMap", f"{FULLNAME}-egress-config")["data"]["squid.conf"].splitlines()
    assert "via off" in conf and "forwarded_for delete" in conf


def test_the_squid_image_is_pinned_by_digest() -> None:
    container = find(render("defaults.yaml"), "Deployment", f"{FULLNAME}-egress")["spec"]["template"]["spec"]["containers"][0]
    assert re.fullmatch(r"ubuntu/squid:[\w.-]+@sha256:[0-9a-f]{64}", container["image"]), container["image"]
    out = template_text("defaults.yaml", overrides={"egressProxy": {"image": {"digest": "latest"}}})
    assert out.returncode != 0 and "digest" in out.stderr


def _hub_egress_addresses(policy: Obj) -> list[tuple[Obj, list[tuple[Any, str]]]]:
    return [(peer["ipBlock"], _ports(rule)) for rule in policy["spec"]["egress"] for peer in rule["to"] if "ipBlock" in peer]


# A sample of every private, shared, loopback and link-local range; none may be reachable from
# the hub by default except the API server's own addresses.
PRIVATE_SAMPLES = ["10.0.0.1", "10.255.1.2", "172.16.0.10", "172.31.255.1", "192.168.0.1", "192.168.200.9", "100.64.0.1", "127.0.0.1", "169.254.169.254", "169.254.10.1"]


@pytest.mark.parametrize("values", VALUES_FILES)
def test_hub_egress_is_what_it_talks_to(values: str) -> None:
    docs = render(values)
    if not find_all(docs, "NetworkPolicy"):
        return
    policy = find(docs, "NetworkPolicy", f"{FULLNAME}-hub")
    user_ns = hub_config(docs)["spawner"]["namespace"]
    tree = yaml.safe_load((VALUES_DIR / values).read_text(encoding="utf-8"))
    chart_defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    hub = chart_defaults["networkPolicy"]["hub"] | ((tree.get("networkPolicy") or {}).get("hub") or {})
    api = chart_defaults["networkPolicy"]["hub"]["apiServer"] | hub["apiServer"]
    fence = chart_defaults["networkPolicy"]["hub"]["fence"] | (hub.get("fence") or {})
    external_db = ((tree.get("hub") or {}).get("db") or {}).get("type") == "external"
    dns = chart_defaults["networkPolicy"]["dns"]
    seen = []
    for rule in policy["spec"]["egress"]:
        assert rule.get("to") and rule.get("ports"), f"egress without a destination or a port: {rule}"
        peers = rule["to"]
        if all("ipBlock" in p and p["ipBlock"]["cidr"] in api["cidrs"] for p in peers):
            assert sorted(p["ipBlock"]["cidr"] for p in peers) == sorted(api["cidrs"]) and not any(p["ipBlock"].get("except") for p in peers)
            seen.append(("api server", _ports(rule)))
            continue
        for peer in peers:
            if _peer_is(peer, _pod_labels(docs, f"{FULLNAME}-proxy"), NAMESPACE, NAMESPACE):
                # The engine has no API: the hub never calls it.
                seen.append(("proxy", _ports(rule)))
            elif _peer_is(peer, _notebook_labels(docs), user_ns, NAMESPACE):
                seen.append(("servers", _ports(rule)))
            elif peer.get("podSelector") == dns["podSelector"]:
                seen.append(("dns", _ports(rule)))
            elif fence["to"] and any(_same_peer(peer, want) for want in fence["to"]):
                seen.append(("fence", _ports(rule)))
            elif not fence["to"] and peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
                assert peer["ipBlock"]["except"] == NON_PUBLIC_V4, "Fence by default: the public internet only"
                seen.append(("fence", _ports(rule)))
            elif external_db and any(_same_peer(peer, want) for want in hub["database"]["to"]):
                seen.append(("database", _ports(rule)))
            else:
                entry = next(e for e in hub["allowedEgress"] if any(_same_peer(peer, want) for want in e["to"]))
                assert _ports(rule) == _ports(entry)
                seen.append((entry["name"], _ports(rule)))
    expected = [("servers", [("notebook-port", "TCP")]), ("dns", [(53, "TCP"), (53, "UDP")])]
    expected += [("api server", sorted((p, "TCP") for p in api["ports"])), ("fence", sorted((p, "TCP") for p in fence["ports"]))]
    if external_db:
        expected.append(("database", [(5432, "TCP")]))
    expected += [(e["name"], _ports(e)) for e in hub["allowedEgress"]]
    assert sorted(map(repr, seen)) == sorted(map(repr, expected))


def test_hub_egress_denies_every_private_range_but_the_api_server() -> None:
    """The render itself: no ipBlock of the hub's policy lets a private address through, on any port, but the API server's."""
    policy = find(render("defaults.yaml"), "NetworkPolicy", f"{FULLNAME}-hub")
    api_server = {ipaddress.ip_address("10.96.0.1"), ipaddress.ip_address("192.168.49.2")}
    for sample in map(ipaddress.ip_address, PRIVATE_SAMPLES):
        allowed = [(block, ports) for block, ports in _hub_egress_addresses(policy) if ip_block_allows(block, sample)]
        if sample in api_server:
            assert [ports for _, ports in allowed] == [[(443, "TCP"), (6443, "TCP")]], sample
        else:
            assert allowed == [], f"the hub may reach private address {sample}: {allowed}"
    # Fence by default: the public internet on 443 only.
    public = ipaddress.ip_address("198.51.100.10")
    assert [ports for block, ports in _hub_egress_addresses(policy) if ip_block_allows(block, public)] == [[(443, "TCP")]]


def test_hub_egress_needs_the_api_server_address_where_it_cannot_be_looked_up() -> None:
    out = template_text("defaults.yaml", overrides={"networkPolicy": {"hub": {"apiServer": {"cidrs": []}}}})
    assert out.returncode != 0
    assert "networkPolicy.hub.apiServer.cidrs is required" in out.stderr and "kubectl get endpoints kubernetes" in out.stderr
    off = template_text("defaults.yaml", overrides={"networkPolicy": {"enabled": False, "hub": {"apiServer": {"cidrs": []}}}})
    assert off.returncode == 0, off.stderr
    db = template_text("external-db.yaml", overrides={"networkPolicy": {"hub": {"database": {"to": []}}}})
    assert db.returncode != 0 and "networkPolicy.hub.database.to is required with hub.db.type=external" in db.stderr


def test_hub_egress_to_an_in_cluster_fence_by_selector() -> None:
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}}, "podSelector": {"matchLabels": {"app": "revproxy"}}}
    policy = find(render("defaults.yaml", overrides={"networkPolicy": {"hub": {"fence": {"to": [peer], "ports": [80, 443]}}}}), "NetworkPolicy", f"{FULLNAME}-hub")
    rules = [r for r in policy["spec"]["egress"] if peer in r["to"]]
    assert [_ports(r) for r in rules] == [[(80, "TCP"), (443, "TCP")]]
    assert not [b for b, _ in _hub_egress_addresses(policy) if b["cidr"] == "0.0.0.0/0"], "no internet when Fence is in the cluster"


# ---- hub, flavors, secrets ---------------------------------------------------------------------


def _hub_pod(docs: list[Obj]) -> Obj:
    return find(docs, "Deployment", f"{FULLNAME}-hub")["spec"]["template"]


def test_default_flavors_are_the_example_catalogue() -> None:
    docs = render("defaults.yaml")
    cm = find(docs, "ConfigMap", f"{FULLNAME}-flavors")
    rendered = yaml.safe_load(cm["data"]["flavors.yaml"])
    assert rendered == yaml.safe_load(default_catalogue_path().read_text(encoding="utf-8"))
    validate_catalogue(rendered, "rendered ConfigMap")


def test_gpu_flavor_catalogue_renders_for_the_hub() -> None:
    docs = render("gpu-flavor.yaml")
    rendered = yaml.safe_load(find(docs, "ConfigMap", f"{FULLNAME}-flavors")["data"]["flavors.yaml"])
    catalogue = validate_catalogue(rendered, "rendered ConfigMap")
    a100 = catalogue.get("a100")
    assert a100 and a100.gpu == 2 and a100.allowed_groups == ("gpu-users",) and a100.authz_resource == "/workspace-flavors/gpu"


def test_flavors_are_mounted_as_a_directory_where_the_hub_reads_them() -> None:
    docs = render("defaults.yaml")
    pod = _hub_pod(docs)
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    volume = next(v for v in pod["spec"]["volumes"] if v.get("configMap", {}).get("name") == f"{FULLNAME}-flavors")
    mount = mounts[volume["name"]]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    assert mount["mountPath"] + "/flavors.yaml" == hub_config(docs)["spawner"]["flavorFile"] == "/usr/local/etc/gen3-workspace/flavors/flavors.yaml"
    config_mount = next(m for m in mounts.values() if m["mountPath"] == "/usr/local/etc/gen3-workspace/config")
    assert "subPath" not in config_mount
    command = pod["spec"]["containers"][0]["command"]
    assert command == ["jupyterhub", "--config", "/usr/local/etc/gen3-workspace/config/jupyterhub_config.py"]


def test_a_catalogue_change_does_not_restart_the_hub_but_a_config_change_does() -> None:
    base = render("defaults.yaml")
    flavors = yaml.safe_load((VALUES_DIR / "gpu-flavor.yaml").read_text(encoding="utf-8"))["flavors"]
    changed_flavors = render("defaults.yaml", overrides={"flavors": flavors})
    assert find(base, "ConfigMap", f"{FULLNAME}-flavors") != find(changed_flavors, "ConfigMap", f"{FULLNAME}-flavors")
    assert _hub_pod(base) == _hub_pod(changed_flavors), "a flavor edit changed the hub's pod template (=> restart)"
    base_dep = find(base, "Deployment", f"{FULLNAME}-hub")
    changed_dep = find(changed_flavors, "Deployment", f"{FULLNAME}-hub")
    assert base_dep["metadata"]["annotations"]["checksum/flavors"] != changed_dep["metadata"]["annotations"]["checksum/flavors"]

    changed_config = render("defaults.yaml", overrides={"culler": {"timeout": 7200}})
    before = _hub_pod(base)["metadata"]["annotations"]["checksum/config"]
    after = _hub_pod(changed_config)["metadata"]["annotations"]["checksum/config"]
    assert before != after, "a hub config change must roll the hub"

    changed_secret = render("defaults.yaml", overrides={"auth": {"clientSecret": "rotated"}})
    assert _hub_pod(base)["metadata"]["annotations"]["checksum/secret-inputs"] != _hub_pod(changed_secret)["metadata"]["annotations"]["checksum/secret-inputs"]


def test_a_whitelist_change_restarts_only_the_egress_proxy() -> None:
    base = render("defaults.yaml")
    changed = render("defaults.yaml", overrides={"egressProxy": {"whitelist": {"domains": ["example.net"]}}})
    egress = lambda docs: find(docs, "Deployment", f"{FULLNAME}-egress")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]  # noqa: E731
    assert egress(base) != egress(changed)
    assert _hub_pod(base) == _hub_pod(changed)


def _secret_data(docs: list[Obj]) -> dict[str, str]:
    import base64

    secret = find(docs, "Secret", f"{FULLNAME}-hub")
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _env(pod: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


GENERATED_ENV = ("GEN3WS_COOKIE_SECRET", "JUPYTERHUB_CRYPT_KEY")


def test_hub_secret_carries_what_the_operator_gives_and_no_generated_key() -> None:
    docs = render("defaults.yaml")
    data = _secret_data(docs)
    assert data == {"client-secret": "not-a-real-secret"}, "no generated key in the render: the hub makes them"
    env = _env(_hub_pod(docs))
    assert env["GEN3WS_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": f"{FULLNAME}-hub", "key": "client-secret"}
    assert not [name for name in GENERATED_ENV if name in env], "the hub reads its generated keys itself"
    assert hub_config(docs)["hub"]["generatedKeys"] == {"secret": f"{FULLNAME}-hub", "namespace": NAMESPACE}
    # The engine has no API and so no token (configurable-http-proxy's is gone).
    assert "CONFIGPROXY_AUTH_TOKEN" not in env
    assert not find(docs, "Deployment", f"{FULLNAME}-proxy")["spec"]["template"]["spec"]["containers"][0].get("env")
    # The hub may read and patch that one Secret in the release namespace, nothing else there.
    keys_role = find(docs, "Role", f"{FULLNAME}-hub-keys")
    assert keys_role["metadata"]["namespace"] == NAMESPACE
    assert keys_role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [f"{FULLNAME}-hub"], "verbs": ["get", "patch"]}]


@pytest.mark.parametrize("values", ["defaults.yaml", "existing-secret.yaml", "hub-existing-secret.yaml", "external-db.yaml"])
def test_helm_template_twice_renders_the_same_secrets(values: str) -> None:
    """GitOps (Argo CD) renders with helm template and no cluster: every render must be the same."""
    first, second = template_text(values), template_text(values)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    docs = [d for d in yaml.safe_load_all(first.stdout) if d]
    for secret in find_all(docs, "Secret"):
        assert not set(secret.get("data") or {}) & {"cookie-secret", "crypt-key", "proxy-token"}, secret["metadata"]["name"]


def test_existing_secret_is_used_for_the_client_secret() -> None:
    docs = render("existing-secret.yaml")
    assert "client-secret" not in _secret_data(docs)
    env = _env(_hub_pod(docs))
    assert env["GEN3WS_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "fence-workspace-client", "key": "secret"}
    assert env["TZ"] == {"name": "TZ", "value": "UTC"}


def test_hub_existing_secret_gives_every_key_and_nothing_is_generated() -> None:
    docs = render("hub-existing-secret.yaml")
    env = _env(_hub_pod(docs))
    refs = {name: env[name]["valueFrom"]["secretKeyRef"] for name in (*GENERATED_ENV, "GEN3WS_CLIENT_SECRET")}
    assert refs == {
        "GEN3WS_COOKIE_SECRET": {"name": "workspace-keys", "key": "cookie"},
        "JUPYTERHUB_CRYPT_KEY": {"name": "workspace-keys", "key": "crypt"},
        "GEN3WS_CLIENT_SECRET": {"name": "workspace-keys", "key": "client-secret"},
    }
    assert _secret_data(docs) == {}, "the chart's Secret holds nothing the operator's gives"
    assert hub_config(docs)["hub"]["generatedKeys"] == {}
    assert [r["metadata"]["name"] for r in find_all(docs, "Role")] == [f"{FULLNAME}-hub"], "no right on the release namespace's Secrets"


def test_generated_keys_an_older_release_stored_are_kept_on_upgrade() -> None:
    """With a cluster (helm upgrade), keys already in the Secret are rendered as they are, so helm's merge keeps them."""
    text = (CHART / "templates" / "hub" / "secret.yaml").read_text(encoding="utf-8")
    assert re.search(r'lookup "v1" "Secret" \.Release\.Namespace \$name', text)
    assert re.search(r"hasKey \$old \$key", text) and re.search(r"index \$old \$key", text)
    assert not re.search(r"\b(rand(AlphaNum|Alpha|Numeric|Ascii|Bytes|Int)|uuidv4|genPrivateKey)\b", text), "the chart must never generate a value: each render would differ"


def test_sqlite_on_a_pvc_by_default() -> None:
    docs = render("defaults.yaml")
    pvc = find(docs, "PersistentVolumeClaim", f"{FULLNAME}-hub-db")
    pod = _hub_pod(docs)
    data = next(v for v in pod["spec"]["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert hub_config(docs)["hub"]["db"] == {"type": "sqlite", "url": "", "sqlitePath": "/srv/jupyterhub/jupyterhub.sqlite"}
    assert find(docs, "Deployment", f"{FULLNAME}-hub")["spec"]["strategy"] == {"type": "Recreate"}


def test_external_db_has_no_pvc_and_a_password_from_the_secret() -> None:
    docs = render("external-db.yaml")
    assert not find_all(docs, "PersistentVolumeClaim")
    pod = _hub_pod(docs)
    assert next(v for v in pod["spec"]["volumes"] if v["name"] == "data") == {"name": "data", "emptyDir": {}}
    assert _env(pod)["GEN3WS_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": f"{FULLNAME}-hub", "key": "db-password"}
    assert _secret_data(docs)["db-password"] == "db-password-for-tests"
    db = hub_config(docs)["hub"]["db"]
    assert db["type"] == "external" and db["url"].startswith("postgresql+psycopg://jupyterhub@") and "db-password-for-tests" not in db["url"]


def test_external_db_password_from_an_existing_secret() -> None:
    docs = render("external-db-existing-secret.yaml")
    assert _env(_hub_pod(docs))["GEN3WS_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "hub-db", "key": "pg-password"}
    assert "db-password" not in _secret_data(docs)
    both = render("external-db.yaml", overrides={"hub": {"db": {"existingSecret": {"name": "hub-db"}}}})
    assert _env(_hub_pod(both))["GEN3WS_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "hub-db", "key": "password"}
    assert "db-password" not in _secret_data(both), "the Secret wins; the password in values is not stored"
    a, b = render("external-db-existing-secret.yaml"), render("external-db-existing-secret.yaml", overrides={"hub": {"db": {"existingSecret": {"name": "other"}}}})
    assert _hub_pod(a)["metadata"]["annotations"]["checksum/secret-inputs"] != _hub_pod(b)["metadata"]["annotations"]["checksum/secret-inputs"]


@pytest.mark.parametrize("values", ["defaults.yaml", "external-db.yaml"])
def test_writable_folders_are_empty_dirs_on_a_read_only_root(values: str) -> None:
    docs = render(values)
    for name, template in pod_templates(docs):
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for c in template["spec"]["containers"]:
            writable = {m["mountPath"]: volumes[m["name"]] for m in c.get("volumeMounts", []) if not m.get("readOnly")}
            # nginx writes only under its prefix; everything else wants a /tmp.
            scratch = "/var/run/gen3-engine" if name.endswith("-proxy") else "/tmp"
            assert scratch in writable and "emptyDir" in writable[scratch], name
            for path, volume in writable.items():
                assert "emptyDir" in volume or "persistentVolumeClaim" in volume, (name, path)
            if name.endswith("-hub"):
                assert "/srv/jupyterhub" in writable, "the hub's database folder"
            if name.endswith("-egress"):
                assert "/var/run/squid" in writable


def test_ingress_routes_the_base_url_to_proxy_public() -> None:
    docs = render("ingress.yaml")
    ingress = find(docs, "Ingress")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "workspace.example.org"
    path = rule["http"]["paths"][0]
    assert path["path"] == "/" and path["backend"]["service"] == {"name": f"{FULLNAME}-proxy-public", "port": {"name": "http"}}
    assert find(docs, "Service", f"{FULLNAME}-proxy-public")["spec"]["ports"][0]["name"] == "http"
    assert ingress["spec"]["tls"] == [{"hosts": ["workspace.example.org"], "secretName": "workspace-tls"}]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert hub_config(docs)["auth"]["callbackUrl"] == "https://workspace.example.org/hub/oauth_callback"
    assert not find_all(render("defaults.yaml"), "Ingress")


def test_spawner_proxy_env_points_at_the_egress_service() -> None:
    docs = render("defaults.yaml")
    service = find(docs, "Service", f"{FULLNAME}-egress")
    port = service["spec"]["ports"][0]["port"]
    assert hub_config(docs)["spawner"]["egressProxy"] == f"http://{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{port}"
    selector = service["spec"]["selector"]
    assert selector_matches({"matchLabels": selector}, _pod_labels(docs, f"{FULLNAME}-egress"))

    off = render("egress-off.yaml")
    assert hub_config(off)["spawner"]["egressProxy"] == ""
    assert not [d for d in off if "egress" in d["metadata"]["name"] and d["kind"] != "NetworkPolicy"]
    assert not [d for d in off if d["metadata"]["name"] == f"{FULLNAME}-egress"]


def test_services_select_their_pods() -> None:
    docs = render("defaults.yaml")
    pods = {name: t["metadata"]["labels"] for name, t in pod_templates(docs)}
    for service in find_all(docs, "Service"):
        matched = [n for n, labels in pods.items() if selector_matches({"matchLabels": service["spec"]["selector"]}, labels)]
        assert len(matched) == 1, (service["metadata"]["name"], matched)
        template = next(t for n, t in pod_templates(docs) if n == matched[0])
        named = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named, (service["metadata"]["name"], port)


def test_hub_connects_through_the_rendered_services() -> None:
    docs = render("custom-whitelist.yaml")
    config = hub_config(docs)
    hub_svc = find(docs, "Service", f"{FULLNAME}-hub")
    assert config["hub"]["connectUrl"] == f"http://{hub_svc['metadata']['name']}.{NAMESPACE}.svc:{hub_svc['spec']['ports'][0]['port']}"
    assert config["spawner"]["namespace"] == "workspace-users"
    assert config["spawner"]["noProxy"] == ["fence-service.gen3.svc.cluster.local", "indexd-service"]
    engine = find(docs, "ConfigMap", f"{FULLNAME}-proxy")["data"]["nginx.conf"]
    assert f"server {hub_svc['metadata']['name']}.{NAMESPACE}.svc:{hub_svc['spec']['ports'][0]['port']};" in engine


def test_whitelist_file_is_deduplicated_for_squid() -> None:
    cm = find(render("custom-whitelist.yaml"), "ConfigMap", f"{FULLNAME}-egress-config")
    # api.github.com is covered by .github.com; squid would complain (or drop an entry) if both were listed.
    assert cm["data"]["whitelist.txt"].split() == [".github.com", ".pypi.org", ".pythonhosted.org", "cran.r-project.org", "huggingface.co"]
    default = find(render("defaults.yaml"), "ConfigMap", f"{FULLNAME}-egress-config")["data"]["whitelist.txt"].split()
    assert "data.example.org" in default and ".pypi.org" in default


def test_notes_tell_the_operator_what_to_do_next() -> None:
    notes = notes_text("defaults.yaml")
    assert "https://data.example.org/workspace/" in notes
    assert "fence-create client-create" in notes and "https://data.example.org/workspace/hub/oauth_callback" in notes
    assert f"configmap {FULLNAME}-flavors" in notes and f"{FULLNAME}-egress-config" in notes
    assert "helm uninstall` keeps them and the namespace" in notes
    assert f'namespace "{NAMESPACE}-workspace-users"' in notes and '"restricted" profile' in notes
    assert "pod-security.kubernetes.io/enforce=restricted" in notes_text("external-db-existing-secret.yaml")
    off = notes_text("egress-off.yaml")
    assert "egress proxy is disabled" in off and "no internet access" in off


def test_notes_warn_about_a_flavor_restricted_by_a_group_fence_never_fills(tmp_path: Path) -> None:
    assert "WARNING: flavor" not in notes_text("defaults.yaml"), "the default catalogue restricts by resource"
    assert "WARNING: flavor" not in notes_text("gpu-flavor.yaml"), "auth.authzGroups makes gpu-users"
    grouped = yaml.safe_load((VALUES_DIR / "gpu-flavor.yaml").read_text(encoding="utf-8"))
    grouped["auth"]["authzGroups"] = {}
    path = tmp_path / "grouped.yaml"
    path.write_text(yaml.safe_dump(grouped), encoding="utf-8")
    notes = notes_text(str(path))
    assert 'WARNING: flavor "a100" is restricted by allowed_groups (gpu-users)' in notes
    assert "`groups` is empty for access granted by arborist policies" in notes


def test_release_name_and_namespace_are_what_the_helpers_assume() -> None:
    docs = render("defaults.yaml")
    user_ns = f"{NAMESPACE}-workspace-users"
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs if d["kind"] not in ("Namespace", "Role", "RoleBinding") and d["metadata"]["name"] != f"{FULLNAME}-notebooks")
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] in ("Role", "RoleBinding") and not d["metadata"]["name"].endswith("-hub-keys")} == {user_ns}
    assert hub_config(docs)["release"] == {"name": RELEASE, "namespace": NAMESPACE}
    json.dumps(docs)  # every object is plain data
    assert Path(CHART / "Chart.yaml").exists()
