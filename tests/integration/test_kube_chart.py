"""The Helm chart against a real kube-apiserver: install, upgrade, the hub's RBAC, and a refused install."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from gen3workspace.hub import chartconfig
from tests.helm.chart import BAD_VALUES_DIR, NAMESPACE, VALUES_DIR, helm, render
from tests.support.chart_install import (
    chart_configs,
    fullname,
    generated_secret_values,
    hub_kubeconfig,
    hub_service_account,
    install_chart,
    users_namespace,
)
from tests.support.kube_fixtures import *  # noqa: F403 - the kube_bed/kube_namespace fixtures
from tests.support.kubebed import KubeBed, k8s_body

pytestmark = pytest.mark.k8s

Obj = dict[str, Any]
# (apiVersion, kind) -> (URL plural, namespaced?, verbs)
Resource = tuple[str, bool, frozenset[str]]

# Keys the chart generates itself and must keep for the life of the release.
GENERATED_KEYS = ("cookie-secret", "crypt-key")
KLOG_WARNING = re.compile(r"^W\d{4} ", re.MULTILINE)


# --- raw API access ----------------------------------------------------------------------


async def raw(api: k8s.ApiClient, method: str, path: str, *, body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
    """One request as the ApiClient's identity; the status and the decoded JSON body.

    Raw rather than typed: the tests walk every kind the chart renders, and a typed
    client would need a method per kind and would hide fields it has no model for.
    """
    resp: Any = await api.call_api(
        path, method,
        header_params={"Accept": "application/json", "Content-Type": content_type},
        # The REST layer JSON-encodes the body for JSON and apply-patch content types.
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    text = await resp.read()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, text.decode(errors="replace")


async def discover(api: k8s.ApiClient) -> dict[tuple[str, str], Resource]:
    """Every top-level resource the API server serves, by (apiVersion, kind)."""
    group_versions = ["v1"]
    status, groups = await raw(api, "GET", "/apis")
    assert status == 200, groups
    group_versions += [g["preferredVersion"]["groupVersion"] for g in groups["groups"]]
    found: dict[tuple[str, str], Resource] = {}
    for gv in group_versions:
        status, listing = await raw(api, "GET", "/api/v1" if gv == "v1" else f"/apis/{gv}")
        assert status == 200, listing
        for r in listing["resources"]:
            if "/" not in r["name"]:  # subresources such as pods/exec
                found[(gv, r["kind"])] = (r["name"], r["namespaced"], frozenset(r.get("verbs") or ()))
    return found


def object_path(resources: dict[tuple[str, str], Resource], obj: Obj, default_namespace: str) -> str:
    key = (obj["apiVersion"], obj["kind"])
    assert key in resources, f"the API server does not serve {key} (rendered as {obj['metadata']['name']})"
    plural, namespaced, _verbs = resources[key]
    prefix = "/api/v1" if obj["apiVersion"] == "v1" else f"/apis/{obj['apiVersion']}"
    if namespaced:
        prefix += f"/namespaces/{obj['metadata'].get('namespace') or default_namespace}"
    return f"{prefix}/{plural}/{obj['metadata']['name']}"


async def everything_in(api: k8s.ApiClient, resources: dict[tuple[str, str], Resource], namespace: str) -> set[tuple[str, str]]:
    """(kind, name) of every object of every listable namespaced kind in `namespace`, Events aside.

    Events are the cluster's reports, not anyone's objects: the apiserver's own
    ipallocator-repair-controller now and then races a new Service and records a
    ClusterIPNotAllocated event on it.
    """
    seen: set[tuple[str, str]] = set()
    for (gv, kind), (plural, namespaced, verbs) in resources.items():
        if not namespaced or "list" not in verbs or kind == "Event":
            continue
        prefix = "/api/v1" if gv == "v1" else f"/apis/{gv}"
        status, listing = await raw(api, "GET", f"{prefix}/namespaces/{namespace}/{plural}")
        assert status == 200, f"listing {plural}: {listing}"
        seen |= {(kind, item["metadata"]["name"]) for item in listing["items"]}
    return seen


# --- helm ---------------------------------------------------------------------------------


def release_manifest(bed: KubeBed, namespace: str, release: str = "ws") -> list[Obj]:
    out = helm("get", "manifest", release, "--namespace", namespace, "--kubeconfig", str(bed.kubeconfig))
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def values_file(name: str, folder: Path = VALUES_DIR) -> dict[str, Any]:
    return yaml.safe_load((folder / name).read_text(encoding="utf-8")) or {}


def names(docs: Iterable[Obj]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


# --- install --------------------------------------------------------------------------------


@pytest.mark.parametrize("values_name", ["defaults.yaml", "ingress.yaml", "gpu-flavor.yaml"])
async def test_install_creates_every_rendered_object(kube_bed: KubeBed, kube_namespace: str, values_name: str) -> None:
    """Every object of the release is accepted, stored as rendered, and nothing else is created."""
    result = install_chart(kube_bed, kube_namespace, values=values_file(values_name))
    # The API server's warnings (e.g. an unknown field it dropped, a deprecated API) reach
    # helm's stderr as klog warning lines.
    assert not KLOG_WARNING.search(result.stderr), result.stderr

    manifest = release_manifest(kube_bed, kube_namespace)
    # What helm sent is what the chart renders offline: no object went missing on the way.
    # (Offline the release namespace is tests.helm.chart's; the users' namespace is named after it.)
    offline = {(kind, name.replace(users_namespace(NAMESPACE), users_namespace(kube_namespace))) for kind, name in names(render(values_name))}
    assert names(manifest) == offline

    async with kube_bed.admin_client() as api:
        resources = await discover(api)
        for obj in manifest:
            path = object_path(resources, obj, kube_namespace)
            status, stored = await raw(api, "GET", path)
            assert status == 200, f"{obj['kind']} {obj['metadata']['name']}: GET {path} -> {status}: {stored}"
            meta = obj["metadata"]
            for field in ("labels", "annotations"):
                wanted = meta.get(field) or {}
                got = stored["metadata"].get(field) or {}
                assert {k: got.get(k) for k in wanted} == wanted, f"{obj['kind']} {meta['name']} {field}"
            if obj["kind"] == "ConfigMap":
                assert stored.get("data") == obj.get("data"), f"ConfigMap {meta['name']} data"

            # A strict server-side dry run: an unknown or misplaced field that a lenient
            # create silently dropped is an error here.
            status, answer = await raw(
                api, "PATCH",
                f"{path}?dryRun=All&fieldManager=chart-test&fieldValidation=Strict&force=true",
                body=obj, content_type="application/apply-patch+yaml",
            )
            assert status == 200, f"{obj['kind']} {meta['name']} fails strict validation: {answer}"

        # The release's record is the only object helm adds to the namespace; ServiceAccount
        # "default" came with the namespace.
        in_namespace = await everything_in(api, resources, kube_namespace)
    namespaced = {
        (d["kind"], d["metadata"]["name"])
        for d in manifest
        if resources[(d["apiVersion"], d["kind"])][1] and d["metadata"].get("namespace", kube_namespace) == kube_namespace
    }
    extra = in_namespace - namespaced - {("ServiceAccount", "default"), ("Secret", "sh.helm.release.v1.ws.v1")}
    assert namespaced <= in_namespace
    assert not extra, f"objects in {kube_namespace} that the chart did not render: {sorted(extra)}"


# --- upgrade ---------------------------------------------------------------------------------


async def hub_deployment(bed: KubeBed, namespace: str) -> Obj:
    async with bed.admin_client() as api:
        status, dep = await raw(api, "GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{fullname()}-hub")
    assert status == 200, dep
    return dict(dep)


async def flavors_configmap(bed: KubeBed, namespace: str) -> dict[str, str]:
    async with bed.admin_client() as api:
        cm = await k8s.CoreV1Api(api).read_namespaced_config_map(f"{fullname()}-flavors", namespace)
    return dict(cm.data or {})


def hub_generates_keys(bed: KubeBed, namespace: str, tmp_path: Path) -> dict[str, str]:
    """What the hub's config layer makes of the installed chart's config, as the hub's ServiceAccount, with no key in its env."""
    config, _ = chart_configs(bed, namespace)
    kubeconfig = hub_kubeconfig(bed, namespace, tmp_path / "hub-kubeconfig")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", str(kubeconfig))
        # Outside a pod: the in-cluster config must not be found, so the kubeconfig is used.
        mp.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        got = chartconfig.generated_keys(yaml.safe_load(config), {})
    return {key: got[env] for key, env in chartconfig.GENERATED_KEYS.items()}


