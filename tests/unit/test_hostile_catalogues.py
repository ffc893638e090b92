"""One corpus of hostile catalogues through all four readers: `flavors validate`, `up --flavors`, the hub's hot reload and the chart's values schema."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from gen3workspace.hub import cli
from gen3workspace.spawner.flavors import CatalogueError, CatalogueWatcher, default_catalogue_path, load_catalogue
from tests.helm.chart import CHART, NAMESPACE, RELEASE, VALUES_DIR, helm
from tests.support.hostile import HOSTILE, VALID, Case, as_chart_values, materialise

# No message a person reads may carry more than this much of what the file said.
MAX_MESSAGE = 4000


def run_in_thread(fn, timeout: float = 30):  # type: ignore[no-untyped-def]
    """Run fn; fail instead of hanging the suite if a reader blocks (a FIFO used to)."""
    result: list = []
    t = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the reader blocked"
    return result[0]


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = run_in_thread(lambda: cli.main(["flavors", "validate", str(path)]))
    out = capsys.readouterr()
    return rc, out.err + out.out


def up(path: Path, tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    # `up` checks the catalogue before it starts anything; a hostile one must stop it there.
    args = ["up", "--flavors", str(path), "--data-dir", str(tmp / "data"), "--port", str(cli.free_port())]
    rc = run_in_thread(lambda: cli.main(args))
    out = capsys.readouterr()
    return rc, out.err + out.out


def hub_reload(path: Path, tmp: Path, caplog: pytest.LogCaptureFixture) -> tuple[bool, str]:
    """The hub's path: a watcher serving a good catalogue sees the file replaced by the case."""
    live = tmp / "live.yaml"
    live.write_bytes(default_catalogue_path().read_bytes())
    watcher = CatalogueWatcher(live, logging.getLogger("test.hostile"))
    good = watcher.current()
    live.unlink()
    if path.exists() or path.is_symlink():
        live.symlink_to(path)
    served = run_in_thread(watcher.current)
    rejected = served is good and watcher.last_error is not None
    return rejected, watcher.last_error or ""


def chart(case: Case, tmp: Path) -> tuple[int, str]:
    values = tmp / "values.yaml"
    values.write_bytes(as_chart_values(case))
    r = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(VALUES_DIR / "defaults.yaml"), "-f", str(values))
    return r.returncode, r.stderr


def assert_clear(message: str, case: Case) -> None:
    assert "Traceback" not in message, message[-2000:]
    assert len(message) < MAX_MESSAGE, f"{case.name}: {len(message)} characters of message"
    assert message.strip(), f"{case.name}: no message"
    for line in message.strip().splitlines():
        assert len(line) < 600, f"{case.name}: a {len(line)}-character line"


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.name)
def test_every_reader_refuses_the_hostile_catalogue(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = materialise(case, tmp_path)
    name = path.name

    rc, message = validate(path, capsys)
    assert rc == 1, f"flavors validate accepted {case.name}: {message[:300]}"
    assert message.startswith(f"error: {path}") and name in message.splitlines()[0]
    assert_clear(message, case)

    rc, message = up(path, tmp_path, capsys)
    assert rc == 2, f"up --flavors accepted {case.name}: {message[:300]}"
    assert_clear(message, case)

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="test.hostile"):
        rejected, error = hub_reload(path, tmp_path, caplog)
    assert rejected, f"the hub took {case.name}"
    assert_clear(error, case)
    assert sum(len(r.getMessage()) for r in caplog.records) < MAX_MESSAGE

    if case.document:
        rc, message = chart(case, tmp_path)
        assert rc != 0, f"the chart accepted {case.name}"


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_every_reader_accepts_the_edges_of_each_grammar(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = materialise(case, tmp_path)
    rc, message = validate(path, capsys)
    assert rc == 0, message
    load_catalogue(path)
    live = tmp_path / "live.yaml"
    live.write_bytes(path.read_bytes())
    assert CatalogueWatcher(live).current().default == "a"
    rc, message = chart(case, tmp_path)
    assert rc == 0, message


def test_messages_name_file_flavor_and_field(tmp_path: Path) -> None:
    case = next(c for c in HOSTILE if c.name == "label-key-with-space")
    path = materialise(case, tmp_path)
    with pytest.raises(CatalogueError) as e:
        load_catalogue(path)
    assert str(e.value) == (
        f"{path}: flavor \"a\", field 'node_selector': the key 'bad key' is not valid here "
        "(a Kubernetes label key such as gen3.org/accelerator)"
    )
    case = next(c for c in HOSTILE if c.name == "billion-laughs")
    path = materialise(case, tmp_path)
    with pytest.raises(CatalogueError) as e:
        load_catalogue(path)
    assert str(e.value).startswith(f"{path}: line 5, column 14: more than 20000 YAML nodes") and "aliases" in str(e.value)


def test_a_megabyte_name_is_never_echoed_whole(tmp_path: Path) -> None:
    case = next(c for c in HOSTILE if c.name == "name-megabyte")
    path = materialise(case, tmp_path)
    with pytest.raises(CatalogueError) as e:
        load_catalogue(path)
    assert "aaaa…" in str(e.value) and len(str(e.value)) < 1000
