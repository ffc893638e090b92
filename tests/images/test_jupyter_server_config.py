"""Tests of the notebook image's Jupyter Server config: the portal-embedding CSP header and idle shutdown, from env."""

from __future__ import annotations

import pytest
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from tests.images.helpers import JUPYTER_CONFIG, load_module

config_module = load_module(JUPYTER_CONFIG, "gen3_workspace_jupyter_server_config")
DEFAULT = config_module.DEFAULT_IDLE_TIMEOUT_SECONDS


def applied(env: dict[str, str], c: Config | None = None) -> Config:
    c = Config() if c is None else c
    config_module.apply(c, env)
    return c


def csp(c: Config) -> str | None:
    settings = c.ServerApp.get("tornado_settings")
    return settings["headers"]["Content-Security-Policy"] if settings else None


# --- embedding -----------------------------------------------------------------------------


def test_frame_ancestors_become_the_csp_header() -> None:
    c = applied({"GEN3_FRAME_ANCESTORS": "https://data.example.org https://*.example.org:8443"})

    assert csp(c) == "frame-ancestors 'self' https://data.example.org https://*.example.org:8443"


def test_self_is_not_repeated() -> None:
    c = applied({"GEN3_FRAME_ANCESTORS": "'self' https://data.example.org"})

    assert csp(c) == "frame-ancestors 'self' https://data.example.org"


@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_without_frame_ancestors_the_default_stays(value: str | None) -> None:
    env = {} if value is None else {"GEN3_FRAME_ANCESTORS": value}

    c = applied(env)

    # Nothing set: jupyterhub-singleuser then sends its own "frame-ancestors 'none'".
    assert "tornado_settings" not in c.ServerApp