async def test_upgrade_keeps_keys_and_restarts_the_hub_only_for_hub_config(kube_bed: KubeBed, kube_namespace: str, tmp_path: Path) -> None:
    ns = kube_namespace
    install_chart(kube_bed, ns)
    assert not set(generated_secret_values(kube_bed, ns)) & set(GENERATED_KEYS), "the chart renders no generated key"
    # The hub's first start writes them, as its ServiceAccount.
    keys = hub_generates_keys(kube_bed, ns, tmp_path)
    assert {k: len(v) for k, v in keys.items()} == dict.fromkeys(GENERATED_KEYS, 64), "each generated key is 32 bytes of hex"
    assert {k: v for k, v in generated_secret_values(kube_bed, ns).items() if k in GENERATED_KEYS} == keys
    assert hub_generates_keys(kube_bed, ns, tmp_path) == keys, "a second start reads the keys back"
    hub = await hub_deployment(kube_bed, ns)
    catalogue = await flavors_configmap(kube_bed, ns)

    # A different flavor catalogue.
    gpu_flavors = {"flavors": values_file("gpu-flavor.yaml")["flavors"]}
    install_chart(kube_bed, ns, values=gpu_flavors, upgrade=True)
    after_catalogue = await hub_deployment(kube_bed, ns)
    new_catalogue = await flavors_configmap(kube_bed, ns)
    assert new_catalogue != catalogue, "the flavors ConfigMap did not follow the new catalogue"
    assert "a100" in new_catalogue["flavors.yaml"]
    # The deployment controller rolls out a new ReplicaSet exactly when the pod template
    # changes. (metadata.generation is no guide: the apiserver bumps it for a change of the
    # Deployment's own annotations too, such as checksum/flavors, which restarts nothing.)
    assert after_catalogue["spec"]["template"]["metadata"]["annotations"] == hub["spec"]["template"]["metadata"]["annotations"]
    assert after_catalogue["spec"]["template"] == hub["spec"]["template"]

    # A hub config value: the hub has to restart to read it.
    install_chart(kube_bed, ns, values={**gpu_flavors, "culler": {"timeout": 7200}}, upgrade=True)
    after_config = await hub_deployment(kube_bed, ns)
    before_annotations = after_catalogue["spec"]["template"]["metadata"]["annotations"]
    after_annotations = after_config["spec"]["template"]["metadata"]["annotations"]
    assert after_annotations != before_annotations, "a hub config change left the hub's pod template alone"

    # Two upgrades later the generated keys are the ones of the first install.
    # (Named, not shown: even test keys stay out of failure output.)
    final_keys = generated_secret_values(kube_bed, ns)
    assert [k for k in GENERATED_KEYS if final_keys.get(k) != keys[k]] == [], "generated keys changed on upgrade"


