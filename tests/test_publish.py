"""Publishing the built folder as docs/deploy.md says: Core Tools' part played from its source
(handler/dev/core_tools.py): the worker runtime it resolves before uploading anything, and the files
.funcignore lets into the zip. That the zip runs, unpacked without its modes, is in tests/test_artifact.py."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from deploy.build_artifact import EXECUTABLE, _write_function_app, publish_command
from handler.dev.core_tools import (
    CoreToolsError,
    GitIgnoreParser,
    publish_zip,
    published_files,
    unpack,
    worker_runtime,
)
from handler.dev.host import ERRORS_BEFORE_SHUTDOWN, FunctionsHost
from handler.dev.samples import PIPELINE_NAMES

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy.md"


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """The function app's own files as the build writes them (not the interpreter: Core Tools' decisions
    read only these)."""
    out = tmp_path / "functionapp"
    out.mkdir()
    _write_function_app(out)
    return out


def test_core_tools_resolves_the_custom_runtime_in_the_built_folder_without_a_flag(built: Path) -> None:
    assert "custom" == worker_runtime(built)
    assert "custom" == worker_runtime(built / "monitor")  # from a subfolder, as Core Tools walks up


def test_the_runtime_flag_wins_and_a_folder_without_settings_stops_the_publish(tmp_path: Path) -> None:
    (tmp_path / "host.json").write_text("{}")
    with pytest.raises(CoreToolsError, match="Worker runtime cannot be 'None'"):
        worker_runtime(tmp_path)
    assert "custom" == worker_runtime(tmp_path, ["azure", "functionapp", "publish", "app", "--custom"])


def test_the_built_folders_local_settings_hold_only_the_runtime(built: Path) -> None:
    """Nothing else: no setting of the checkout's (a password, a local Redis) can travel with the folder."""
    document = json.loads((built / "local.settings.json").read_text())
    assert {"IsEncrypted": False, "Values": {"FUNCTIONS_WORKER_RUNTIME": "custom"}} == document


def test_the_zip_holds_what_runs_and_never_the_local_settings(built: Path) -> None:
    files = set(published_files(built))
    assert {"host.json", EXECUTABLE, "monitor/function.json"} <= files
    assert "local.settings.json" not in files and ".funcignore" not in files
    (built / "app").mkdir()
    (built / "app" / "local.settings.json.py").write_text("")  # a name that starts like an ignored one
    assert "app/local.settings.json.py" in set(published_files(built))


def test_the_funcignore_parser_follows_core_tools() -> None:
    parser = GitIgnoreParser("# comment\n\nlocal.settings.json\n/dist\n*.pyc\nnotes\n!notes/keep.txt\n")
    assert not parser.accepts("local.settings.json")
    assert not parser.accepts("dist/functionapp/host.json")
    assert not parser.accepts("a.pyc") and parser.accepts("app/a.pyc")  # `*` never crosses a `/`
    assert not parser.accepts("notes/a.txt") and parser.accepts("notes/keep.txt")
    assert parser.accepts("distribution.txt")  # a pattern matches a prefix ending at a word boundary
    assert not parser.accepts("dist.txt")  # ... such as a dot


def test_every_publish_command_in_the_docs_and_the_build_names_the_runtime() -> None:
    commands = re.findall(r"func azure functionapp publish[^\n`]*", DEPLOY.read_text())
    assert commands
    assert [] == [command for command in commands if "--custom" not in command]
    assert "--custom" in publish_command(ROOT / "dist" / "functionapp")


def test_the_repository_published_by_mistake_tells_the_host_what_to_publish(tmp_path: Path) -> None:
    """A common habit: `func azure functionapp publish` in the checkout itself. Its zip has no .venv
    (.funcignore), so the handler host.json starts there cannot run; what it writes on stderr, which the host
    logs as errors and quotes at each exit, names the folder to publish instead, and the host gives up after
    its third error rather than answering nothing forever."""
    app_root = _published_checkout(tmp_path)
    host = FunctionsHost({"PATH": str(_path_with(tmp_path / "bin"))}, app_root=app_root)  # no python3 there
    with pytest.raises(AssertionError, match="exited at start"):
        host.start()
    host.wait_until(lambda: not host.running, "the host to shut down after its third worker error")
    assert ERRORS_BEFORE_SHUTDOWN == len(host.errors), host.errors
    for error in host.errors:
        assert "exited with code 1" in error and "publish dist/functionapp" in error, error


def test_a_checkout_without_its_venv_runs_on_a_python_on_path_that_has_the_handlers_packages(
    tmp_path: Path,
) -> None:
    """The demo or `func start` where the project was installed into a virtualenv of one's own (activated,
    so its python3 is first on PATH) rather than the checkout's .venv: that Python is used."""
    app_root = _published_checkout(tmp_path)
    venv_python = tmp_path / "python3"  # a script: a link to a virtualenv's Python loses its virtualenv
    venv_python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    venv_python.chmod(0o755)
    path = _path_with(tmp_path / "bin", python3=venv_python)
    # Readiness needs no Redis: the settings only have to be valid.
    settings = {
        **PIPELINE_NAMES,
        "REDIS_HOST": "127.0.0.1:1",
        "REDIS_TLS": "false",
        "MIN_IDLE_TIME_SEC": "10",
    }
    host = FunctionsHost({"PATH": str(path), **settings}, app_root=app_root).start()
    try:
        assert host.alive()
    finally:
        host.stop()
    assert [] == host.errors


def _published_checkout(tmp_path: Path) -> Path:
    """The repository as a publish of it uploads it: no .venv."""
    app_root = tmp_path / "wwwroot"
    publish_zip(ROOT, tmp_path / "checkout.zip")
    unpack(tmp_path / "checkout.zip", app_root)
    assert not (app_root / ".venv").exists()
    return app_root


def _path_with(folder: Path, **programs: Path) -> Path:
    """A PATH of one folder: the tools run-from-checkout.sh calls, and `programs` under their names."""
    folder.mkdir()
    for name, target in {"dirname": Path(shutil.which("dirname") or "/usr/bin/dirname"), **programs}.items():
        (folder / name).symlink_to(target)
    return folder
