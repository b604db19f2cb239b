"""Build the folder `func azure functionapp publish` uploads: the handler with its own Python and C library.

Why a bundled interpreter *and* a bundled loader: the Functions Linux images differ in what they carry
(Debian bullseye's glibc 2.31 and no Python 3.11 on some), and a Python built here links against this
machine's newer glibc. So the folder carries the interpreter this script runs under, its standard library,
the project's dependencies, and every shared library they load, glibc's dynamic loader included. The
launcher starts the interpreter through that loader, so the host's own C library is never used: the folder
runs on any x86_64 Linux kernel, with or without Python, whatever its glibc (tested in a Debian bullseye
root that has no Python at all; see tests/test_artifact.py).

    python deploy/build_artifact.py [--out dist/functionapp]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import py_compile
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_LOCK = ROOT / "requirements" / "app.lock"  # what goes into app/, written by ./scripts/lock
PYTHON_VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}"
LOADER = "ld-linux-x86-64.so.2"
EXECUTABLE = "tweets-monitor"
# host.json starts the launcher with the image's shell, not as a program: it then runs without an exec bit.
SHELL = "/bin/sh"
LOADER_COPIES = "tweets-monitor-loader."  # the launcher's private folders for a runnable copy of the loader
# Parts of the standard library a headless service never imports.
STDLIB_LEFT_OUT = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "site-packages",
    "pydoc_data",
    "__pycache__",
    f"config-{PYTHON_VERSION[6:]}-x86_64-linux-gnu",
}
# Extension modules for a desktop, a terminal or CPython's own tests, and the system libraries they would
# drag in (Tk, X11, ncurses, SQLite, NIS).
DYNLOAD_LEFT_OUT = (
    "_tkinter",
    "_test",
    "_xxtest",
    "xxlimited",
    "_ctypes_test",
    "_curses",
    "nis",
    "ossaudiodev",
    "readline",
    "_sqlite3",
    "_dbm",
    "_gdbm",
    "spwd",
    "audioop",
)
# Test folders and modules in the standard library and the dependencies: nothing at run time imports them.
TEST_ONLY_FOLDERS = {"test", "tests"}
# The launcher, a /bin/sh script kept as a file so that shellcheck reads it (tests/test_launcher.py). Its
# @NAME@ placeholders are filled by launcher_text(); nothing else in it changes.
LAUNCHER_TEMPLATE = ROOT / "deploy" / "launcher.sh"
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
FUNCIGNORE = """# Everything here is needed at run time; keep local-only files out of the upload.
local.settings.json
.funcignore
"""
# What Core Tools reads before it uploads anything: the worker runtime, from --custom or from this file in the
# folder being published (Core Tools v4 Helpers/GlobalCoreToolsSettings.cs, Common/SecretsManager.cs; see
# handler/dev/core_tools.py). Nothing else: no setting of this checkout travels with the folder, and Core
# Tools never puts this file in the zip (.funcignore says so too).
LOCAL_SETTINGS = {"IsEncrypted": False, "Values": {"FUNCTIONS_WORKER_RUNTIME": "custom"}}


class BuildError(RuntimeError):
    pass


def build(out: Path) -> Path:
    # The folder carries this machine's interpreter and C library: it must be the platform's (Linux x86_64).
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise BuildError(
            f"build on Linux x86_64, the Functions platform (this is {sys.platform} {platform.machine()})"
        )
    if sys.version_info[:2] != (3, 11):
        raise BuildError(f"build with Python 3.11 (this is {sys.version.split()[0]})")
    if out.exists():
        shutil.rmtree(out)
    runtime, app = out / "runtime", out / "app"
    _copy_interpreter(runtime)
    _install_dependencies(app)
    _remove_tests(app)
    if installed_versions(app) != locked_versions():
        raise BuildError(f"app/ does not hold exactly what {APP_LOCK.relative_to(ROOT)} pins")
    # handler/dev (the demo and throwaway servers) is never deployed.
    shutil.copytree(ROOT / "handler", app / "handler", ignore=_not_deployed)
    _bundle_shared_libraries(runtime, [runtime, app])
    # Compiled ahead, with hashes rather than mtimes (a zip deploy changes mtimes): a faster cold start.
    for folder in (runtime / "lib" / PYTHON_VERSION, app):
        compileall.compile_dir(
            folder, quiet=1, workers=0, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
        )
    _write_function_app(out)
    return out


def _copy_interpreter(runtime: Path) -> None:
    base = Path(sys.base_prefix)
    (runtime / "bin").mkdir(parents=True)
    shutil.copy2(Path(sys.base_exec_prefix) / "bin" / PYTHON_VERSION, runtime / "bin" / PYTHON_VERSION)
    stdlib = Path(sysconfig.get_paths(vars={"base": str(base), "platbase": str(base)})["stdlib"])
    shutil.copytree(stdlib, runtime / "lib" / PYTHON_VERSION, ignore=_left_out)


def _not_deployed(folder: str, names: list[str]) -> set[str]:
    left_out = {"__pycache__"}
    if Path(folder) == ROOT / "handler":
        left_out.add("dev")
    return left_out & set(names)


def locked_versions(lock: Path = APP_LOCK) -> dict[str, str]:
    """{normalized distribution name: version} pinned by a lock file."""
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            pins[normalized(match.group(1))] = match.group(2)
    return pins


def installed_versions(app: Path) -> dict[str, str]:
    """{normalized distribution name: version} of what pip installed into `app`, read from its dist-info."""
    found = {}
    for dist_info in app.glob("*.dist-info"):
        metadata = (dist_info / "METADATA").read_text(errors="replace")
        name = re.search(r"^Name: (.+)$", metadata, re.M)
        version = re.search(r"^Version: (.+)$", metadata, re.M)
        if name and version:
            found[normalized(name.group(1).strip())] = version.group(1).strip()
    return found


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _left_out(folder: str, names: list[str]) -> set[str]:
    if folder.endswith("lib-dynload"):
        return {name for name in names if name.startswith(DYNLOAD_LEFT_OUT)}
    return (STDLIB_LEFT_OUT & set(names)) | _test_only(names)


def _test_only(names: list[str]) -> set[str]:
    """Test folders (distutils/tests, croniter/tests, …) and test modules (test_*.py, conftest.py)."""
    return {
        name
        for name in names
        if name in TEST_ONLY_FOLDERS
        or (name.endswith(".py") and (name.startswith("test_") or name == "conftest.py"))
    }


def _remove_tests(folder: Path) -> None:
    """What the wheels ship for their own test suites (see _test_only)."""
    for parent, folders, files in os.walk(folder):
        for name in _test_only(folders):
            shutil.rmtree(Path(parent, name))
        for name in _test_only(files):
            Path(parent, name).unlink()
        folders[:] = [name for name in folders if name not in TEST_ONLY_FOLDERS]


def _install_dependencies(app: Path) -> None:
    """Exactly the pins (and hashes) of requirements/app.lock, nothing resolved afresh; certifi among them is
    the CA bundle of last resort, for an image without one (see deploy/launcher.sh)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-compile",
            "--require-hashes",
            "--no-deps",
            "--only-binary=:all:",
            "--target",
            str(app),
            "-r",
            str(APP_LOCK),
        ],
        check=True,
    )
    for junk in app.glob("bin"):
        shutil.rmtree(junk)


