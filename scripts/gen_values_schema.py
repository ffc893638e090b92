#!/usr/bin/env python3
"""Generates the Helm chart's values.yaml and values.schema.json from one description of its values.

The description below (VALUES) is the single source of every values key: its default, its
JSON Schema and its help text. The flavor part comes from the spawner's own catalogue schema
(`gen3workspace.spawner.flavors.catalogue_json_schema()`) and its defaults from the example
catalogue, so the chart rejects exactly the catalogues the hub rejects.

    .venv/bin/python scripts/gen_values_schema.py           write both files
    .venv/bin/python scripts/gen_values_schema.py --check   exit 1 if either committed file is stale
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from gen3workspace.spawner import grammar
from gen3workspace.spawner.flavors import catalogue_json_schema, default_catalogue_path
from gen3workspace.spawner.safeyaml import read_yaml_file

# The generators' shared helper sits beside them; they run as scripts and are loaded by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_common import write_or_check  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "gen3-workspace"
VALUES_YAML = CHART / "values.yaml"
SCHEMA_JSON = CHART / "values.schema.json"

# Helm 3.17 validates values with gojsonschema, which knows drafts 4-7 only: the catalogue's
# own "$schema" (2020-12) must not leak into the chart schema.
DRAFT = "http://json-schema.org/draft-07/schema#"


@dataclass
class Leaf:
    """One values key with a default; `schema` is its JSON Schema without description/default."""

    schema: dict[str, Any]
    default: Any
    description: str
    # Flow style keeps small nested mappings (flavor cpu/memory) on one line in values.yaml.
    flow: bool = False


@dataclass
class Group:
    """A mapping of values keys; unknown keys inside it are refused."""

    description: str
    children: dict[str, "Node"]
    # Extra schema keywords (if/then) for rules that tie several children together.
    extra: dict[str, Any] = field(default_factory=dict)


Node = Union[Leaf, Group]


# ---- reusable schema fragments --------------------------------------------------------------

_CATALOGUE = catalogue_json_schema()
_FLAVOR_PROPS = _CATALOGUE["properties"]["flavors"]["items"]["properties"]
# The Kubernetes toleration shape is already written down once, in the flavor schema.
TOLERATIONS = copy.deepcopy(_FLAVOR_PROPS["tolerations"])
TOLERATIONS.pop("description", None)
CPU = copy.deepcopy(_FLAVOR_PROPS["cpu"]["properties"]["limit"])
MEMORY = copy.deepcopy(_FLAVOR_PROPS["memory"]["properties"]["limit"])

STRING = {"type": "string"}
BOOL = {"type": "boolean"}
# Label keys and values have a Kubernetes grammar; the flavor schema wrote them down once.
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_MAP = {
    "type": "object",
    "propertyNames": grammar.string(grammar.LABEL_KEY, 317),
    "additionalProperties": grammar.string(grammar.LABEL_VALUE, 63),
}
ENV_MAP = {
    "type": "object",
    "propertyNames": grammar.string(grammar.ENV_NAME, 255),
    "additionalProperties": grammar.string(grammar.TEXT, 32768),
}
STRING_LIST = {"type": "array", "items": {"type": "string", "minLength": 1}}
PULL_POLICY = {"enum": ["Always", "IfNotPresent", "Never"]}
DNS_NAME = grammar.DNS_NAME_BODY
IPV4_CIDR = grammar.IPV4_CIDR
ANY_CIDR = grammar.ANY_CIDR
PORT = grammar.PORT_SCHEMA
# An OCI content digest as container runtimes accept it after '@'.
DIGEST = r"^sha256:[a-f0-9]{64}$"
# The squid image's digest, for egressProxy.image.tag. NOT checked against the registry (the
# machines this chart is built on cannot reach one): the release process replaces it with the
# digest the registry reports for the tag (docs/operator-guide.md, "Releasing the chart").
# The nginx image's digest, for proxy.image.tag: NOT checked against the registry either, for
# the same reason; the release process replaces it the same way.
NGINX_DIGEST = "sha256:0d0dd4ba1ef5d46ff1e67f4e1ee8e3ad8ea4ec1ae6d5cd00ad6e8a7c6e0e9f43"
SQUID_DIGEST = "sha256:6a097f68bae708cedbabd6188d68c7e2e7a38cedd05a176e1cc0ba29e3bbe029"
# Squid port ACL entries: a port or an inclusive range "1025-65535" (first <= last: the chart's template checks).
PORT_OR_RANGE = {"oneOf": [PORT, {"type": "string", "pattern": grammar.PORT_RANGE}]}
CSP_SOURCES = {"type": "array", "items": grammar.string(grammar.CSP_SOURCE, 512)}
NO_PROXY_LIST = {"type": "array", "items": grammar.string(grammar.NO_PROXY_ENTRY, 253)}
# A whitelist entry must not be a public suffix (".com", ".co.uk"): it would open every site under it.
# The exceptions of the list (e.g. www.ck under *.ck) are registrable names, so they pass.
# Defined once in the schema ("definitions") and referenced: the list is long.
NOT_PUBLIC_SUFFIX = {
    "anyOf": [
        {"not": {"pattern": grammar.public_suffix_pattern()}},
        {"enum": [p + e for e in grammar.public_suffix_rules()[2] for p in ("", ".")]},
    ],
}
_NOT_PUBLIC_REF = {"$ref": "#/definitions/notPublicSuffix"}
DOMAIN = {**grammar.string(grammar.DOMAIN, 253), "allOf": [_NOT_PUBLIC_REF]}
WILDCARD_DOMAIN = {**grammar.string(grammar.WILDCARD_DOMAIN, 254), "allOf": [_NOT_PUBLIC_REF]}
COMMONS_URL = grammar.string(grammar.COMMONS_URL, 300)


def quantities(what: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "description": f"Resource {what} of the container.",
        "properties": {
            "cpu": {**CPU, "description": f"CPU {what}: cores (0.5) or millicores ('500m')."},
            "memory": {**MEMORY, "description": f"Memory {what}: a quantity such as '512Mi'."},
            "ephemeral-storage": {**MEMORY, "description": f"Scratch disk {what}: a quantity such as '1Gi'."},
        },
    }


RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"requests": quantities("requests"), "limits": quantities("limits")},
}

LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "description": "A Kubernetes label selector.",
    "properties": {
        "matchLabels": {**LABEL_MAP, "description": "Labels that must all match."},
        "matchExpressions": {
            "type": "array",
            "description": "Set-based requirements, all of which must match.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": grammar.string(grammar.LABEL_KEY, 317),
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": grammar.string(grammar.LABEL_VALUE, 63)},
                },
            },
        },
    },
}

NETPOL_PEER = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    # Kubernetes refuses an ipBlock combined with selectors in one peer.
    "if": {"required": ["ipBlock"]},
    "then": {"maxProperties": 1},
    "properties": {
        "podSelector": {**LABEL_SELECTOR, "description": "Pods (in the namespaces picked by namespaceSelector, else in the notebooks' namespace)."},
        "namespaceSelector": {**LABEL_SELECTOR, "description": "Namespaces whose pods may be reached."},
        "ipBlock": {
            "type": "object",
            "additionalProperties": False,
            "required": ["cidr"],
            "description": "An IPv4 range. The cloud metadata address is always cut out of it by the chart.",
            "properties": {
                "cidr": {"type": "string", "pattern": IPV4_CIDR, "description": "IPv4 CIDR, e.g. 10.20.0.0/16."},
                "except": {
                    "type": "array",
                    "items": {"type": "string", "pattern": IPV4_CIDR},
                    "description": "Sub-ranges of cidr to leave out.",
                },
            },
        },
    },
}

NETPOL_PORTS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["port"],
        "properties": {
            "port": {"oneOf": [PORT, {"type": "string", "pattern": grammar.PORT_NAME}]},
            "endPort": PORT,
            "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
        },
    },
}

ALLOWED_INTERNAL = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "to", "ports"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "What this service is (kept as a comment in the policy)."},
            "to": {"type": "array", "minItems": 1, "items": NETPOL_PEER, "description": "NetworkPolicy peers: where the service runs."},
            "ports": {**NETPOL_PORTS, "description": "Ports of the service notebooks may connect to."},
        },
    },
}


def image(repository: str, tag: str, what: str, repository_help: str, tag_help: str, digest: str | None = None) -> Group:
    children: dict[str, Node] = {
        "repository": Leaf(STRING, repository, repository_help),
        "tag": Leaf(STRING, tag, tag_help),
    }
    if digest is not None:
        children["digest"] = Leaf(
            {"type": "string", "pattern": DIGEST},
            digest,
            f"Required. Content digest of the {what} image (sha256:<64 hex digits>); the image is pulled as <repository>:<tag>@<digest>, so a moved tag cannot change what runs. The release process fills it from the tag (docs/operator-guide.md).",
        )
    children["pullPolicy"] = Leaf(PULL_POLICY, "IfNotPresent", "When the kubelet pulls the image.")
    return Group(f"Container image of the {what}.", children)


def security(uid: int, what: str, gid: int | None = None, fs_group: bool = False, note: str = "") -> Group:
    gid = uid if gid is None else gid
    children: dict[str, Node] = {
        "runAsUser": Leaf({"type": "integer", "minimum": 1}, uid, f"Non-root user id the {what} runs as.{note}"),
        "runAsGroup": Leaf({"type": "integer", "minimum": 1}, gid, f"Group id the {what} runs as."),
    }
    if fs_group:
        children["fsGroup"] = Leaf({"type": "integer", "minimum": 1}, gid, f"Group that owns the {what}'s volumes, so the hub can write its database.")
    return Group(
        f"User and group of the {what}. Root, privilege escalation and all capabilities are always refused by the chart.",
        children,
    )


def placement(what: str) -> dict[str, Node]:
    return {
        "nodeSelector": Leaf(LABEL_MAP, {}, f"Node labels the {what} pods must be placed on."),
        "tolerations": Leaf(TOLERATIONS, [], f"Tolerations of the {what} pods (Kubernetes toleration objects)."),
    }


def resources(default: dict[str, Any], what: str) -> Leaf:
    return Leaf(RESOURCES, default, f"CPU and memory requests and limits of the {what} container.")


# ---- the values -------------------------------------------------------------------------------

DEFAULT_WILDCARDS = [
    ".pypi.org",
    ".pythonhosted.org",
    ".anaconda.org",
    ".anaconda.com",
    ".r-project.org",
    ".bioconductor.org",
    ".posit.co",
    ".github.com",
    ".githubusercontent.com",
    ".s3.amazonaws.com",
]
DEFAULT_DOMAINS = ["cran.rstudio.com", "storage.googleapis.com"]


def _default_flavors() -> dict[str, Any]:
    # Loaded, never copied by hand: the chart's default catalogue is the shipped example.
    return read_yaml_file(default_catalogue_path(), "flavor catalogue")


VALUES = Group(
    "Values of the gen3-workspace chart.",
    {
        "nameOverride": Leaf(STRING, "", "Replaces the chart name in resource names."),
        "fullnameOverride": Leaf(STRING, "", "Replaces the whole '<release>-<chart>' prefix of resource names."),
        "imageRegistry": Leaf(
            {"type": "string", "minLength": 1},
            "quay.io/gen3-workspace",
            "Registry and organisation of the workspace's own images (the hub image is <imageRegistry>/<hub.image.name>). Point it at a mirror for air-gapped clusters.",
        ),
        "imagePullSecrets": Leaf(STRING_LIST, [], "Names of Secrets in the release namespace used to pull the chart's images."),
        "clusterDomain": Leaf({"type": "string", "pattern": f"^{DNS_NAME}$"}, "cluster.local", "DNS domain of the cluster, used in the in-cluster URL of the egress proxy."),
        "commons": Group(
            "The Gen3 data commons this workspace belongs to.",
            {
                "url": Leaf(
                    COMMONS_URL,
                    "",
                    "Required. Public URL of the commons, e.g. https://data.mycommons.org (Fence lives at <url>/user). Users' servers get it as GEN3_ENDPOINT.",
                ),
                "name": Leaf(STRING, "", "Name of the commons on the login button ('Sign in with <name>'). Empty: the hub's default."),
                "logoUrl": Leaf(STRING, "", "URL of the commons' logo, shown with its name at the top of every hub page (instead of JupyterHub's). Empty: the name only."),
            },
        ),
        "auth": Group(
            "Login through the commons' Fence (OAuth2) and who may use the workspace.",
            {
                "clientId": Leaf(STRING, "", "Required. OAuth client id registered in Fence for this workspace (see NOTES.txt or docs/operator-guide.md)."),
                "clientSecret": Leaf(STRING, "", "OAuth client secret from Fence. Stored in the hub Secret. Leave empty and set existingSecret to keep it out of values files."),
                "existingSecret": Group(
                    "A Secret you manage that holds the OAuth client secret; used instead of clientSecret.",
                    {
                        "name": Leaf(STRING, "", "Name of the Secret, in the release namespace. Empty: use clientSecret."),
                        "key": Leaf({"type": "string", "minLength": 1}, "client-secret", "Key in that Secret holding the client secret."),
                    },
                ),
                "workspace": Group(
                    "The Fence (arborist) permission a user needs to use the workspace at all.",
                    {
                        "required": Leaf(BOOL, True, "Refuse users who lack the permission below. Turn off only for a commons where every user may use the workspace."),
                        "resource": Leaf({"type": "string", "pattern": "^/"}, "/workspace", "Authz resource path."),
                        "service": Leaf({"type": "string", "minLength": 1}, "jupyterhub", "Authz service name."),
                        "method": Leaf({"type": "string", "minLength": 1}, "access", "Authz method."),
                    },
                ),
                "adminGroups": Leaf(
                    STRING_LIST,
                    [],
                    "Fence groups whose members are full JupyterHub admins, who can open every user's server (and so use that user's Fence API key).",
                ),
                "fenceAdmins": Group(
                    "Users Fence calls is_admin.",
                    {
                        "enabled": Leaf(
                            BOOL,
                            True,
                            "Give them the hub role gen3-fence-admin: the admin page, the users and their servers' status, start and stop servers; not users' servers, tokens or login state (docs/security.md).",
                        ),
                        "serverAccess": Leaf(
                            BOOL,
                            False,
                            "Make them full JupyterHub admins instead, who can open every user's server and so use that user's Fence API key. Off unless your commons really wants that.",
                        ),
                    },
                ),
                "authzGroups": Leaf(
                    STRING_MAP,
                    {},
                    "Map of Fence authz resource path to a JupyterHub group name: users holding the workspace permission on the resource join the group (flavors' allowed_groups can name it).",
                ),
                "logoutRedirectUrl": Leaf(STRING, "", "Where users land after logging out of the workspace. Empty: the hub's default."),
            },
        ),
        "hub": Group(
            "The JupyterHub hub.",
            {
                "image": Group(
                    "Container image of the hub.",
                    {
                        "name": Leaf({"type": "string", "minLength": 1}, "hub", "Image name under imageRegistry."),
                        "tag": Leaf(STRING, "", "Image tag. Empty: the chart's appVersion."),
                        "pullPolicy": Leaf(PULL_POLICY, "IfNotPresent", "When the kubelet pulls the image."),
                    },
                ),
                "host": Leaf(
                    {"type": "string", "pattern": f"^({DNS_NAME}(:[0-9]+)?)?$"},
                    "",
                    "Public host name users reach the workspace at. Empty: the host of commons.url (the commons' reverse proxy routes hub.baseUrl to the proxy-public Service).",
                ),
                "baseUrl": Leaf({"type": "string", "pattern": "^/([^\\s]*/)?$"}, "/workspace/", "URL path prefix of the workspace, starting and ending with '/'."),
                "oauthCallbackUrl": Leaf(
                    {"type": "string", "pattern": r"^(https?://\S+)?$"},
                    "",
                    "OAuth callback URL registered in Fence. Empty: https://<hub.host><hub.baseUrl>hub/oauth_callback.",
                ),
                "frameAncestors": Leaf(
                    CSP_SOURCES,
                    [],
                    "Extra origins allowed to show the workspace in a frame (CSP frame-ancestors); 'self' and the commons URL are always allowed.",
                ),
                "db": Group(
                    "The hub's database of users and servers.",
                    {
                        "type": Leaf({"enum": ["sqlite", "external"]}, "sqlite", "'sqlite': a file on a PersistentVolumeClaim. 'external': a database at db.url (e.g. PostgreSQL)."),
                        "pvc": Group(
                            "The PersistentVolumeClaim of the sqlite database.",
                            {
                                "size": Leaf(MEMORY, "1Gi", "Size of the volume."),
                                "storageClassName": Leaf(STRING, "", "StorageClass of the volume. Empty: the cluster default."),
                            },
                        ),
                        "url": Leaf(
                            {"type": "string", "pattern": r"^([a-z0-9+]+://\S*)?$"},
                            "",
                            "SQLAlchemy URL of the external database without the password, e.g. postgresql+psycopg://jupyterhub@db.example.org:5432/jupyterhub.",
                        ),
                        "password": Leaf(STRING, "", "Password of the external database; stored in the hub Secret and added to db.url by the hub. Leave empty and set existingSecret to keep it out of values files."),
                        "existingSecret": Group(
                            "A Secret you manage that holds the external database's password; used instead of password.",
                            {
                                "name": Leaf(STRING, "", "Name of the Secret, in the release namespace. Empty: use password."),
                                "key": Leaf({"type": "string", "minLength": 1}, "password", "Key in that Secret holding the password."),
                            },
                        ),
                    },
                    extra={
                        "if": {"properties": {"type": {"const": "external"}}, "required": ["type"]},
                        "then": {"properties": {"url": {"minLength": 1}}, "required": ["url"]},
                    },
                ),
                # --- the hub's generated keys (stable under helm template) ---
                "existingSecret": Group(
                    "A Secret you manage with the hub's cookie secret and auth_state crypt key (each 32 random bytes as 64 hex digits: openssl rand -hex 32). Empty name: the hub generates them at its first start and keeps them in the chart's hub Secret, the same on every render and upgrade (docs/operator-guide.md). The OAuth client secret can live in the same Secret: set auth.existingSecret to its name and key.",
                    {
                        "name": Leaf(STRING, "", "Name of the Secret, in the release namespace. Empty: the hub generates and keeps the keys."),
                        "cookieSecretKey": Leaf({"type": "string", "minLength": 1}, "cookie-secret", "Key holding the cookie secret (hex). Changing it logs everyone out."),
                        "cryptKeyKey": Leaf({"type": "string", "minLength": 1}, "crypt-key", "Key holding the auth_state crypt key. Changing it makes every stored login state unreadable (users log in again)."),
                    },
                ),
                "resources": resources({"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}, "hub"),
                **placement("hub"),
                "securityContext": security(1000, "hub", gid=100, fs_group=True, note=" 1000:100 is the hub image's own user."),
                "extraEnv": Leaf(ENV_MAP, {}, "Extra environment variables of the hub container."),
                "config": Leaf(
                    {"type": "object", "additionalProperties": {"type": "object"}},
                    {},
                    "Traitlets passthrough, as in Zero to JupyterHub: {ClassName: {trait: value}} merged into the hub's config after everything the chart sets, e.g. {JupyterHub: {log_level: DEBUG}}.",
                ),
                "extraConfig": Leaf(
                    {"type": "object", "additionalProperties": {"type": "string"}},
                    {},
                    "Named Python snippets run at the end of the hub's config, in key order, with `c` in scope.",
                ),
            },
        ),
        "proxy": Group(
            "The public proxy engine (nginx with auth_request): carries users' traffic to the hub and, when the hub's decision allows it, to their own servers (docs/architecture.md). Stateless, so it scales out.",
            {
                "image": image(
                    "nginxinc/nginx-unprivileged",
                    "1.28.0-alpine",
                    "proxy engine",
                    "Image repository of nginx: an unprivileged build (runs as a non-root user on an unprivileged port) with http_auth_request_module.",
                    "Image tag of nginx (informational: the digest decides what runs).",
                    digest=NGINX_DIGEST,
                ),
                "replicas": Leaf({"type": "integer", "minimum": 1}, 2, "Replicas of the engine. 2 or more with the PodDisruptionBudget keep users connected through node drains; the decision cache is per replica."),
                "decisionCacheSeconds": Leaf(
                    {"type": "integer", "minimum": 1, "maximum": 60},
                    2,
                    "How long the engine reuses the hub's \"allowed\" answer for the same credentials, server, Origin and Upgrade (denials never) without asking again. The answer names the server's address, which a restarted server gives up to someone else's: keep it short. While the hub cannot answer (a restart) answers up to 10 minutes old keep serving, as no server starts or moves without the hub.",
                ),
                "service": Group(
                    "The proxy-public Service, where users' traffic enters.",
                    {
                        "type": Leaf({"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "ClusterIP", "Service type. ClusterIP when the commons' reverse proxy or an Ingress sits in front."),
                        "port": Leaf(PORT, 80, "Service port."),
                        "annotations": Leaf(STRING_MAP, {}, "Annotations of the Service (e.g. for a cloud load balancer)."),
                    },
                ),
                "resources": resources({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}, "proxy"),
                **placement("proxy"),
                "securityContext": security(101, "proxy", note=" 101 is the unprivileged nginx image's own user."),
            },
        ),
        "culler": Group(
            "jupyterhub-idle-culler, run as a hub service: stops idle servers (the users' drives stay).",
            {
                "enabled": Leaf(BOOL, True, "Run the culler."),
                "timeout": Leaf({"type": "integer", "minimum": 60}, 3600, "Seconds of inactivity after which a server is stopped."),
                "every": Leaf({"type": "integer", "minimum": 10}, 600, "Seconds between checks."),
                "maxAge": Leaf({"type": "integer", "minimum": 0}, 0, "Stop servers older than this many seconds even when busy; 0: never."),
                "concurrency": Leaf({"type": "integer", "minimum": 1}, 10, "How many servers the culler stops at once."),
            },
        ),
        "spawner": Group(
            "Users' servers (Gen3KubeSpawner).",
            {
                "namespace": Leaf(
                    {"type": "string", "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", "maxLength": 63},
                    "",
                    "Namespace of users' servers, drives and credential Secrets; never the release namespace. Empty: <release namespace>-workspace-users. The hub's Role and the notebooks' NetworkPolicy are created there.",
                ),
                "createNamespace": Leaf(
                    BOOL,
                    True,
                    "Create spawner.namespace, labelled pod-security.kubernetes.io/enforce=restricted and kept by helm uninstall (the users' drives live in it). false: use a namespace you created and labelled yourself (docs/operator-guide.md).",
                ),
                "issueApiKey": Leaf(BOOL, True, "Mint a Fence API key per server start so the Gen3 SDK and gen3-client work with no upload; revoked when the server stops."),
                "egressProxyUrl": Leaf(
                    {"type": "string", "pattern": r"^(https?://\S+)?$"},
                    "",
                    "HTTP(S)_PROXY of users' servers. Empty: the chart's egress proxy when egressProxy.enabled, else no proxy. Allow its pods in networkPolicy.notebook.allowedInternal if it runs elsewhere.",
                ),
                "noProxy": Leaf(NO_PROXY_LIST, [], "Extra host names or domains users' servers reach directly, not through the egress proxy (the hub, .svc, .cluster.local and localhost always are)."),
                "drive": Group(
                    "Each user's persistent drive: one PersistentVolumeClaim per user, kept when servers stop and when the chart is uninstalled.",
                    {
                        "size": Leaf(MEMORY, "10Gi", "Size of a new user's drive."),
                        "storageClass": Leaf(STRING, "", "StorageClass of the drives. Empty: the cluster default."),
                        "mountPath": Leaf({"type": "string", "pattern": "^/"}, "/home/jovyan", "Where the drive is mounted in the user's server (by default it is their home folder)."),
                    },
                ),
            },
        ),
        "flavors": Leaf(
            {k: v for k, v in _CATALOGUE.items() if k not in ("$schema", "title")},
            _default_flavors(),
            "The flavor catalogue, in the same format as the hub's catalogue file (gen3-workspace flavors validate FILE checks it). Rendered into a ConfigMap the hub reloads without a restart.",
            flow=True,
        ),
        "egressProxy": Group(
            "The egress proxy (squid): users' servers reach the internet only through it, and only the whitelisted domains.",
            {
                "enabled": Leaf(BOOL, True, "Deploy the egress proxy and point users' servers at it."),
                "replicas": Leaf({"type": "integer", "minimum": 1}, 1, "Number of squid pods."),
                "image": image("ubuntu/squid", "6.6-24.04_edge", "egress proxy", "Image repository of squid.", "Image tag of squid (informational: the digest decides what runs).", digest=SQUID_DIGEST),
                "port": Leaf(PORT, 3128, "Port squid listens on."),
                "whitelist": Group(
                    "Domains users' servers may reach. Everything else is refused.",
                    {
                        "domains": Leaf(
                            {"type": "array", "items": DOMAIN},
                            DEFAULT_DOMAINS,
                            "Exact host names, e.g. cran.rstudio.com (its subdomains are not included).",
                        ),
                        "wildcardDomains": Leaf(
                            {"type": "array", "items": WILDCARD_DOMAIN},
                            DEFAULT_WILDCARDS,
                            "Domains with a leading dot, e.g. .pypi.org: the domain itself and every subdomain.",
                        ),
                        "includeCommons": Leaf(BOOL, True, "Also allow the host of commons.url, so the Gen3 SDK works through the proxy."),
                    },
                ),
                "sslPorts": Leaf({"type": "array", "minItems": 1, "items": PORT_OR_RANGE}, [443], "Ports HTTPS (CONNECT) may go to."),
                "safePorts": Leaf({"type": "array", "minItems": 1, "items": PORT_OR_RANGE}, [80, 443], "Ports any request may go to."),
                "allowedClients": Leaf(
                    {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": ANY_CIDR}},
                    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"],
                    "Source addresses squid serves (pod networks). The NetworkPolicy further limits clients to users' servers.",
                ),
                "deniedDestinations": Leaf(
                    {"type": "array", "items": {"type": "string", "pattern": ANY_CIDR}},
                    [],
                    "Further addresses squid never connects to, even for a whitelisted name (squid and its NetworkPolicy). Every private, shared, loopback and link-local range (IPv4 and IPv6) and the cloud metadata addresses are always refused.",
                ),
                "internalDestinations": Leaf(
                    {"type": "array", "items": {"type": "string", "pattern": IPV4_CIDR}},
                    [],
                    "Internal IPv4 ranges a whitelisted name may resolve to and still be reached, e.g. a commons service on 10.20.0.0/16 (squid and its NetworkPolicy). The cloud metadata address is refused even inside them.",
                ),
                "resources": resources({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}, "egress proxy"),
                **placement("egress proxy"),
                "securityContext": security(13, "egress proxy", note=" 13 is the 'proxy' user of the squid image."),
            },
        ),
        "networkPolicy": Group(
            "NetworkPolicies of the hub, proxy, egress proxy and users' servers.",
            {
                "enabled": Leaf(BOOL, True, "Create the NetworkPolicies (needs a CNI that enforces them)."),
                "dns": Group(
                    "Where the cluster DNS runs; every component may reach it on port 53.",
                    {
                        "namespaceSelector": Leaf(LABEL_SELECTOR, {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}, "Namespace of the DNS pods."),
                        "podSelector": Leaf(LABEL_SELECTOR, {"matchLabels": {"k8s-app": "kube-dns"}}, "Labels of the DNS pods."),
                    },
                ),
                "notebook": Group(
                    "Users' servers may reach only the egress proxy, the hub, the proxy, DNS and the services listed here.",
                    {
                        "allowedInternal": Leaf(
                            ALLOWED_INTERNAL,
                            [],
                            "Internal services users' servers may reach directly: a list of {name, to: [NetworkPolicy peers], ports: [{port, protocol}]}.",
                        ),
                    },
                ),
                "hub": Group(
                    "The hub may reach only the proxy's API, users' servers, DNS, the Kubernetes API server, Fence, its external database and what allowedEgress lists.",
                    {
                        # --- the hub's egress (only what it talks to) ---
                        "apiServer": Group(
                            "The Kubernetes API server.",
                            {
                                "cidrs": Leaf(
                                    {"type": "array", "items": {"type": "string", "pattern": IPV4_CIDR}},
                                    [],
                                    "Addresses of the API server as IPv4 CIDRs: the 'kubernetes' Service's address and its endpoints' (kubectl get service kubernetes -n default -o jsonpath='{.spec.clusterIP}'; kubectl get endpoints kubernetes -n default -o jsonpath='{.subsets[*].addresses[*].ip}'). Empty: helm install and upgrade look them up; helm template (Argo CD, Flux) then fails asking for them.",
                                ),
                                "ports": Leaf(
                                    {"type": "array", "minItems": 1, "items": PORT},
                                    [443, 6443],
                                    "Ports of the API server: the Service's (443) and the endpoints' (often 6443; a looked-up endpoint port is added).",
                                ),
                            },
                        ),
                        "fence": Group(
                            "Fence, which the hub reaches at commons.url (login, token refresh, API keys).",
                            {
                                "to": Leaf(
                                    {"type": "array", "items": NETPOL_PEER},
                                    [],
                                    "NetworkPolicy peers of Fence: an ipBlock of the commons' load balancer, or a podSelector with a namespaceSelector when the hub reaches an in-cluster revproxy or Fence. Empty: the public internet only (every private, shared, loopback and link-local range is left out), for a commons.url with a public address.",
                                ),
                                "ports": Leaf({"type": "array", "minItems": 1, "items": PORT}, [443], "TCP ports of Fence (commons.url)."),
                            },
                        ),
                        "database": Group(
                            "The external database (hub.db.type=external).",
                            {
                                "to": Leaf(
                                    {"type": "array", "items": NETPOL_PEER},
                                    [],
                                    "NetworkPolicy peers of the database: a podSelector with a namespaceSelector in the cluster, or an ipBlock of its address. Required with hub.db.type=external.",
                                ),
                                "ports": Leaf({"type": "array", "minItems": 1, "items": PORT}, [5432], "TCP ports of the database."),
                            },
                        ),
                        "allowedEgress": Leaf(
                            ALLOWED_INTERNAL,
                            [],
                            "Anything else the hub must reach, as {name, to: [NetworkPolicy peers], ports}. The cloud metadata address is always cut out.",
                        ),
                    },
                ),
            },
        ),
        "portal": Group(
            "The Gen3 data portal's Workspace page: the launcher API it calls and how users' servers are kept apart (docs/portal.md).",
            {
                "enabled": Leaf(BOOL, True, "Serve the launcher API (options, launch, status, proxy/, terminate) at portal.prefix."),
                "prefix": Leaf(
                    {"type": "string", "pattern": r"^/([^/\s]+/)+$"},
                    "/lw-workspace/",
                    "Path of the launcher API: the portal's WORKSPACE_URL (default /lw-workspace/). Set hub.baseUrl to the same path and one revproxy location serves everything.",
                ),
                "cookieSameSite": Leaf(
                    {"enum": ["Lax", "Strict"]},
                    "Lax",
                    "SameSite of the hub's and the servers' cookies. Both keep the portal's same-site iframe working; Strict also drops them on links from other sites.",
                ),
            },
        ),
        "ingress": Group(
            "An optional Ingress in front of proxy-public.",
            {
                "enabled": Leaf(BOOL, False, "Create the Ingress."),
                "className": Leaf(STRING, "", "IngressClass name. Empty: the cluster default."),
                "annotations": Leaf(STRING_MAP, {}, "Annotations of the Ingress."),
                "tlsSecretName": Leaf(STRING, "", "Secret with the TLS certificate for hub.host. Empty: no TLS section."),
            },
        ),
    },
)


# ---- rendering ----------------------------------------------------------------------------------


def to_schema(node: Node) -> dict[str, Any]:
    """The JSON Schema of a node; unknown keys fail so typos are caught at install time."""
    if isinstance(node, Leaf):
        out = copy.deepcopy(node.schema)
        out["description"] = node.description
        out["default"] = copy.deepcopy(node.default)
        return out
    out = {
        "type": "object",
        "description": node.description,
        "additionalProperties": False,
        "properties": {k: to_schema(v) for k, v in node.children.items()},
    }
    out.update(copy.deepcopy(node.extra))
    return out


def build_schema() -> dict[str, Any]:
    schema = {"$schema": DRAFT, "title": "gen3-workspace chart values"}
    schema.update(to_schema(VALUES))
    schema["definitions"] = {"notPublicSuffix": NOT_PUBLIC_SUFFIX}
    return schema


def schema_text() -> str:
    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"


def _comment(text: str, pad: str) -> list[str]:
    return [f"{pad}# {line}" for line in textwrap.wrap(text, width=96 - len(pad))]


def _dump(key: str, value: Any, pad: str, flow: bool) -> list[str]:
    text = yaml.safe_dump(
        {key: value}, default_flow_style=None if flow else False, sort_keys=False, allow_unicode=True, width=200
    )
    return [f"{pad}{line}" for line in text.rstrip("\n").split("\n")]


def _emit(group: Group, depth: int, lines: list[str]) -> None:
    pad = "  " * depth
    for key, child in group.children.items():
        if depth == 0:
            lines.append("")
        lines.extend(_comment(child.description, pad))
        if isinstance(child, Group):
            lines.append(f"{pad}{key}:")
            _emit(child, depth + 1, lines)
        else:
            lines.extend(_dump(key, child.default, pad, child.flow))


def values_text() -> str:
    lines = [
        "# Default values of the gen3-workspace chart.",
        "# GENERATED by scripts/gen_values_schema.py from one description of the values; do not edit",
        "# by hand (edit the script and rerun it). Reference: docs/values-reference.md.",
    ]
    _emit(VALUES, 0, lines)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed files differ from what would be generated")
    args = parser.parse_args(argv)
    return write_or_check({VALUES_YAML: values_text(), SCHEMA_JSON: schema_text()}, args.check, "scripts/gen_values_schema.py")


if __name__ == "__main__":
    sys.exit(main())