# --- RBAC ------------------------------------------------------------------------------------

# (verb, group, resource, where): USER is the users' namespace the chart made, RELEASE the
# commons' namespace the chart is installed into, OTHER any other namespace, "" cluster-wide.
ALLOWED = [
    ("list", "", "pods", "USER"),
    ("watch", "", "pods", "USER"),
    ("create", "", "pods", "USER"),
    ("delete", "", "pods", "USER"),
    ("list", "", "events", "USER"),
    ("watch", "", "events", "USER"),
    ("get", "", "persistentvolumeclaims", "USER"),
    ("create", "", "persistentvolumeclaims", "USER"),
    ("create", "", "secrets", "USER"),
    ("get", "", "secrets", "USER"),
    ("update", "", "secrets", "USER"),
    ("delete", "", "secrets", "USER"),
]
DENIED = [
    # Only Secrets it knows the name of, even in the users' namespace.
    ("list", "", "secrets", "USER"),
    ("watch", "", "secrets", "USER"),
    ("patch", "", "secrets", "USER"),
    # Users' drives outlive every hub bug.
    ("delete", "", "persistentvolumeclaims", "USER"),
    ("patch", "", "persistentvolumeclaims", "USER"),
    ("create", "", "services", "USER"),
    ("create", "", "pods/exec", "USER"),
    # Nothing in the commons' namespace but its own Secret by name (checked on its own): not the
    # commons' Secrets, pods or config, no new Secret.
    ("create", "", "secrets", "RELEASE"),
    ("get", "", "secrets", "RELEASE"),
    ("list", "", "secrets", "RELEASE"),
    ("list", "", "pods", "RELEASE"),
    ("create", "", "pods", "RELEASE"),
    ("get", "", "configmaps", "RELEASE"),
    ("get", "", "secrets", "OTHER"),
    ("create", "", "pods", "OTHER"),
    ("create", "", "namespaces", ""),
    ("list", "", "nodes", ""),
    ("list", "", "pods", ""),
    ("list", "", "secrets", ""),
    # No way to grant itself more.
    ("create", "rbac.authorization.k8s.io", "rolebindings", "USER"),
]