def _bundle_shared_libraries(runtime: Path, roots: list[Path]) -> None:
    """Copy into runtime/lib every library that the interpreter and the extension modules load from the
    system, glibc and its loader included; libraries the wheels carry themselves stay where they are."""
    lib = runtime / "lib"
    interpreter = runtime / "bin" / PYTHON_VERSION
    libpython = Path(sysconfig.get_config_var("LIBDIR") or "") / str(sysconfig.get_config_var("INSTSONAME"))
    objects = [interpreter, *[p for root in roots for p in root.rglob("*.so*") if p.is_file()]]
    if libpython.is_file():
        shutil.copy2(libpython, lib / libpython.name)
        objects.append(lib / libpython.name)
    needed: dict[str, Path] = {}
    for path in objects:
        needed.update(_system_libraries(path, inside=runtime.parent))
    for name, source in needed.items():
        shutil.copy2(source.resolve(), lib / name)
    (lib / LOADER).chmod(0o755)
    # Symbols only a debugger reads: libpython alone shrinks from about 23 MB to 5.
    strip = shutil.which("strip")
    if strip:
        unstripped = [interpreter, *(p for p in lib.glob("*.so*") if p.name != LOADER)]
        subprocess.run([strip, "--strip-unneeded", *map(str, unstripped)], check=True)


