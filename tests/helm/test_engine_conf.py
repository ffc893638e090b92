"""The proxy engine's one nginx config, as the chart renders it and as `gen3-workspace up` renders it: identical, and loaded by the real nginx; the engine's Deployment is stateless, hardened and scaled out."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from gen3workspace.hub import engine
from gen3workspace.hub.local import find_engine_command
from tests.helm.chart import FULLNAME, NAMESPACE, find, render

HUB_SERVICE = f"{FULLNAME}-hub.{NAMESPACE}.svc:8081"


def chart_conf(*values: str, overrides: dict | None = None) -> str:
    return find(render(*values, overrides=overrides), "ConfigMap", f"{FULLNAME}-proxy")["data"]["nginx.conf"]


def nginx_loads(conf: str, tmp: Path) -> None:
    """`nginx -t` for real, with the prefix layout both modes give it (temp/ and cache/)."""
    nginx = find_engine_command()
    assert nginx, "nginx is not installed: run scripts/setup.sh"
    for sub in ("temp", "cache"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    path = tmp / "nginx.conf"
    path.write_text(conf)
    out = subprocess.run([nginx, "-t", "-p", f"{tmp}/", "-c", str(path), "-e", "stderr"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def local_addresses(conf: str) -> str:
    # The one thing that cannot exist here: the hub Service's DNS name (nginx resolves
    # upstreams at load). Only that address changes.
    assert f"server {HUB_SERVICE};" in conf
    return conf.replace(f"server {HUB_SERVICE};", "server 127.0.0.1:8081;")


@pytest.mark.parametrize("base", ["/workspace/", "/lw-workspace/"])
def test_the_chart_renders_exactly_what_the_embedded_mode_renders(base: str) -> None:
    conf = chart_conf("defaults.yaml", overrides={"hub": {"baseUrl": base}})
    # defaults.yaml: an https commons at data.example.org, so forwarding headers say so.
    same = engine.render(
        listen="8080", hub=HUB_SERVICE, base_url=base, hub_prefix=base + "hub/",
        public_url="https://data.example.org" + base, decision_cache_seconds=2, access_log=True,
    )
    assert conf.strip() == same.strip()


def test_both_renders_load_in_the_real_nginx(tmp_path: Path) -> None:
    nginx_loads(local_addresses(chart_conf("defaults.yaml")), tmp_path / "chart")
    embedded = engine.render(listen="127.0.0.1:18000", hub="127.0.0.1:18081", base_url="/lw-workspace/", hub_prefix="/lw-workspace/hub/", user="nobody nogroup")
    nginx_loads(embedded, tmp_path / "embedded")


def test_forwarding_headers_and_cache_time_come_from_the_values() -> None:
    conf = chart_conf("defaults.yaml", overrides={"proxy": {"decisionCacheSeconds": 45}})
    assert "proxy_cache_valid 200 45s;" in conf
    assert re.search(r"proxy_set_header X-Forwarded-Proto https;", conf)
    assert "proxy_set_header X-Forwarded-Host data.example.org;" in conf
    plain = chart_conf("defaults.yaml", overrides={"commons": {"url": "http://commons.test"}})
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in plain


def test_the_engine_is_a_hardened_stateless_deployment_of_two() -> None:
    docs = render("defaults.yaml")
    deployment = find(docs, "Deployment", f"{FULLNAME}-proxy")
    spec = deployment["spec"]
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert re.fullmatch(r"[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}", container["image"]), container["image"]
    assert container["command"][0] == "nginx" and "-e" in container["command"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["ports"][0]["containerPort"] >= 1024
    assert container["readinessProbe"]["httpGet"]["path"] == "/_gen3ws_healthz"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/var/run/gen3-engine", "/var/run/gen3-engine/temp", "/var/run/gen3-engine/cache"} <= mounts
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache["emptyDir"]["medium"] == "Memory"
    assert "checksum/config" in spec["template"]["metadata"]["annotations"]
    pdb = find(docs, "PodDisruptionBudget", f"{FULLNAME}-proxy")
    assert pdb["spec"]["maxUnavailable"] == 1
    # Nothing of configurable-http-proxy is left: no API Service, no token.
    names = {d["metadata"]["name"] for d in docs}
    assert f"{FULLNAME}-proxy-api" not in names
    assert "configurable-http-proxy" not in str(docs)


def test_one_replica_has_no_disruption_budget() -> None:
    docs = render("defaults.yaml", overrides={"proxy": {"replicas": 1}})
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