def expand(rules: Iterable[Obj]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for r in rules
        for group in r.get("apiGroups") or []
        for resource in r.get("resources") or []
        for verb in r.get("verbs") or []
    }


async def rules_in(api: k8s.ApiClient, namespace: str) -> set[tuple[str, str, str]]:
    """What the ApiClient's identity may do in `namespace`, as (group, resource, verb)."""
    answer = await k8s.AuthorizationV1Api(api).create_self_subject_rules_review(k8s_body({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }))
    assert not answer.status.incomplete, answer.status.evaluation_error
    return expand(api.sanitize_for_serialization(answer.status.resource_rules))


async def test_hub_service_account_has_exactly_the_charts_rbac(kube_bed: KubeBed, kube_namespace: str, tmp_path: Path) -> None:
    ns, users = kube_namespace, users_namespace(kube_namespace)
    other = f"t-other-{uuid.uuid4().hex[:8]}"
    await kube_bed.create_namespace(other)
    install_chart(kube_bed, ns)
    async with kube_bed.admin_client() as api:
        v1 = k8s.CoreV1Api(api)
        # A key Secret the hub made (here: as if), a Secret of the commons, one elsewhere.
        await v1.create_namespaced_secret(users, k8s_body({"metadata": {"name": "gen3-credentials-alice"}, "stringData": {"k": "v"}}))
        await v1.create_namespaced_secret(ns, k8s_body({"metadata": {"name": "fence-jwt-keys"}, "stringData": {"k": "v"}}))
        await v1.create_namespaced_secret(other, k8s_body({"metadata": {"name": "victim"}, "stringData": {"k": "v"}}))
        roles = (await k8s.RbacAuthorizationV1Api(api).list_role_for_all_namespaces(label_selector="app.kubernetes.io/instance=ws")).items
        mine = sorted((r for r in roles if r.metadata.namespace in (ns, users)), key=lambda r: r.metadata.name)
        assert [(r.metadata.namespace, r.metadata.name) for r in mine] == [(users, f"{fullname()}-hub"), (ns, f"{fullname()}-hub-keys")], "a Role in the users' namespace, and one for the hub's own Secret"
        role_rules = expand(api.sanitize_for_serialization(mine[0])["rules"])
        keys_rules = api.sanitize_for_serialization(mine[1])["rules"]
    assert keys_rules == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [f"{fullname()}-hub"], "verbs": ["get", "patch"]}]
    assert role_rules, "the hub Role has no rules"

    # What the hub itself will use: the kubeconfig KubeSpawner gets in the hub tests.
    cfg = k8s.Configuration()
    await k8s_config.load_kube_config(config_file=str(hub_kubeconfig(kube_bed, ns, tmp_path / "kubeconfig")), client_configuration=cfg)
    async with k8s.ApiClient(cfg) as api:
        review = await k8s.AuthenticationV1Api(api).create_self_subject_review(k8s_body({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}))
        assert review.status.user_info.username == f"system:serviceaccount:{ns}:{hub_service_account()}"

        authz = k8s.AuthorizationV1Api(api)

        async def allowed(verb: str, group: str, resource: str, where: str, name: str = "") -> bool:
            target = {"USER": users, "RELEASE": ns, "OTHER": other}.get(where, where)
            resource, _, sub = resource.partition("/")
            attributes = {"verb": verb, "group": group, "resource": resource, "namespace": target, "subresource": sub, "name": name}
            answer = await authz.create_self_subject_access_review(k8s_body({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }))
            return bool(answer.status.allowed)

        hub_secret = f"{fullname()}-hub"
        verdicts = {case: await allowed(*case) for case in ALLOWED + DENIED}
        # Its own Secret in the commons' namespace, by name: read and patch (the generated keys), nothing else.
        named = {verb: await allowed(verb, "", "secrets", "RELEASE", hub_secret) for verb in ("get", "patch", "update", "delete")}
        assert named == {"get": True, "patch": True, "update": False, "delete": False}
        assert not await allowed("get", "", "secrets", "RELEASE", "fence-jwt-keys")
        assert [c for c in ALLOWED if not verdicts[c]] == [], "the hub lacks permissions it needs"
        assert [c for c in DENIED if verdicts[c]] == [], "the hub has permissions it must not have"

        # Not just the review: the API itself answers. The hub reads a key Secret by name in the
        # users' namespace (so a 403 below is RBAC, not a broken token), cannot list the Secrets
        # there, and cannot touch the commons' namespace at all.
        v1 = k8s.CoreV1Api(api)
        assert (await v1.read_namespaced_secret("gen3-credentials-alice", users)).data["k"]
        for call in (
            v1.list_namespaced_secret(users),
            v1.read_namespaced_secret("fence-jwt-keys", ns),
            v1.list_namespaced_secret(ns),
            v1.list_namespaced_pod(ns),
            v1.list_namespaced_config_map(ns),
            v1.read_namespaced_secret("victim", other),
        ):
            with pytest.raises(k8s.ApiException) as refused:
                await call
            assert refused.value.status == 403

        hub_in_users, hub_in_release, hub_in_other = await rules_in(api, users), await rules_in(api, ns), await rules_in(api, other)

    # Exactly the Role: compared with a ServiceAccount the chart knows nothing of, the hub
    # may do the Role's rules in the users' namespace and nothing more anywhere (a stray
    # ClusterRoleBinding would show up everywhere). The baseline is what the cluster's
    # bootstrap policy grants every identity (self reviews, ClusterTrustBundles, ...).
    async with kube_bed.token_client(await kube_bed.service_account_token(ns, "default")) as api:
        base_in_users, base_in_release, base_in_other = await rules_in(api, users), await rules_in(api, ns), await rules_in(api, other)
    assert hub_in_users - base_in_users == role_rules
    # The keys Role (get and patch, limited to the hub's own Secret by resourceNames, checked above).
    assert hub_in_release - base_in_release == {("", "secrets", "get"), ("", "secrets", "patch")}
    assert hub_in_other - base_in_other == set()


