"""gen3workspace.hub.chartconfig turns the chart-rendered config.yaml and the hub Secret's env into the right JupyterHub config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from traitlets.config import Config

from gen3workspace.hub import chartconfig
from gen3workspace.hub.chartconfig import ChartConfigError, apply

from .chart import CHART, FULLNAME, NAMESPACE, find, render

COOKIE_HEX = "ab" * 32
ENV = {
    "GEN3WS_CLIENT_SECRET": "client-secret-from-secret",
    "GEN3WS_COOKIE_SECRET": COOKIE_HEX,
    "JUPYTERHUB_CRYPT_KEY": "cd" * 32,
}


def _rendered_config(tmp_path: Path, values: str, overrides: dict[str, Any] | None = None) -> Path:
    """The config.yaml exactly as the chart renders it into the hub's ConfigMap."""
    cm = find(render(values, overrides=overrides), "ConfigMap", f"{FULLNAME}-hub-config")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"], encoding="utf-8")
    return path


def _apply(tmp_path: Path, values: str = "defaults.yaml", env: dict[str, str] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    c = Config()
    apply(c, _rendered_config(tmp_path, values, overrides), environ=ENV if env is None else env)
    return c


def test_defaults(tmp_path: Path) -> None:
    c = _apply(tmp_path)
    hub_service = f"{FULLNAME}-hub"
    assert c.JupyterHub.authenticator_class == "gen3"
    assert c.JupyterHub.spawner_class == "gen3"
    assert c.JupyterHub.base_url == "/workspace/"
    assert c.JupyterHub.hub_ip == "0.0.0.0"
    assert c.JupyterHub.hub_connect_url == f"http://{hub_service}.{NAMESPACE}.svc:8081"
    assert c.JupyterHub.cleanup_servers is False
    assert c.JupyterHub.db_url == "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
    assert c.JupyterHub.cookie_secret == bytes.fromhex(COOKIE_HEX)
    assert c.JupyterHub.tornado_settings["headers"]["Content-Security-Policy"] == "frame-ancestors 'self' https://data.example.org"
    # The engine (nginx) is a Deployment of its own; the hub starts nothing and has no proxy API.
    assert c.Gen3Proxy.should_start is False
    assert "ConfigurableHTTPProxy" not in c
    assert c.CryptKeeper["keys"] == [ENV["JUPYTERHUB_CRYPT_KEY"]]

    auth = c.Gen3OAuthenticator
    assert auth.commons_url == "https://data.example.org"
    assert auth.client_id == "workspace-client"
    assert auth.client_secret == "client-secret-from-secret"
    assert auth.oauth_callback_url == "https://data.example.org/workspace/hub/oauth_callback"
    assert (auth.workspace_resource, auth.workspace_service, auth.workspace_method) == ("/workspace", "jupyterhub", "access")
    assert auth.require_workspace_permission is True
    assert auth.admin_groups == set()
    assert auth.authz_groups == {}
    assert "logout_redirect_url" not in auth

    spawner = c.Gen3KubeSpawner
    assert spawner.flavor_file == "/usr/local/etc/gen3-workspace/flavors/flavors.yaml"
    assert spawner.namespace == f"{NAMESPACE}-workspace-users"
    assert spawner.egress_proxy == f"http://{FULLNAME}-egress.{NAMESPACE}.svc.cluster.local:3128"
    assert spawner.no_proxy == []
    assert spawner.issue_api_key is True
    assert spawner.drive_size == "10Gi"
    assert spawner.drive_storage_class is None
    assert spawner.drive_mount_path == "/home/jovyan"
    assert spawner.commons_url == "https://data.example.org"
    assert spawner.delete_pvc is False
    assert spawner.common_labels["app.kubernetes.io/instance"] == "ws"
    assert spawner.common_labels["app"] == "jupyterhub"


def test_idle_culler_is_a_hub_service_with_a_minimal_role(tmp_path: Path) -> None:
    c = _apply(tmp_path, overrides={"culler": {"timeout": 1800, "every": 120, "maxAge": 86400}})
    (service,) = c.JupyterHub.services
    assert service["name"] == "idle-culler"
    assert service["command"][:3] == [sys.executable, "-m", "jupyterhub_idle_culler"]
    assert {"--timeout=1800", "--cull-every=120", "--max-age=86400", "--concurrency=10"} <= set(service["command"])
    assert c.Gen3KubeSpawner.api_key_lifetime == 86400 + 120 + 3600, "keys die an hour after the oldest server may"
    role = next(r for r in c.JupyterHub.load_roles if r["name"] == "idle-culler")
    assert role["services"] == ["idle-culler"]
    assert sorted(role["scopes"]) == sorted(["list:users", "read:users:activity", "read:servers", "delete:servers"])


def test_culler_off(tmp_path: Path) -> None:
    c = _apply(tmp_path, overrides={"culler": {"enabled": False}})
    assert "services" not in c.JupyterHub
    assert [r["name"] for r in c.JupyterHub.load_roles] == ["gen3-fence-admin"]


def test_fence_admins_get_the_limited_role_unless_server_access_is_asked_for(tmp_path: Path) -> None:
    c = _apply(tmp_path)
    auth = c.Gen3OAuthenticator
    assert (auth.admin_from_fence, auth.fence_admin_server_access) == (True, False)
    role = next(r for r in c.JupyterHub.load_roles if r["name"] == "gen3-fence-admin")
    assert role["groups"] == ["gen3-fence-admins"]
    # Nothing that opens a user's server or hands out their tokens.
    assert not {"admin:users", "admin:auth_state", "access:servers", "admin:servers", "tokens", "shares", "users:shares", "admin:groups", "groups"} & set(role["scopes"])
    wide = _apply(tmp_path, "external-db-existing-secret.yaml").Gen3OAuthenticator
    assert wide.fence_admin_server_access is True
    off = _apply(tmp_path, overrides={"auth": {"fenceAdmins": {"enabled": False}}}).Gen3OAuthenticator
    assert off.admin_from_fence is False


def test_external_db_gets_the_password_spliced_in(tmp_path: Path) -> None:
    env = {**ENV, "GEN3WS_DB_PASSWORD": "p@ss/word"}
    c = _apply(tmp_path, "external-db.yaml", env=env)
    assert c.JupyterHub.db_url == "postgresql+psycopg://jupyterhub:p%40ss%2Fword@postgres.databases.svc:5432/jupyterhub"
    assert c.JupyterHub.upgrade_db is False
    without = _apply(tmp_path, "external-db.yaml")
    assert without.JupyterHub.db_url == "postgresql+psycopg://jupyterhub@postgres.databases.svc:5432/jupyterhub"


@pytest.mark.parametrize("url", ["postgresql+psycopg2://u@db:5432/j", "mysql+pymysql://u@db/j", "notadriver://x"])
def test_external_db_without_a_driver_in_the_image_is_a_clear_error(tmp_path: Path, url: str) -> None:
    with pytest.raises(ChartConfigError, match=r"hub\.db\.url cannot be used.*postgresql\+psycopg://"):
        _apply(tmp_path, "external-db.yaml", overrides={"hub": {"db": {"url": url}}})


def test_egress_off_means_no_proxy_env(tmp_path: Path) -> None:
    assert _apply(tmp_path, "egress-off.yaml").Gen3KubeSpawner.egress_proxy == ""


def test_custom_namespace_no_proxy_and_ingress_host(tmp_path: Path) -> None:
    c = _apply(tmp_path, "custom-whitelist.yaml")
    assert c.Gen3KubeSpawner.namespace == "workspace-users"
    assert c.Gen3KubeSpawner.workspace_namespace == NAMESPACE
    assert c.Gen3KubeSpawner.no_proxy == ["fence-service.gen3.svc.cluster.local", "indexd-service"]
    ingress = _apply(tmp_path, "ingress.yaml")
    assert ingress.Gen3OAuthenticator.oauth_callback_url == "https://workspace.example.org/hub/oauth_callback"
    assert ingress.JupyterHub.base_url == "/"
    assert ingress.Gen3OAuthenticator.commons_name == "Example Commons"


def test_auth_settings(tmp_path: Path) -> None:
    overrides = {
        "auth": {
            "adminGroups": ["admins", "ops"],
            "authzGroups": {"/workspace-flavors/gpu": "gpu-users"},
            "workspace": {"required": False, "resource": "/programs/ws", "method": "use"},
            "logoutRedirectUrl": "https://data.example.org/goodbye",
        },
        "hub": {"frameAncestors": ["https://portal.example.org"], "oauthCallbackUrl": "https://elsewhere.example.org/cb"},
        "spawner": {"issueApiKey": False, "drive": {"size": "50Gi", "storageClass": "fast", "mountPath": "/home/jovyan/pd"}},
    }
    c = _apply(tmp_path, overrides=overrides)
    auth = c.Gen3OAuthenticator
    assert auth.admin_groups == {"admins", "ops"}
    assert auth.authz_groups == {"/workspace-flavors/gpu": "gpu-users"}
    assert auth.require_workspace_permission is False
    assert (auth.workspace_resource, auth.workspace_method) == ("/programs/ws", "use")
    assert auth.logout_redirect_url == auth.post_logout_url == "https://data.example.org/goodbye"
    assert auth.oauth_callback_url == "https://elsewhere.example.org/cb"
    assert c.JupyterHub.tornado_settings["headers"]["Content-Security-Policy"] == "frame-ancestors 'self' https://data.example.org https://portal.example.org"
    assert c.Gen3KubeSpawner.frame_ancestors == ["https://data.example.org", "https://portal.example.org"]
    spawner = c.Gen3KubeSpawner
    assert (spawner.issue_api_key, spawner.drive_size, spawner.drive_storage_class, spawner.drive_mount_path) == (False, "50Gi", "fast", "/home/jovyan/pd")


def test_passthrough_config_and_extra_config_run_last_in_order(tmp_path: Path) -> None:
    overrides = {
        "hub": {
            "config": {
                "JupyterHub": {"log_level": "DEBUG", "tornado_settings": {"slow_spawn_timeout": 0, "headers": {"X-Extra": "1"}}},
                "Gen3KubeSpawner": {"issue_api_key": False},
            },
            "extraConfig": {
                "20-second": "c.Spawner.start_timeout = c.Spawner.start_timeout * 2",
                "10-first": "c.Spawner.start_timeout = 300",
            },
        }
    }
    c = _apply(tmp_path, overrides=overrides)
    assert c.JupyterHub.log_level == "DEBUG"
    # Dicts are merged: the chart's CSP header survives an operator's extra tornado setting.
    assert c.JupyterHub.tornado_settings["slow_spawn_timeout"] == 0
    assert c.JupyterHub.tornado_settings["headers"]["X-Extra"] == "1"
    assert "Content-Security-Policy" in c.JupyterHub.tornado_settings["headers"]
    assert c.Gen3KubeSpawner.issue_api_key is False  # passthrough wins over the chart's value
    assert c.Spawner.start_timeout == 600  # "10-first" ran before "20-second"


def test_existing_secret_values_file(tmp_path: Path) -> None:
    c = _apply(tmp_path, "existing-secret.yaml")
    assert c.JupyterHub.log_level == "DEBUG"
    assert c.Spawner.start_timeout == 600
    assert c.Gen3OAuthenticator.admin_groups == {"workspace-admins"}


def test_missing_secrets_leave_traits_unset(tmp_path: Path) -> None:
    # hub.existingSecret: nothing is generated, so what the env lacks stays unset.
    c = _apply(tmp_path, "hub-existing-secret.yaml", env={})
    for section, trait in (("Gen3OAuthenticator", "client_secret"), ("JupyterHub", "cookie_secret"), ("CryptKeeper", "keys")):
        assert trait not in c[section], f"{section}.{trait}"


def test_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ChartConfigError, match="cannot read"):
        apply(Config(), tmp_path / "missing.yaml", environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("hub: [", encoding="utf-8")
    with pytest.raises(ChartConfigError, match="not valid YAML"):
        apply(Config(), broken, environ={})
    config = yaml.safe_load(_rendered_config(tmp_path, "defaults.yaml").read_text())
    config["commons"]["url"] = ""
    no_commons = tmp_path / "no-commons.yaml"
    no_commons.write_text(yaml.safe_dump(config))
    with pytest.raises(ChartConfigError, match="commons.url"):
        apply(Config(), no_commons, environ={})
    config = yaml.safe_load(_rendered_config(tmp_path, "external-db.yaml").read_text())
    config["hub"]["db"]["url"] = ""
    no_db = tmp_path / "no-db.yaml"
    no_db.write_text(yaml.safe_dump(config))
    with pytest.raises(ChartConfigError, match="hub.db.url"):
        apply(Config(), no_db, environ={})
    with pytest.raises(ChartConfigError, match="not hex"):
        apply(Config(), _rendered_config(tmp_path, "defaults.yaml"), environ={**ENV, "GEN3WS_COOKIE_SECRET": "zz"})


def test_the_traits_set_exist_on_the_classes(tmp_path: Path) -> None:
    """A typo in a trait name would only be a warning in the hub log; catch it here."""
    from jupyterhub.app import JupyterHub
    from jupyterhub.auth import Authenticator
    from jupyterhub.crypto import CryptKeeper
    from jupyterhub.spawner import Spawner

    from gen3workspace.hub.auth import Gen3OAuthenticator
    from gen3workspace.hub.engine import Gen3Proxy
    from gen3workspace.hub.launcher import Gen3Launcher
    from gen3workspace.spawner.kube import Gen3KubeSpawner

    classes = {"JupyterHub": JupyterHub, "Gen3Proxy": Gen3Proxy, "CryptKeeper": CryptKeeper, "Gen3OAuthenticator": Gen3OAuthenticator, "Gen3KubeSpawner": Gen3KubeSpawner, "Authenticator": Authenticator, "Gen3Launcher": Gen3Launcher, "Spawner": Spawner}
    c = _apply(tmp_path, overrides={"auth": {"logoutRedirectUrl": "https://x.example.org/"}, "commons": {"name": "X"}})
    for section, cls in classes.items():
        missing = [t for t in c[section] if not cls.class_traits(config=True).get(t)]
        assert not missing, f"{section} has no configurable trait(s) {missing}"
    assert {s for s in c if c[s]} <= set(classes)


def test_the_charts_jupyterhub_config_calls_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(chartconfig, "apply", lambda c: calls.append(c))
    c = Config()
    code = (CHART / "files" / "jupyterhub_config.py").read_text(encoding="utf-8")
    exec(compile(code, "jupyterhub_config.py", "exec"), {"c": c})
    assert calls == [c]
    assert chartconfig.DEFAULT_CONFIG_PATH == "/usr/local/etc/gen3-workspace/config/config.yaml"


def test_every_setting_the_chart_makes_is_a_real_trait(tmp_path: Path) -> None:
    """A misspelled trait is silently ignored by traitlets; catch it here instead."""
    from jupyterhub.app import JupyterHub

    from gen3workspace.hub.launcher import Gen3Launcher
    from jupyterhub.crypto import CryptKeeper

    from gen3workspace.hub.auth import Gen3OAuthenticator
    from gen3workspace.hub.engine import Gen3Proxy
    from gen3workspace.spawner.kube import Gen3KubeSpawner

    classes = {
        "JupyterHub": JupyterHub,
        "Gen3Proxy": Gen3Proxy,
        "CryptKeeper": CryptKeeper,
        "Gen3OAuthenticator": Gen3OAuthenticator,
        "Authenticator": Gen3OAuthenticator,
        "Gen3KubeSpawner": Gen3KubeSpawner,
        "KubeSpawner": Gen3KubeSpawner,
        "Spawner": Gen3KubeSpawner,
        "Gen3Launcher": Gen3Launcher,
    }
    for values in ("defaults.yaml", "external-db.yaml", "egress-off.yaml", "gpu-flavor.yaml"):
        c = _apply(tmp_path, values)
        for section, settings in c.items():
            assert section in classes, f"unexpected config section {section}"
            traits = classes[section].class_traits(config=True)
            unknown = sorted(set(settings) - set(traits))
            assert not unknown, f"{values}: {section} has no trait(s) {unknown}"


def test_portal_launcher_isolation_and_cookies(tmp_path: Path) -> None:
    c = _apply(tmp_path, overrides={"commons": {"url": "https://data.example.org"}, "portal": {"prefix": "/lw-workspace/", "cookieSameSite": "Strict"}})
    assert c.JupyterHub.proxy_class == "gen3workspace.hub.engine.Gen3Proxy"
    assert c.Gen3Launcher.prefix == "/lw-workspace/"
    assert c.JupyterHub.public_url == "https://data.example.org/workspace/"
    assert c.JupyterHub.tornado_settings["cookie_options"] == {"samesite": "Strict"}
    assert c.Spawner.environment["GEN3_FRAME_ANCESTORS"] == "'self'"
    assert c.Gen3Launcher.idle_timeout_seconds == 3600
    # Frame ancestors (CSP) stay merged with the cookie options.
    assert "frame-ancestors" in c.JupyterHub.tornado_settings["headers"]["Content-Security-Policy"]


def test_the_hub_warns_at_start_about_a_flavor_restricted_by_group(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    def start(authz_groups: dict[str, str]) -> list[str]:
        run = tmp_path / f"run-{len(authz_groups)}"
        run.mkdir()
        flavors = run / "flavors.yaml"
        flavors.write_text(yaml.safe_dump({
            "default": "small",
            "flavors": [
                {"name": "small", "image": "quay.io/gen3-workspace/notebook-python:0.1.0", "cpu": {"limit": 1}, "memory": {"limit": "1Gi"}},
                {"name": "gpu", "image": "quay.io/gen3-workspace/notebook-python:0.1.0", "cpu": {"limit": 1}, "memory": {"limit": "1Gi"}, "allowed_groups": ["gpu-users"]},
            ],
        }))
        config = yaml.safe_load(_rendered_config(run, "defaults.yaml", {"auth": {"authzGroups": authz_groups}}).read_text())
        config["spawner"]["flavorFile"] = str(flavors)
        path = run / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="JupyterHub"):
            apply(Config(), path, environ=ENV)
        return [r.getMessage() for r in caplog.records if r.name == "JupyterHub" and r.levelno == logging.WARNING]

    (warning,) = start({})
    assert 'flavor "gpu", field \'allowed_groups\' (gpu-users)' in warning and "empty for access granted by arborist policies" in warning
    assert start({"/workspace-flavors/gpu": "gpu-users"}) == [], "auth.authzGroups makes the group: no warning"