def _system_libraries(path: Path, inside: Path) -> dict[str, Path]:
    """What `ldd` resolves for `path` outside the artifact: {file name to bundle: where it is now}."""
    listing = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
    found: dict[str, Path] = {}
    for line in listing.splitlines():
        # "libfoo.so.1 => /lib/libfoo.so.1 (0x…)", or the loader's own "/lib64/ld-linux-x86-64.so.2 (0x…)"
        match = re.match(r"\s*(?P<name>\S+)\s+=>\s+(?P<path>\S+)\s+\(", line) or re.match(
            r"\s*(?P<name>(?P<path>/\S+))\s+\(", line
        )
        if not match:
            continue  # linux-vdso and "not a dynamic executable"
        target = Path(match.group("path"))
        if inside in target.resolve().parents or not target.exists():
            continue
        found[Path(match.group("name")).name] = target
    return found


def _write_function_app(out: Path) -> None:
    launcher = out / EXECUTABLE
    launcher.write_text(launcher_text())
    launcher.chmod(0o755)  # `./tweets-monitor check` in a console; the host itself needs no exec bit
    host = json.loads((ROOT / "host.json").read_text())
    host["customHandler"]["description"].update(
        {"defaultExecutablePath": SHELL, "arguments": [f"./{EXECUTABLE}", "serve"]}
    )
    (out / "host.json").write_text(json.dumps(host, indent=4) + "\n")
    shutil.copytree(ROOT / "monitor", out / "monitor")
    (out / ".funcignore").write_text(FUNCIGNORE)
    (out / "local.settings.json").write_text(json.dumps(LOCAL_SETTINGS, indent=4) + "\n")


def publish_command(out: Path) -> str:
    """How to publish the folder, on every plan: --custom names the runtime even where the folder's
    local.settings.json is missing (copied without its dot files, say)."""
    return f"cd {out} && func azure functionapp publish <function-app-name> --custom"


def launcher_text() -> str:
    """deploy/launcher.sh with this build's interpreter, loader and copy-folder prefix in place."""
    return fill_placeholders(
        LAUNCHER_TEMPLATE.read_text(),
        {"PYTHON": PYTHON_VERSION, "LOADER": LOADER, "LOADER_COPIES": LOADER_COPIES},
    )


def fill_placeholders(template: str, values: dict[str, str]) -> str:
    """Every @NAME@ in `template` replaced by values[NAME]. A placeholder without a value, or a value
    without a placeholder, is a BuildError naming it: a renamed placeholder never ships unfilled."""
    found = set(PLACEHOLDER.findall(template))
    if found != set(values):
        problems = [f"@{name}@ has no value" for name in sorted(found - set(values))]
        problems += [f"{name} has no @{name}@ to fill" for name in sorted(set(values) - found)]
        raise BuildError(f"{LAUNCHER_TEMPLATE.name}: " + "; ".join(problems))
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def bundled_runtime() -> str:
    """The interpreter's and the C library's versions the folder carries: they come from the build machine."""
    libc = os.confstr("CS_GNU_LIBC_VERSION") or "unknown C library"
    return f"Python {platform.python_version()}, {libc}"


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "functionapp")
    args = parser.parse_args()
    try:
        out = build(args.out.resolve())
    except BuildError as exc:
        print(f"build-artifact: {exc}", file=sys.stderr)
        return 2
    print(f"built {out} ({size_mb(out):.1f} MB)")
    print(f"bundled from this machine: {bundled_runtime()}")
    print("publish it with:")
    print(f"  {publish_command(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