# --- the users' namespace and Pod Security ---------------------------------------------------

PRIVILEGED_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "escape"},
    "spec": {
        "hostPID": True,
        "containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}],
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
    },
}
ROOT_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "root"},
    "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"runAsUser": 0}}]},
}


async def test_the_users_namespace_enforces_pod_security_restricted(kube_bed: KubeBed, kube_namespace: str, tmp_path: Path) -> None:
    ns, users = kube_namespace, users_namespace(kube_namespace)
    install_chart(kube_bed, ns)
    async with kube_bed.admin_client() as api:
        v1 = k8s.CoreV1Api(api)
        labels = (await v1.read_namespace(users)).metadata.labels
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        # Refused even for the cluster admin: admission, not RBAC.
        for pod in (PRIVILEGED_POD, ROOT_POD):
            with pytest.raises(k8s.ApiException) as refused:
                await v1.create_namespaced_pod(users, k8s_body(pod))
            assert refused.value.status == 403 and "violates PodSecurity" in refused.value.body, refused.value.body
            assert 'restricted:latest' in refused.value.body
        # The control: the same pod passes admission in a namespace without the label.
        await v1.create_namespaced_pod(ns, k8s_body(PRIVILEGED_POD), dry_run="All")

    cfg = k8s.Configuration()
    await k8s_config.load_kube_config(config_file=str(hub_kubeconfig(kube_bed, ns, tmp_path / "kubeconfig")), client_configuration=cfg)
    async with k8s.ApiClient(cfg) as api:
        # The hub may create pods there, and still not a privileged one.
        with pytest.raises(k8s.ApiException) as refused:
            await k8s.CoreV1Api(api).create_namespaced_pod(users, k8s_body(PRIVILEGED_POD))
        assert refused.value.status == 403 and "violates PodSecurity" in refused.value.body


