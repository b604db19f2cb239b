"""The deployed launcher (deploy/launcher.sh, filled in by deploy/build_artifact.py) and the project's shell
scripts pass shellcheck, and the launcher's placeholders are filled exactly. What the launcher does in a
Functions image is tested in tests/test_artifact.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from deploy.build_artifact import (
    LAUNCHER_TEMPLATE,
    LOADER,
    LOADER_COPIES,
    PLACEHOLDER,
    PYTHON_VERSION,
    BuildError,
    fill_placeholders,
    launcher_text,
)

ROOT = Path(__file__).resolve().parent.parent
# Findings the launcher keeps on purpose. Its text is what every deployed artifact carries, so it changes
# only for a reason of its own, not to quiet a style hint.
LAUNCHER_EXCLUDED = {
    "SC1007": "`CDPATH= cd …`: an empty CDPATH for that one command, so cd goes nowhere else, silently",
    "SC2015": "`[ … ] && [ … ] && [ … ] || continue`: the next folder when any test fails, as meant",
}


def shellcheck() -> str:
    """shellcheck's path; the test fails (it never skips) where it is missing."""
    found = shutil.which("shellcheck")
    if found is None:
        pytest.fail(
            "shellcheck is not installed: it comes from Debian's package `shellcheck` "
            "(apt-get install -y shellcheck), which the test set-up of ./scripts/test installs",
            pytrace=False,
        )
    return found


def shell_scripts() -> list[Path]:
    """Every shell script of the project: the scripts/ commands, their shared _venv.sh, CI's entry, and what
    the checkout's host.json runs."""
    candidates = [*sorted((ROOT / "scripts").iterdir()), ROOT / ".ci" / "run", ROOT / "run-from-checkout.sh"]
    return [path for path in candidates if path.is_file() and is_shell(path)]


def is_shell(path: Path) -> bool:
    first = path.read_text().partition("\n")[0]
    return path.suffix == ".sh" or (first.startswith("#!") and first.rstrip().endswith(("sh", "bash")))


def findings(*arguments: str) -> str:
    checked = subprocess.run([shellcheck(), *arguments], capture_output=True, text=True, timeout=60)
    assert checked.returncode in (0, 1), checked.stderr  # 1: findings; anything else: it could not check
    return checked.stdout


def test_the_launcher_as_deployed_passes_shellcheck(tmp_path: Path) -> None:
    """The text the artifact carries, placeholders filled, checked as the POSIX sh the host runs it with."""
    launcher = tmp_path / "tweets-monitor"
    launcher.write_text(launcher_text())
    assert "" == findings("--shell=sh", f"--exclude={','.join(LAUNCHER_EXCLUDED)}", str(launcher))


def test_the_launcher_keeps_the_findings_it_excludes(tmp_path: Path) -> None:
    """Each exclusion above still matches a finding: one the launcher no longer has leaves the list."""
    launcher = tmp_path / "tweets-monitor"
    launcher.write_text(launcher_text())
    report = findings("--shell=sh", "--format=gcc", str(launcher))
    assert [] == [code for code in LAUNCHER_EXCLUDED if f"[{code}]" not in report]


def test_the_shell_scripts_are_found() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in shell_scripts()}
    assert {
        "scripts/test",
        "scripts/_venv.sh",
        "scripts/build-artifact",
        ".ci/run",
        "run-from-checkout.sh",
    } <= names


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_the_shell_script_passes_shellcheck(script: Path) -> None:
    """A script is checked with what it sources (scripts/_venv.sh, found beside it); a file without a
    shebang is sourced by the bash scripts, and checked as bash."""
    dialect = [] if script.read_text().startswith("#!") else ["--shell=bash"]
    assert "" == findings("--external-sources", "--source-path=SCRIPTDIR", *dialect, str(script))


def test_the_launcher_has_exactly_the_placeholders_the_build_fills() -> None:
    assert {"PYTHON", "LOADER", "LOADER_COPIES"} == set(PLACEHOLDER.findall(LAUNCHER_TEMPLATE.read_text()))


def test_the_filled_launcher_names_the_bundled_python_and_loader_and_has_no_placeholder_left() -> None:
    text = launcher_text()
    assert [] == PLACEHOLDER.findall(text)
    assert f'python="$runtime/bin/{PYTHON_VERSION}"' in text
    assert f'loader="$runtime/lib/{LOADER}"' in text
    assert f"-name '{LOADER_COPIES}*'" in text
    assert text.startswith("#!/bin/sh\n")


def test_filling_keeps_everything_but_the_placeholders() -> None:
    template = 'a="${HOME:-}/@ONE@" {} "$@" @TWO@@ONE@\n'
    assert 'a="${HOME:-}/1" {} "$@" 21\n' == fill_placeholders(template, {"ONE": "1", "TWO": "2"})


def test_a_placeholder_without_a_value_fails_the_build_naming_it() -> None:
    with pytest.raises(BuildError, match="@PYTHN@ has no value"):
        fill_placeholders("python=@PYTHN@ loader=@LOADER@", {"LOADER": LOADER})


def test_a_value_without_a_placeholder_fails_the_build_naming_it() -> None:
    with pytest.raises(BuildError, match="LOADER_COPIES has no @LOADER_COPIES@ to fill"):
        fill_placeholders("loader=@LOADER@", {"LOADER": LOADER, "LOADER_COPIES": LOADER_COPIES})
