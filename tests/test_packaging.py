"""What ships: the wheel carries every subpackage, and every environment installs the exact pins of the lock
files (requirements/app.lock for the deployed app/, requirements/dev.lock for the tests, demo and benchmarks,
which holds the app's pins unchanged). The artifact's own check is in tests/test_artifact.py."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from deploy.build_artifact import APP_LOCK, locked_versions, normalized

ROOT = Path(__file__).resolve().parent.parent
DEV_LOCK = ROOT / "requirements" / "dev.lock"
SUBPACKAGES = [
    "handler",
    *(f"handler/{name}" for name in ("reclaim", "transport", "functions", "ops", "dev")),
]


def test_the_wheel_contains_every_subpackage(tmp_path: Path) -> None:
    # Built from a copy: setuptools leaves build/ and *.egg-info behind in the folder it builds.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "handler", source / "handler", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("tweets_monitor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in SUBPACKAGES:
        assert f"{package}/__init__.py" in names, package
    sources = {path.relative_to(ROOT).as_posix() for path in (ROOT / "handler").rglob("*.py")}
    assert sources <= names  # every module, not only the packages


def test_the_test_environment_pins_the_apps_dependencies_unchanged() -> None:
    app, dev = locked_versions(APP_LOCK), locked_versions(DEV_LOCK)
    assert app == {name: dev.get(name) for name in app}


def test_this_environment_is_installed_at_the_locked_pins() -> None:
    """The suite runs against exactly what the lock says (./scripts/test installs it, hashes checked)."""
    installed = {
        normalized(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions()
    }
    differing = {
        name: (version, installed.get(name))
        for name, version in locked_versions(DEV_LOCK).items()
        if installed.get(name) != version and name != "async-timeout"  # only below Python 3.11.3
    }
    assert {} == differing