async def test_the_charts_own_pods_meet_pod_security_restricted(kube_bed: KubeBed, kube_namespace: str) -> None:
    """An operator may label the commons' namespace "restricted" too: the hub, proxy and squid pods pass."""
    ns = kube_namespace
    async with kube_bed.admin_client() as api:
        v1 = k8s.CoreV1Api(api)
        await v1.patch_namespace(ns, k8s_body({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}))
        install_chart(kube_bed, ns)
        templates = [d for d in release_manifest(kube_bed, ns) if d["kind"] == "Deployment"]
        assert {d["metadata"]["name"] for d in templates} == {f"{fullname()}-{c}" for c in ("hub", "proxy", "egress")}
        for deployment in templates:
            template = deployment["spec"]["template"]
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": deployment["metadata"]["name"], "labels": template["metadata"]["labels"]}, "spec": template["spec"]}
            # No controller-manager here: the pod the ReplicaSet would create, through admission.
            await v1.create_namespaced_pod(ns, k8s_body(pod), dry_run="All")
        with pytest.raises(k8s.ApiException) as refused:
            await v1.create_namespaced_pod(ns, k8s_body(ROOT_POD), dry_run="All")
        assert "violates PodSecurity" in refused.value.body


async def test_the_users_namespace_outlives_uninstall_and_is_adopted_again(kube_bed: KubeBed, kube_namespace: str) -> None:
    ns, users = kube_namespace, users_namespace(kube_namespace)
    install_chart(kube_bed, ns)
    out = helm("uninstall", "ws", "--namespace", ns, "--kubeconfig", str(kube_bed.kubeconfig))
    assert out.returncode == 0, out.stderr
    async with kube_bed.admin_client() as api:
        kept = await k8s.CoreV1Api(api).read_namespace(users)
    assert kept.metadata.deletion_timestamp is None, "helm uninstall must keep the users' drives' namespace"
    # The same release installed again takes it back.
    install_chart(kube_bed, ns)


async def test_a_namespace_the_operator_made_is_refused_unless_told_to_use_it(kube_bed: KubeBed, kube_namespace: str) -> None:
    ns = kube_namespace
    users = f"{ns}-by-hand"
    await kube_bed.create_namespace(users, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    with pytest.raises(AssertionError) as failed:
        install_chart(kube_bed, ns, values={"spawner": {"namespace": users}})
    assert f'the namespace "{users}" already exists and release "ws" does not own it' in str(failed.value)
    assert "spawner.createNamespace=false" in str(failed.value)

    install_chart(kube_bed, ns, values={"spawner": {"namespace": users, "createNamespace": False}})
    async with kube_bed.admin_client() as api:
        role = await k8s.RbacAuthorizationV1Api(api).read_namespaced_role(f"{fullname()}-hub", users)
        namespace = await k8s.CoreV1Api(api).read_namespace(users)
    assert role.rules
    assert "meta.helm.sh/release-name" not in (namespace.metadata.annotations or {}), "the chart must not take over the operator's namespace"


# --- a refused install -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["misspelled-key.yaml", "default-flavor-missing.yaml"])
async def test_bad_values_create_nothing(kube_bed: KubeBed, kube_namespace: str, bad: str) -> None:
    """Refused by the schema (misspelled key) or by a template check: the message names the key, the namespace stays empty."""
    expect = (BAD_VALUES_DIR / bad).read_text(encoding="utf-8").splitlines()[0].removeprefix("# expect:").strip()
    assert expect, f"{bad} has no '# expect:' first line"
    with pytest.raises(AssertionError) as failed:
        install_chart(kube_bed, kube_namespace, values=values_file(bad, BAD_VALUES_DIR))
    assert expect in str(failed.value)

    async with kube_bed.admin_client() as api:
        left = await everything_in(api, await discover(api), kube_namespace)
    assert left == {("ServiceAccount", "default")}, f"a failed install left objects behind: {sorted(left)}"
