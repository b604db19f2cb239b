"""The deploy artifact (deploy/build_artifact.py), started the way the Functions host starts it, inside a
minimal Debian bullseye root (glibc 2.31, no Python at all) made with debootstrap: it answers the readiness
probe and a timer invocation against a real Redis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from deploy.build_artifact import (
    EXECUTABLE,
    build,
    installed_versions,
    launcher_text,
    locked_versions,
    size_mb,
)
from handler.dev import provision
from handler.dev.core_tools import publish_zip, unpack, worker_runtime
from handler.dev.host import FunctionsHost, completed
from handler.dev.local_redis import LocalRedis, environment_for, free_port
from handler.dev.samples import PIPELINE_NAMES
from handler.dev.tls import Certificates, tls_server
from tests.pipeline import abandon, create_group, expected_hash, hash_fields, tweet
from tests.reliability import DEPLOY_FACTS

APP_ROOT_INSIDE = "/home/site/wwwroot"  # where the host keeps the app on Linux
NAMES = PIPELINE_NAMES


@pytest.fixture(scope="session")
def bullseye_root() -> Path:
    """Debian bullseye's minimal base, made into .cache/ by ./scripts/setup-test-servers (a test installs
    nothing: where it is missing, the test fails naming the script)."""
    return provision.bullseye_root()


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("artifact") / "functionapp")


@pytest.fixture
def installed(bullseye_root: Path, artifact: Path) -> Iterator[Path]:
    """The artifact copied to the app root inside the bullseye root, as a publish would leave it."""
    app_root = bullseye_root / APP_ROOT_INSIDE.lstrip("/")
    shutil.rmtree(app_root, ignore_errors=True)
    shutil.copytree(artifact, app_root, symlinks=True)
    yield app_root
    shutil.rmtree(app_root, ignore_errors=True)
    for folder in LOADER_COPY_FOLDERS:  # what a launcher without its exec bits left behind
        for copy in (bullseye_root / folder).glob(f"{LOADER_COPY_PREFIX}*"):
            shutil.rmtree(copy, ignore_errors=True)


LOADER_COPY_PREFIX = "tweets-monitor-loader."  # the launcher's private folders for a copy of the loader
LOADER_COPY_FOLDERS = ("tmp", "dev/shm", "root")  # inside the root: /tmp, /dev/shm, $HOME


def host_command(root: Path, app_root: Path) -> list[str]:
    """What host.json tells the host to run, run in the app root, inside the bullseye root. As the host
    does: a rooted defaultExecutablePath is run as is, a relative one that exists in the app root from
    there, anything else is a command found on PATH; the arguments follow."""
    description = json.loads((app_root / "host.json").read_text())["customHandler"]["description"]
    executable = description["defaultExecutablePath"]
    if not executable.startswith("/") and (app_root / executable).is_file():
        executable = f"./{executable}"
    program = " ".join([executable, *description["arguments"]])
    return ["chroot", str(root), "/bin/sh", "-c", f"cd {APP_ROOT_INSIDE} && exec {program}"]


def clear_exec_bits(folder: Path) -> None:
    """`chmod -R a-x` on the files (folders stay traversable): what a publish from Windows, a zip unpacked
    without its modes or a squashfs mount without them leaves."""
    for parent, _, files in os.walk(folder):
        for name in files:
            path = Path(parent, name)
            if not path.is_symlink():
                path.chmod(path.stat().st_mode & ~0o111)


def test_the_root_is_bullseye_with_glibc_231_and_no_python(bullseye_root: Path) -> None:
    assert (bullseye_root / "etc" / "debian_version").read_text().startswith("11.")
    glibc = subprocess.run(
        ["chroot", str(bullseye_root), "/usr/bin/ldd", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[0]
    assert glibc.endswith("2.31"), glibc
    pythons = [
        p for folder in ("usr/bin", "bin", "usr/local/bin") for p in (bullseye_root / folder).glob("python*")
    ]
    assert [] == pythons


def test_the_artifact_answers_readiness_and_a_timer_invocation_in_bullseye(
    bullseye_root: Path, installed: Path, artifact: Path, redis_8: LocalRedis, client8: redis.Redis
) -> None:
    # The image's shell runs the launcher: no file of the package needs an exec bit to start it.
    description = json.loads((installed / "host.json").read_text())["customHandler"]["description"]
    assert ("/bin/sh", [f"./{EXECUTABLE}", "serve"]) == (
        description["defaultExecutablePath"],
        description["arguments"],
    )
    create_group(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
    entries = [tweet(n) for n in range(200)]
    abandon(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"], entries)
    # A host name, resolved by the bundled glibc from the root's /etc/hosts.
    env = environment_for(redis_8, MIN_IDLE_TIME_SEC="10", REDIS_HOST=f"localhost:{redis_8.port}", **NAMES)
    env.pop("PYTHONPATH", None)
    host = FunctionsHost(env, launch=host_command(bullseye_root, installed))
    try:
        host.start()
        answer = completed(host.invoke())
    finally:
        host.stop()
    assert 200 == answer["processed"], host.stderr
    for fields in entries:
        assert expected_hash(fields) == hash_fields(client8, b"tweet:" + fields[3])
    # With its exec bits the bundled loader runs in place: no copy, no warning.
    assert "running a copy" not in host.stderr
    assert [] == list((bullseye_root / "tmp").glob(f"{LOADER_COPY_PREFIX}*"))
    started = []
    for _ in range(3):  # cold start to readiness: process start to the first answer to GET /
        again = FunctionsHost(env, launch=host_command(bullseye_root, installed))
        again.start()
        started.append(again.started_in)
        again.stop()
    DEPLOY_FACTS.append(
        f"artifact {size_mb(artifact):.0f} MB; in a Debian bullseye root without Python it answered the "
        f"readiness probe in {min(started):.2f}-{max(started):.2f} s from process start (3 starts) and "
        "completed a timer invocation (200 tweets)"
    )


def test_the_artifact_starts_and_answers_with_every_exec_bit_cleared(
    bullseye_root: Path, installed: Path, redis_8: LocalRedis, client8: redis.Redis
) -> None:
    """A package whose exec bits were lost still starts as host.json says and completes a timer
    invocation: what the image already has runs the launcher, and the launcher runs a private copy of the
    bundled loader from a folder that lets it (the interpreter and the libraries are only read and mapped)."""
    clear_exec_bits(installed)
    executable = [
        str(p.relative_to(installed))
        for p in installed.rglob("*")
        if p.is_file() and p.stat().st_mode & 0o111
    ]
    assert [] == executable
    assert 126 == in_bullseye(bullseye_root, f"cd {APP_ROOT_INSIDE} && ./{EXECUTABLE} --help").returncode
    tmp = bullseye_root / "tmp"
    stale = tmp / f"{LOADER_COPY_PREFIX}stale"  # left by a start ten minutes ago
    stale.mkdir()
    os.utime(stale, (time.time() - 600, time.time() - 600))
    create_group(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
    entries = [tweet(n) for n in range(50)]
    abandon(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"], entries)
    env = environment_for(redis_8, MIN_IDLE_TIME_SEC="10", REDIS_HOST=f"localhost:{redis_8.port}", **NAMES)
    env.pop("PYTHONPATH", None)
    env.pop("TMPDIR", None)
    host = FunctionsHost(env, launch=host_command(bullseye_root, installed))
    try:
        host.start()
        answer = completed(host.invoke())
    finally:
        host.stop()
    assert 50 == answer["processed"], host.stderr
    for fields in entries:
        assert expected_hash(fields) == hash_fields(client8, b"tweet:" + fields[3])
    copies = sorted(p.name for p in tmp.glob(f"{LOADER_COPY_PREFIX}*"))
    assert 1 == len(copies) and stale.name not in copies, copies  # its own copy; the stale one removed
    assert f"running a copy, /tmp/{copies[0]}/" in host.stderr, host.stderr
    assert oct((tmp / copies[0]).stat().st_mode & 0o777) == oct(0o700)  # private


def test_the_zip_core_tools_uploads_runs_unpacked_without_its_modes(
    bullseye_root: Path, artifact: Path, tmp_path: Path, redis_8: LocalRedis, client8: redis.Redis
) -> None:
    """What `cd dist/functionapp && func azure functionapp publish <app> --custom` uploads: Core Tools
    resolves the runtime in the folder (from its local.settings.json, even without the flag), zips what
    .funcignore lets in (handler/dev/core_tools.py plays its source), and the zip, unpacked with no Unix
    modes, starts as host.json says and completes a timer invocation."""
    assert "custom" == worker_runtime(artifact)
    package = tmp_path / "package.zip"
    names = publish_zip(artifact, package)
    assert "local.settings.json" not in names and "host.json" in names and EXECUTABLE in names
    app_root = bullseye_root / APP_ROOT_INSIDE.lstrip("/")
    shutil.rmtree(app_root, ignore_errors=True)
    unpack(package, app_root)
    try:
        create_group(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
        abandon(
            client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"], [tweet(n) for n in range(30)]
        )
        env = environment_for(
            redis_8, MIN_IDLE_TIME_SEC="10", REDIS_HOST=f"localhost:{redis_8.port}", **NAMES
        )
        env.pop("PYTHONPATH", None)
        host = FunctionsHost(env, launch=host_command(bullseye_root, app_root))
        try:
            host.start()
            assert 30 == completed(host.invoke())["processed"], host.stderr
        finally:
            host.stop()
    finally:
        shutil.rmtree(app_root, ignore_errors=True)
        for copy in (bullseye_root / "tmp").glob(f"{LOADER_COPY_PREFIX}*"):
            shutil.rmtree(copy, ignore_errors=True)


def can_mount_privately(folder: Path) -> bool:
    """Whether this process may mount in a private mount namespace (unshare -m): CAP_SYS_ADMIN."""
    unshare = shutil.which("unshare")
    probe = [str(unshare), "-m", "mount", "--bind", str(folder), str(folder)]
    return unshare is not None and subprocess.run(probe, capture_output=True).returncode == 0


# What is mounted noexec, and how the launcher says it cannot start.
NOEXEC = {
    "package": "does not load from /home/site/wwwroot (is it a noexec mount?",
    "everywhere": "no writable folder among $TMPDIR, /tmp, /dev/shm and $HOME allows executing",
}


@pytest.mark.parametrize("noexec", list(NOEXEC))
def test_on_a_noexec_mount_the_launcher_exits_126_saying_so(
    bullseye_root: Path, installed: Path, noexec: str
) -> None:
    """Out of reach, and said so: a package on a noexec mount cannot run (the kernel maps no code from it,
    whatever runs the loader); nor can a package without exec bits when no writable folder ($TMPDIR, /tmp,
    /dev/shm, $HOME) lets a copy of the loader run. The mounts are made in a private mount namespace:
    nothing outside this test sees them."""
    # The suite runs as root already (the bullseye root is entered with chroot): never skipped.
    assert can_mount_privately(installed), "no private mount namespace (unshare -m and mount need root)"
    clear_exec_bits(installed)
    mounts = [f"mount --bind {installed} {installed}", f"mount -o remount,bind,noexec {installed}"]
    if noexec == "everywhere":  # and $HOME is /tmp
        mounts += [
            f"mount -t tmpfs -o noexec tmpfs {bullseye_root / folder}" for folder in ("tmp", "dev/shm")
        ]
    start = f"cd {APP_ROOT_INSIDE} && HOME=/tmp exec /bin/sh ./{EXECUTABLE} --help"
    script = " && ".join([*mounts, f"exec chroot {bullseye_root} /bin/sh -c '{start}'"])
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60, env=CLEAN_ENV
    )
    assert (126, "") == (done.returncode, done.stdout), done.stderr
    assert NOEXEC[noexec] in done.stderr
    assert [] == list((bullseye_root / "tmp").glob(f"{LOADER_COPY_PREFIX}*"))  # no copy left behind


def test_the_artifact_speaks_verified_tls_in_bullseye(
    bullseye_root: Path, installed: Path, tls_binary: tuple[Path, dict[str, str]], certificates: Certificates
) -> None:
    server = tls_server(
        tls_binary, certificates.server_cert, certificates.server_key, certificates.ca, "TLSv1.2 TLSv1.3"
    )
    client = server.client(ssl=True, ssl_ca_certs=str(certificates.ca))
    try:
        create_group(client, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
        abandon(
            client, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"], [tweet(n) for n in range(20)]
        )
        shutil.copy(certificates.ca, installed / "ca.pem")
        env = environment_for(
            server,
            REDIS_HOST=f"localhost:{server.port}",
            REDIS_TLS="true",
            REDIS_TLS_CA_FILE=f"{APP_ROOT_INSIDE}/ca.pem",
            MIN_IDLE_TIME_SEC="10",
            **NAMES,
        )
        host = FunctionsHost(env, launch=host_command(bullseye_root, installed)).start()
        try:
            assert 20 == completed(host.invoke())["processed"], host.stderr
        finally:
            host.stop()
    finally:
        client.close()
        server.cleanup()


def test_without_a_system_ca_bundle_the_launcher_uses_certifis(bullseye_root: Path, installed: Path) -> None:
    """A minimal image may have no CA bundle: TLS must still verify Azure's certificates, with certifi's."""
    assert not (bullseye_root / "etc" / "ssl" / "certs" / "ca-certificates.crt").exists()
    script = f"cd {APP_ROOT_INSIDE} && sh -x ./{EXECUTABLE} --help"
    clean = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # as the platform starts it: no SSL_CERT_FILE
    traced = subprocess.run(
        ["chroot", str(bullseye_root), "/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
    )
    assert 0 == traced.returncode, traced.stderr
    assert f"export SSL_CERT_FILE={APP_ROOT_INSIDE}/app/certifi/cacert.pem" in traced.stderr


def test_the_artifacts_launcher_is_deploy_launcher_sh_filled_in(artifact: Path) -> None:
    """The launcher shellcheck reads (tests/test_launcher.py) is the one that ships, runnable by hand."""
    launcher = artifact / EXECUTABLE
    assert launcher_text() == launcher.read_text()
    assert 0o755 == launcher.stat().st_mode & 0o777


def test_the_artifact_holds_exactly_the_locked_dependencies_and_no_dev_tools(artifact: Path) -> None:
    app = artifact / "app"
    assert locked_versions() == installed_versions(app)
    assert not (app / "handler" / "dev").exists()
    for package in ("reclaim", "transport", "functions", "ops"):
        assert (app / "handler" / package / "__init__.py").exists(), package


def test_the_demo_in_the_artifact_exits_2_saying_it_is_not_deployed(
    bullseye_root: Path, installed: Path
) -> None:
    done = subprocess.run(
        ["chroot", str(bullseye_root), "/bin/sh", "-c", f"{APP_ROOT_INSIDE}/{EXECUTABLE} demo"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 2 == done.returncode, done.stderr
    assert "the demo is not part of the deployed app" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_in_the_artifact_reads_the_timer_from_its_own_folder(
    bullseye_root: Path, installed: Path, redis_8: LocalRedis, client8: redis.Redis
) -> None:
    """Started from another working directory, `run` finds monitor/function.json beside the launcher (the
    package sits under app/), and without it exits 2 naming where it looked: no second copy of the
    schedule."""
    create_group(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
    env = environment_for(
        redis_8, MIN_IDLE_TIME_SEC="10", METRICS_ADDRESS=f"127.0.0.1:{free_port()}", **NAMES
    )
    env.pop("PYTHONPATH", None)
    env.pop("FUNCTIONS_APP_ROOT_PATH", None)
    run = ["chroot", str(bullseye_root), "/bin/sh", "-c", f"cd / && exec {APP_ROOT_INSIDE}/{EXECUTABLE} run"]
    schedule = json.loads((installed / "monitor" / "function.json").read_text())["bindings"][0]["schedule"]
    process = subprocess.Popen(run, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = ""
        deadline = time.monotonic() + 30
        while "running on schedule" not in line and time.monotonic() < deadline:
            line = process.stderr.readline()
        assert f"running on schedule {schedule!r}" in line
    finally:
        process.terminate()
        process.communicate(timeout=30)  # reads the rest and closes the pipe
    (installed / "monitor" / "function.json").unlink()
    done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert 2 == done.returncode, done.stderr
    assert f"{APP_ROOT_INSIDE}/monitor/function.json does not exist" in done.stderr


CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}  # as the platform starts it
PLANTED = "PLANTED CODE RAN"
# Modules a working directory might hold (a checkout, a scratch folder): none of them may replace the
# bundled code. `--help` imports the handler package and redis (handler/cli.py imports it at the top).
PLANTS = {
    "handler": {
        "handler/__init__.py": f"print({PLANTED!r})\n",
        "handler/__main__.py": f"print({PLANTED!r})\nraise SystemExit(97)\n",
    },
    "redis": {"redis.py": f"print({PLANTED!r})\nraise SystemExit(97)\n"},
}


def in_bullseye(root: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chroot", str(root), "/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=CLEAN_ENV,
    )


def test_the_launcher_ignores_modules_in_the_working_directory(bullseye_root: Path, installed: Path) -> None:
    """`python -m` would put the working directory first on the import path; the launcher's Python runs in
    safe-path mode, so only the bundled handler and dependencies are imported."""
    outcomes = {}
    for plant, files in PLANTS.items():
        folder = installed / "planted" / plant  # inside the app root, removed with it
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        done = in_bullseye(
            bullseye_root, f"cd {APP_ROOT_INSIDE}/planted/{plant} && ../../{EXECUTABLE} --help"
        )
        outcomes[plant] = (done.returncode, PLANTED in done.stdout, done.stdout[:21])
    bundled = (0, False, "usage: tweets-monitor")  # exit code, the planted code ran, what was printed
    assert {plant: bundled for plant in PLANTS} == outcomes


def test_the_launcher_works_through_symlinks(bullseye_root: Path, installed: Path) -> None:
    """A link to the launcher in another folder (absolute, relative, a link to a link, found on PATH) starts
    the bundled code beside the real script, exactly as running the script itself does."""
    direct = in_bullseye(bullseye_root, f"cd / && {APP_ROOT_INSIDE}/{EXECUTABLE} --help")
    assert 0 == direct.returncode, direct.stderr
    links = bullseye_root / "usr" / "local" / "bin"  # on PATH, outside the app root
    made = {
        links / "tm-absolute": Path(f"{APP_ROOT_INSIDE}/{EXECUTABLE}"),
        links / "tm-relative": Path(f"../../..{APP_ROOT_INSIDE}/{EXECUTABLE}"),
        links / "tm-chained": Path("tm-relative"),
    }
    try:
        for link, target in made.items():
            link.symlink_to(target)
        for script in (
            "cd / && /usr/local/bin/tm-absolute --help",
            "cd /tmp && ../usr/local/bin/tm-relative --help",
            "cd / && tm-chained --help",  # found on PATH
        ):
            through = in_bullseye(bullseye_root, script)
            assert (0, direct.stdout) == (through.returncode, through.stdout), (script, through.stderr)
    finally:
        for link in made:
            link.unlink(missing_ok=True)


def test_the_artifact_ships_no_tests(artifact: Path) -> None:
    """Test folders of the standard library and of the dependencies (and modules only tests import) are
    dead weight in the upload."""
    shipped = []
    for folder, dirs, files in os.walk(artifact):
        shipped += [Path(folder, name) for name in dirs if name in {"test", "tests"}]
        dirs[:] = [name for name in dirs if name not in {"test", "tests"}]  # name the folder, not its files
        shipped += [
            Path(folder, name)
            for name in files
            if name.endswith(".py") and (name.startswith("test_") or name == "conftest.py")
        ]
    assert [] == sorted(str(path.relative_to(artifact)) for path in shipped)
