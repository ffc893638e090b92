"""The Helm chart's config layer: turns the chart-rendered config.yaml and the hub Secret's env vars into JupyterHub config.

The chart renders every non-secret setting into a ConfigMap (config.yaml) and every secret
into a Secret exposed as environment variables; the hub's jupyterhub_config.py only calls
`apply(c)`. Keeping the logic here (not in a template) makes it unit-testable and lets the
chart stay thin, as in Zero to JupyterHub.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gen3workspace.hub.auth import add_fence_admin_role
from gen3workspace.hub.launcher import configure_portal
from gen3workspace.hub.pages import configure_pages
from gen3workspace.spawner.flavors import CatalogueError, group_warnings, shared_watcher
from gen3workspace.spawner.grammar import GrammarError, check_csp_sources, check_url_base
from gen3workspace.spawner.safeyaml import SafeYAMLError, read_yaml_file

DEFAULT_CONFIG_PATH = "/usr/local/etc/gen3-workspace/config/config.yaml"
DEFAULT_FLAVOR_FILE = "/usr/local/etc/gen3-workspace/flavors/flavors.yaml"
DEFAULT_SQLITE_PATH = "/srv/jupyterhub/jupyterhub.sqlite"

# Names of the env vars the chart's hub Deployment fills from Secrets.
ENV_CLIENT_SECRET = "GEN3WS_CLIENT_SECRET"
ENV_COOKIE_SECRET = "GEN3WS_COOKIE_SECRET"
ENV_CRYPT_KEY = "JUPYTERHUB_CRYPT_KEY"
ENV_DB_PASSWORD = "GEN3WS_DB_PASSWORD"

# The keys the hub generates itself when no existing Secret gives them: Secret key -> env var.
GENERATED_KEYS = {"cookie-secret": ENV_COOKIE_SECRET, "crypt-key": ENV_CRYPT_KEY}

CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]

# Labels KubeSpawner puts on every pod and PVC by default; kept so KubeSpawner and tools that
# know its defaults still find the objects after the chart adds its own release labels.
KUBESPAWNER_COMMON_LABELS = {
    "app.kubernetes.io/name": "jupyterhub",
    "app.kubernetes.io/managed-by": "kubespawner",
    "app": "jupyterhub",
    "heritage": "jupyterhub",
}


class ChartConfigError(RuntimeError):
    """The chart's config cannot produce a working hub; the message says which setting to fix."""


