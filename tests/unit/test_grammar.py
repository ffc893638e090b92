"""CSP sources and commons URLs are refused alike by `up --frame-ancestor`, the hub's and spawner's traits, the chart config layer and the user server."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from traitlets import TraitError
from traitlets.config import Config

from gen3workspace.hub import cli
from gen3workspace.hub.auth import Gen3OAuthenticator
from gen3workspace.hub.chartconfig import ChartConfigError, apply
from gen3workspace.hub.local import csp_header
from gen3workspace.spawner import grammar
from gen3workspace.spawner.local import Gen3LocalSpawner
from gen3workspace.spawner.safeyaml import SafeYAMLError, parse_yaml_bytes

ROOT = Path(__file__).resolve().parents[2]

INJECTING = [
    "https://portal.example.org; script-src *",
    "https://a.example.org,https://b.example.org",
    "https://a.example.org https://b.example.org",
    "'unsafe-inline'",
    "'none'",
    '"https://a.example.org"',
    "*",
    "https://a.example.org\nX-Evil: 1",
    "https://a.example.org\r",
    "",
]
SOURCES = ["https://portal.example.org", "https:", "*.example.org", "http://127.0.0.1:8000", "https://a.example.org:*/path"]
USERINFO_URLS = ["https://evil.example.net@data.example.org", "https://a:b@data.example.org", "https://.com", "https://data.example.org/x", "https://data.example.org?x", "javascript:alert(1)", "https://data.example.org\n"]


def _singleuser():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("ws_singleuser_config", ROOT / "spawner" / "singleuser" / "jupyter_server_config.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("source", INJECTING)
def test_a_csp_injection_is_refused_everywhere(source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["up", "--frame-ancestor", source, "--data-dir", str(tmp_path)])
    assert e.value.code == 2
    assert "--frame-ancestor" in capsys.readouterr().err
    with pytest.raises(TraitError, match=r"Gen3LocalSpawner\.frame_ancestors"):
        Gen3LocalSpawner(frame_ancestors=[source])
    with pytest.raises(grammar.GrammarError):
        csp_header([source])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"commons": {"url": "https://data.example.org"}, "hub": {"frameAncestors": [source]}}))
    with pytest.raises(ChartConfigError, match=r"^hub\.frameAncestors: "):
        apply(Config(), config, environ={})
    # The user's server (its own copy: the image has no gen3workspace package) refuses it too;
    # there a space separates two sources, which is how the spawner passes the list.
    if " " not in source:
        assert _singleuser().frame_ancestors_policy(source) is None


@pytest.mark.parametrize("source", SOURCES)
def test_csp_sources_pass_everywhere(source: str, tmp_path: Path) -> None:
    assert Gen3LocalSpawner(frame_ancestors=[source]).frame_ancestors == [source]
    assert csp_header([source]) == f"frame-ancestors 'self' {source}"
    assert _singleuser().frame_ancestors_policy(source) == f"frame-ancestors 'self' {source}"


@pytest.mark.parametrize("url", USERINFO_URLS)
def test_commons_url_is_scheme_host_and_port_only(url: str, tmp_path: Path) -> None:
    with pytest.raises(TraitError, match=r"Gen3OAuthenticator\.commons_url"):
        Gen3OAuthenticator(commons_url=url)
    with pytest.raises(TraitError, match=r"Gen3LocalSpawner\.commons_url"):
        Gen3LocalSpawner(commons_url=url)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"commons": {"url": url}}))
    with pytest.raises(ChartConfigError):
        apply(Config(), config, environ={})


def test_commons_urls_that_work() -> None:
    for url in ["https://data.example.org", "https://data.example.org/", "http://127.0.0.1:8080", "http://localhost:1"]:
        assert Gen3OAuthenticator(commons_url=url).commons_url == url.rstrip("/")


def test_quantities_are_finite_and_above_zero() -> None:
    from gen3workspace.spawner.flavors import parse_quantity

    for bad in ["0", "0m", "0.0", 0, 0.0, float("nan"), float("inf"), "NaN", "inf", "1\n", "-1", 1e7, True]:
        with pytest.raises(ValueError):
            parse_quantity(bad, "cpu")  # type: ignore[arg-type]
    for bad in ["0", "0Mi", "inf", "1Gi\n", "99999999Ti"]:
        with pytest.raises(ValueError):
            parse_quantity(bad, "memory")
    assert parse_quantity("250m", "cpu") == 0.25 and parse_quantity("0.5Gi", "memory") == 2**29


@pytest.mark.parametrize(
    "text, words",
    [
        (b"a: &a [1,2,3,4,5,6,7,8,9]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n", "aliases"),
        (b"[" * 100000, "nested deeper"),
        (b"a: \xff", "not UTF-8"),
        (b"a: .nan", "NaN"),
        (b"a: !!python/name:os.system", "not allowed"),
        (b"a: 1\n---\nb: 2", "not valid YAML"),
    ],
)
def test_the_safe_loader_stops_early_with_one_line(text: bytes, words: str) -> None:
    with pytest.raises(SafeYAMLError) as e:
        parse_yaml_bytes(text, "f.yaml")
    assert words in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("f.yaml: ")


@pytest.mark.parametrize("entry", ["a.example.org,b.example.org", "a b", "", "*.example.org", "http://x"])
def test_no_proxy_entries_cannot_smuggle_more(entry: str) -> None:
    with pytest.raises(TraitError, match=r"Gen3LocalSpawner\.no_proxy"):
        Gen3LocalSpawner(no_proxy=[entry])


def test_no_proxy_entries_that_work() -> None:
    entries = ["internal.commons.test", ".svc", "10.0.0.0/8", "127.0.0.1", "fd00::/8", "localhost"]
    assert Gen3LocalSpawner(no_proxy=entries).no_proxy == entries