@pytest.mark.parametrize(
    "value",
    [
        "https://data.example.org; script-src *",
        "https://data.example.org,https://evil.example",
        "'none'",
        "https://data.example.org\r\nX-Injected: 1",
        "javascript:alert(1) 'unsafe-inline'",
    ],
)
def test_invalid_frame_ancestors_are_ignored_with_a_warning(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    c = applied({"GEN3_FRAME_ANCESTORS": value})

    assert "tornado_settings" not in c.ServerApp
    assert "ignoring GEN3_FRAME_ANCESTORS" in capsys.readouterr().err


def test_other_tornado_settings_and_headers_are_kept() -> None:
    c = Config()
    c.ServerApp.tornado_settings = {"headers": {"X-Frame-Test": "1"}, "static_url_prefix": "/static/"}

    applied({"GEN3_FRAME_ANCESTORS": "https://data.example.org"}, c)

    settings = c.ServerApp.tornado_settings
    assert settings["static_url_prefix"] == "/static/"
    assert settings["headers"] == {
        "X-Frame-Test": "1",
        "Content-Security-Policy": "frame-ancestors 'self' https://data.example.org",
    }


# --- idle shutdown -------------------------------------------------------------------------


def idle_settings(c: Config) -> tuple[int, int, int]:
    return (
        c.ServerApp.shutdown_no_activity_timeout,
        c.MappingKernelManager.cull_idle_timeout,
        c.TerminalManager.cull_inactive_timeout,
    )


def test_idle_timeout_defaults_to_an_hour() -> None:
    c = applied({})

    assert DEFAULT == 3600
    assert idle_settings(c) == (3600, 3600, 3600)
    assert c.MappingKernelManager.cull_interval == 300
    assert c.MappingKernelManager.cull_connected is True
    assert c.MappingKernelManager.cull_busy is False


@pytest.mark.parametrize(("value", "interval"), [("600", 300), ("60", 30), ("1", 1)])
def test_idle_timeout_from_env(value: str, interval: int) -> None:
    c = applied({"GEN3_IDLE_TIMEOUT_SECONDS": value})

    assert idle_settings(c) == (int(value),) * 3
    assert c.MappingKernelManager.cull_interval == interval
    assert c.TerminalManager.cull_interval == interval


def test_zero_turns_culling_off() -> None:
    c = applied({"GEN3_IDLE_TIMEOUT_SECONDS": "0"})

    assert idle_settings(c) == (0, 0, 0)
    assert "cull_interval" not in c.MappingKernelManager


@pytest.mark.parametrize("value", ["soon", "-5", "1.5"])
def test_invalid_idle_timeout_falls_back_with_a_warning(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    c = applied({"GEN3_IDLE_TIMEOUT_SECONDS": value})

    assert idle_settings(c) == (DEFAULT,) * 3
    assert "ignoring GEN3_IDLE_TIMEOUT_SECONDS" in capsys.readouterr().err


# --- as Jupyter loads it -------------------------------------------------------------------


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> Config:
    """The file loaded by traitlets' own config-file loader, as jupyter-server loads it."""
    monkeypatch.setenv("GEN3_FRAME_ANCESTORS", "https://data.example.org")
    monkeypatch.setenv("GEN3_IDLE_TIMEOUT_SECONDS", "900")
    return PyFileConfigLoader(JUPYTER_CONFIG.name, path=str(JUPYTER_CONFIG.parent)).load_config()


def test_loaded_as_a_config_file(loaded: Config) -> None:
    assert csp(loaded) == "frame-ancestors 'self' https://data.example.org"
    assert idle_settings(loaded) == (900, 900, 900)


def test_exec_with_an_injected_config() -> None:
    # What the config loader does: exec the file with get_config() in its namespace.
    c = Config()
    namespace = {"c": c, "get_config": lambda: c, "__file__": str(JUPYTER_CONFIG), "__name__": "config"}
    exec(compile(JUPYTER_CONFIG.read_text(encoding="utf-8"), str(JUPYTER_CONFIG), "exec"), namespace)

    assert c.MappingKernelManager.cull_idle_timeout > 0


def test_the_options_exist_on_the_real_classes(loaded: Config) -> None:
    # Config accepts any attribute name; only the real classes catch a misspelt option.
    serverapp = pytest.importorskip("jupyter_server.serverapp")
    kernels = pytest.importorskip("jupyter_server.services.kernels.kernelmanager")
    terminals = pytest.importorskip("jupyter_server_terminals.terminalmanager")

    server = serverapp.ServerApp(config=loaded)
    kernel_manager = kernels.AsyncMappingKernelManager(config=loaded)
    terminal_manager = terminals.TerminalManager(shell_command=["/bin/sh"], config=loaded)

    assert server.shutdown_no_activity_timeout == 900
    assert server.tornado_settings["headers"]["Content-Security-Policy"] == "frame-ancestors 'self' https://data.example.org"
    assert kernel_manager.cull_idle_timeout == 900
    assert kernel_manager.cull_interval == 300
    assert kernel_manager.cull_connected is True
    assert kernel_manager.cull_busy is False
    assert terminal_manager.cull_inactive_timeout == 900
    assert terminal_manager.cull_interval == 300
    for section, names in {
        "ServerApp": serverapp.ServerApp.class_trait_names(config=True),
        "MappingKernelManager": kernels.MappingKernelManager.class_trait_names(config=True),
        "TerminalManager": terminals.TerminalManager.class_trait_names(config=True),
    }.items():
        assert set(loaded[section]) <= set(names), section


# --- Export to Workspace -------------------------------------------------------------------


def test_loading_enables_the_export_extension_beside_it_without_dropping_others(loaded: Config) -> None:
    import sys

    from traitlets.config.loader import LazyConfigValue

    value = loaded.ServerApp.jpserver_extensions
    # An update, merged with what other config files enable (jupyterlab's own JSON), not a replacement.
    assert isinstance(value, LazyConfigValue)
    assert value.get_value({"jupyterlab": True}) == {"jupyterlab": True, "gen3ws_export": True}
    assert str(JUPYTER_CONFIG.parent) in sys.path
    assert (JUPYTER_CONFIG.parent / "gen3ws_export.py").is_file()