def _get(tree: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return default if node is None else node


def load_config(config_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the chart-rendered config.yaml; a missing or broken file is a deployment bug, so fail loudly."""
    path = Path(config_path)
    try:
        # A ConfigMap holds at most 1 MiB.
        data = read_yaml_file(path, "chart's hub config", max_bytes=1024 * 1024)
    except SafeYAMLError as e:
        raise ChartConfigError(str(e)) from None
    if not isinstance(data, dict):
        raise ChartConfigError(f"{path}: the chart's hub config must be a mapping")
    return data


def database_url(cfg: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """sqlite on the hub's volume, or the external URL with the password from the Secret spliced in."""
    if _get(cfg, "hub.db.type", "sqlite") != "external":
        return "sqlite:///" + str(_get(cfg, "hub.db.sqlitePath", DEFAULT_SQLITE_PATH))
    url = _get(cfg, "hub.db.url", "")
    if not url:
        raise ChartConfigError("hub.db.type is 'external' but hub.db.url is empty: set hub.db.url in the chart values")
    _check_driver(url)
    password = environ.get(ENV_DB_PASSWORD, "")
    if not password:
        return url
    # SQLAlchemy quotes the password correctly (an '@' or '/' in it must not break the URL).
    from sqlalchemy.engine import make_url

    return make_url(url).set(password=password).render_as_string(hide_password=False)


def _check_driver(url: str) -> None:
    """Fail at start-up, naming the setting, when the hub image has no driver for hub.db.url."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ImportError) as e:
        raise ChartConfigError(
            f"hub.db.url cannot be used ({type(e).__name__}: {e}); the hub image has the PostgreSQL driver "
            "psycopg 3: write the URL as postgresql+psycopg://USER@HOST:5432/DATABASE"
        ) from None


def generated_keys(cfg: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """The cookie secret and crypt key the env lacks, read from (or first written to) the hub's Secret.

    The chart renders no generated value (`helm template` in Argo CD or Flux has no cluster to
    `lookup`, so every render would make new ones and log everyone out): it renders the hub
    Secret without them and lets the hub, through its ServiceAccount (get and patch on that one
    Secret), write each missing key once at first start and read it back on every start after.
    Keys given by env (hub.existingSecret) are never generated.
    """
    where = _get(cfg, "hub.generatedKeys", {}) or {}
    missing = {key: env for key, env in GENERATED_KEYS.items() if not environ.get(env)}
    if not missing or not where.get("secret"):
        return {}
    name, namespace = str(where["secret"]), str(where.get("namespace") or _get(cfg, "release.namespace", "default"))
    # JupyterHub loads its config inside its running event loop: the client runs in its own.
    with ThreadPoolExecutor(1) as pool:
        stored = pool.submit(asyncio.run, _ensure_keys(name, namespace, list(missing))).result(120)
    return {env: stored[key] for key, env in missing.items()}


async def _ensure_keys(name: str, namespace: str, keys: list[str]) -> dict[str, str]:
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.client.rest import ApiException

    where = f"Secret {namespace}/{name}"
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # Outside a pod (the test beds): the kubeconfig KUBECONFIG names, read now, not at import.
        try:
            await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        except config.ConfigException as e:
            raise ChartConfigError(f"cannot reach the Kubernetes API to read the hub's generated keys from {where}: {e}; or give them in hub.existingSecret") from None
    async with client.ApiClient() as api:
        v1 = client.CoreV1Api(api)

        async def read() -> tuple[str, dict[str, str]]:
            try:
                secret = await v1.read_namespaced_secret(name, namespace)
            except ApiException as e:
                hint = {403: "the hub's ServiceAccount may not read it (the chart's Role <release>-hub-keys grants get and patch)", 404: "it does not exist; the chart creates it: run helm upgrade (or let your GitOps tool sync) again"}
                raise ChartConfigError(f"cannot read the hub's generated keys from {where} (HTTP {e.status}): {hint.get(e.status, e.reason)}") from None
            data = {k: base64.b64decode(v).decode("ascii") for k, v in (secret.data or {}).items() if k in GENERATED_KEYS}
            return secret.metadata.resource_version, data

        version, data = await read()
        new = {key: secrets.token_hex(32) for key in keys if not data.get(key)}
        if not new:
            return data
        # resourceVersion makes the write conditional: a hub that lost a race reads the winner's keys.
        body = {"metadata": {"resourceVersion": version}, "data": {k: base64.b64encode(v.encode()).decode() for k, v in new.items()}}
        try:
            await v1.patch_namespaced_secret(name, namespace, body, _content_type="application/merge-patch+json")
        except ApiException as e:
            if e.status != 409:
                raise ChartConfigError(f"cannot store the hub's generated keys in {where} (HTTP {e.status}): the hub's ServiceAccount needs patch on it (the chart's Role <release>-hub-keys)") from None
            _, data = await read()
            if any(not data.get(key) for key in keys):
                raise ChartConfigError(f"{where} changed while the hub stored its generated keys and still lacks some; restart the hub") from None
            return data
        return {**data, **new}


def _check_flavors_at_start(flavor_file: str, known_groups: set[str]) -> None:
    """Load the mounted catalogue now, so its warnings (allowed_groups with Fence login) are in the start-up log; reloads warn again."""
    if not Path(flavor_file).is_file():
        return  # the spawner reports a missing catalogue where users meet it
    # JupyterHub's own logger: the spawners log through it too, once it is set up.
    watcher = shared_watcher(flavor_file, logging.getLogger("JupyterHub"))
    watcher.warnings = lambda catalogue: group_warnings(catalogue, known_groups)
    try:
        watcher.current()
    except CatalogueError:
        pass  # logged by the watcher; the hub still starts and keeps the users' servers


def _oauth_callback_url(cfg: Mapping[str, Any]) -> str:
    explicit = _get(cfg, "auth.callbackUrl", "")
    if explicit:
        return explicit
    host = _get(cfg, "hub.host", "")
    if not host:
        raise ChartConfigError("no public host for the OAuth callback: set hub.host or commons.url in the chart values")
    return f"https://{host}{_get(cfg, 'hub.baseUrl', '/')}hub/oauth_callback"


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(out.get(key), Mapping) and isinstance(value, Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _merge(section: Any, values: Mapping[str, Any]) -> None:
    """Set traits on a traitlets Config section, merging dicts so chart defaults are extended, not lost."""
    for trait, value in values.items():
        current = section[trait] if trait in section else None
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            section[trait] = _deep_merge(current, value)
        else:
            section[trait] = value


def apply(c: Any, config_path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH, environ: Mapping[str, str] = os.environ) -> None:
    """Configure JupyterHub `c` from the chart's config.yaml and the hub Secret's env vars."""
    cfg = load_config(config_path)

    commons_url = str(_get(cfg, "commons.url", "")).rstrip("/")
    if not commons_url:
        raise ChartConfigError("commons.url is empty: set it in the chart values to the commons' URL")
    base_url = _get(cfg, "hub.baseUrl", "/")

    # --- JupyterHub -------------------------------------------------------------------------
    c.JupyterHub.authenticator_class = "gen3"
    c.JupyterHub.spawner_class = "gen3"
    c.JupyterHub.base_url = base_url
    c.JupyterHub.hub_ip = "0.0.0.0"
    c.JupyterHub.hub_port = 8081
    c.JupyterHub.hub_connect_url = _get(cfg, "hub.connectUrl")
    # A hub restart (upgrade, config change) must not stop every user's server.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.db_url = database_url(cfg, environ)
    # sqlite is backed up by JupyterHub before an upgrade; an external database is the
    # operator's to migrate deliberately (hub.config can turn this on).
    c.JupyterHub.upgrade_db = _get(cfg, "hub.db.type", "sqlite") != "external"

    try:
        frame_ancestors = check_csp_sources(list(_get(cfg, "hub.frameAncestors", [])), "hub.frameAncestors")
        check_url_base(commons_url, "commons.url")
    except GrammarError as e:
        raise ChartConfigError(str(e)) from None
    ancestors = " ".join(["'self'", *frame_ancestors])
    _merge(c.JupyterHub, {"tornado_settings": {"headers": {"Content-Security-Policy": f"frame-ancestors {ancestors}"}}})

    # The engine (nginx) runs as a Deployment of its own, its config rendered by the chart from
    # the same file as the embedded mode's (files/engine.conf); the hub only answers its decisions.
    c.Gen3Proxy.should_start = False

    environ = {**environ, **generated_keys(cfg, environ)}
    cookie_hex = environ.get(ENV_COOKIE_SECRET, "")
    if cookie_hex:
        try:
            c.JupyterHub.cookie_secret = bytes.fromhex(cookie_hex)
        except ValueError:
            raise ChartConfigError(f"{ENV_COOKIE_SECRET} is not hex; delete the hub Secret's cookie-secret key and upgrade to regenerate it") from None
    crypt_key = environ.get(ENV_CRYPT_KEY, "")
    if crypt_key:
        # auth_state (the user's Fence tokens) is only stored encrypted.
        # Item, not attribute, syntax: "keys" is also a dict method of the Config section.
        c.CryptKeeper["keys"] = [crypt_key]
        c.Authenticator.enable_auth_state = True

    # --- the portal's launcher API, origin isolation, cookies --------------------------------
    c.Gen3Launcher.enabled = bool(_get(cfg, "portal.enabled", True))
    host = _get(cfg, "hub.host", "")
    # Behind the commons' TLS-terminating revproxy the hub sees http: public_url makes its
    # cookies Secure anyway. A plain-http commons (a test bed) keeps them usable.
    public_url = f"https://{host}{base_url}" if host and commons_url.startswith("https://") else ""
    configure_portal(c, str(_get(cfg, "portal.prefix", "/lw-workspace/")), public_url=public_url, samesite=str(_get(cfg, "portal.cookieSameSite", "Lax")))
    if _get(cfg, "culler.enabled", True):
        # The portal warns before the idle shutdown; the culler's timeout is that shutdown.
        c.Gen3Launcher.idle_timeout_seconds = int(_get(cfg, "culler.timeout", 3600))

    # --- idle culler ------------------------------------------------------------------------
    if _get(cfg, "culler.enabled", True):
        command = [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={int(_get(cfg, 'culler.timeout', 3600))}",
            f"--cull-every={int(_get(cfg, 'culler.every', 600))}",
            f"--concurrency={int(_get(cfg, 'culler.concurrency', 10))}",
        ]
        max_age = int(_get(cfg, "culler.maxAge", 0))
        if max_age:
            command.append(f"--max-age={max_age}")
            # A server lives at most max-age plus one cull interval; its key one hour longer, so
            # the SDK's 3600 s token exchange works to the end and a key that could not be
            # revoked dies soon after its server.
            c.Gen3KubeSpawner.api_key_lifetime = max_age + int(_get(cfg, "culler.every", 600)) + 3600
        services = [s for s in (c.JupyterHub.services if "services" in c.JupyterHub else []) if s.get("name") != "idle-culler"]
        c.JupyterHub.services = [*services, {"name": "idle-culler", "command": command}]
        roles = [r for r in (c.JupyterHub.load_roles if "load_roles" in c.JupyterHub else []) if r.get("name") != "idle-culler"]
        c.JupyterHub.load_roles = [
            *roles,
            {"name": "idle-culler", "description": "Stop idle servers", "scopes": list(CULLER_SCOPES), "services": ["idle-culler"]},
        ]

    # --- login through Fence ----------------------------------------------------------------
    auth = c.Gen3OAuthenticator
    auth.commons_url = commons_url
    if _get(cfg, "commons.name"):
        auth.commons_name = _get(cfg, "commons.name")
    configure_pages(c, str(_get(cfg, "commons.name") or ""), logo_url=str(_get(cfg, "commons.logoUrl") or ""), portal_url=commons_url + "/")
    auth.client_id = _get(cfg, "auth.clientId", "")
    client_secret = environ.get(ENV_CLIENT_SECRET, "")
    if client_secret:
        auth.client_secret = client_secret
    auth.oauth_callback_url = _oauth_callback_url(cfg)
    auth.workspace_resource = _get(cfg, "auth.workspace.resource", "/workspace")
    auth.workspace_service = _get(cfg, "auth.workspace.service", "jupyterhub")
    auth.workspace_method = _get(cfg, "auth.workspace.method", "access")
    auth.require_workspace_permission = bool(_get(cfg, "auth.workspace.required", True))
    auth.admin_groups = set(_get(cfg, "auth.adminGroups", []))
    auth.admin_from_fence = bool(_get(cfg, "auth.fenceAdmins.enabled", True))
    auth.fence_admin_server_access = bool(_get(cfg, "auth.fenceAdmins.serverAccess", False))
    add_fence_admin_role(c)
    auth.authz_groups = dict(_get(cfg, "auth.authzGroups", {}))
    logout = _get(cfg, "auth.logoutRedirectUrl", "")
    if logout:
        # Both: Fence's logout sends the browser to post_logout_url; the plain hub logout
        # (when the Fence session is kept) uses logout_redirect_url.
        auth.logout_redirect_url = logout
        auth.post_logout_url = logout

    # --- users' servers ---------------------------------------------------------------------
    spawner = c.Gen3KubeSpawner
    spawner.commons_url = commons_url
    spawner.flavor_file = _get(cfg, "spawner.flavorFile", DEFAULT_FLAVOR_FILE)
    spawner.namespace = _get(cfg, "spawner.namespace") or _get(cfg, "release.namespace", "default")
    # NAMESPACE in users' servers names the commons' namespace, which the chart is installed
    # next to, even when users' servers live in a namespace of their own.
    spawner.workspace_namespace = _get(cfg, "release.namespace", "default")
    spawner.egress_proxy = _get(cfg, "spawner.egressProxy", "")
    spawner.no_proxy = list(_get(cfg, "spawner.noProxy", []))
    spawner.issue_api_key = bool(_get(cfg, "spawner.issueApiKey", True))
    spawner.drive_size = _get(cfg, "spawner.drive.size", "10Gi")
    spawner.drive_storage_class = _get(cfg, "spawner.drive.storageClass") or None
    if _get(cfg, "spawner.drive.mountPath"):
        spawner.drive_mount_path = _get(cfg, "spawner.drive.mountPath")
    spawner.frame_ancestors = frame_ancestors
    # The chart's NetworkPolicies select users' pods by these labels; the hub's Role cannot
    # delete PVCs, so users' drives survive even a user's deletion.
    spawner.common_labels = {**KUBESPAWNER_COMMON_LABELS, **_get(cfg, "spawner.commonLabels", {})}
    spawner.delete_pvc = False

    _check_flavors_at_start(spawner.flavor_file, set(auth.authz_groups.values()) | set(auth.admin_groups))

    # --- z2jh-style passthrough: last, so operators can override anything above -------------
    for class_name, traits in (_get(cfg, "hub.config", {}) or {}).items():
        if not isinstance(traits, Mapping):
            raise ChartConfigError(f"hub.config.{class_name} must be a mapping of trait names to values")
        _merge(c[class_name], traits)
    for name, snippet in sorted((_get(cfg, "hub.extraConfig", {}) or {}).items()):
        code = compile(snippet, f"<hub.extraConfig.{name}>", "exec")
        exec(code, {"c": c, "__name__": f"gen3workspace_extra_config_{name}"})  # noqa: S102 - operator-supplied config, like z2jh
