"""Azure Functions Core Tools' part in `func azure functionapp publish`, played from its source (Core Tools
cannot run here): which worker runtime it resolves before uploading anything, and which files of the
folder go into the zip it uploads.

Read in Azure/azure-functions-core-tools at tag v4.0.6594 (commit 48490a7e), under src/Azure.Functions.Cli/;
each function cites the file and lines it follows.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

LOCAL_SETTINGS = "local.settings.json"
FUNCIGNORE = ".funcignore"
# Helpers/GlobalCoreToolsSettings.cs:46-88: the runtime flags, the first one present wins.
RUNTIME_FLAGS = {
    "--csharp": "dotnet",
    "--dotnet": "dotnet",
    "--dotnet-isolated": "dotnetIsolated",
    "--javascript": "node",
    "--typescript": "node",
    "--node": "node",
    "--java": "java",
    "--python": "python",
    "--powershell": "powershell",
    "--custom": "custom",
}
# Helpers/WorkerRuntimeLanguageHelper.cs:25-38: each runtime's name and aliases, matched ignoring case.
_RUNTIME_NAMES = {
    "dotnetIsolated": ("dotnet-isolated", "c#-isolated", "csharp-isolated", "f#-isolated", "fsharp-isolated"),
    "dotnet": ("c#", "csharp", "f#", "fsharp"),
    "node": ("js", "javascript", "typescript", "ts"),
    "python": ("py",),
    "java": (),
    "powershell": ("pwsh",),
    "custom": (),
}
NORMALIZE = {
    alias.lower(): runtime for runtime, aliases in _RUNTIME_NAMES.items() for alias in (*aliases, runtime)
}
# Common/FileSystemHelpers.cs:139 and 144: never uploaded, whatever .funcignore says.
IGNORED_FOLDERS = (".git", ".vscode")
IGNORED_FILES = (".funcignore", ".gitignore", "local.settings.json", "project.lock.json")


class CoreToolsError(Exception):
    """What Core Tools prints when it stops (a CliException)."""


def app_root(start: Path) -> Path:
    """The folder whose local.settings.json is read: the nearest of `start` and its parents holding host.json
    or local.settings.json (Common/SecretsManager.cs:16-28, Helpers/ScriptHostHelpers.cs:19-44)."""
    for folder in (start, *start.parents):
        if (folder / "host.json").is_file() or (folder / LOCAL_SETTINGS).is_file():
            return folder
    raise CoreToolsError(
        f"Unable to find project root. Expecting to find one of host.json, {LOCAL_SETTINGS} in project root."
    )


def local_settings(root: Path) -> dict[str, str]:
    """Values of <root>/local.settings.json; a missing or unreadable file is no values
    (Common/AppSettingsFile.cs:16-34)."""
    try:
        values = json.loads((root / LOCAL_SETTINGS).read_text()).get("Values") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in values.items()}


def worker_runtime(cwd: Path, args: Sequence[str] = ()) -> str:
    """The runtime `func azure functionapp publish` resolves before it uploads anything: a runtime flag,
    else FUNCTIONS_WORKER_RUNTIME in local.settings.json of the app root (Helpers/GlobalCoreToolsSettings.cs
    42-98, Helpers/WorkerRuntimeLanguageHelper.cs:130-144 and 167-178). None stops the publish at
    Actions/AzureActions/PublishFunctionAppAction.cs:160, which reads GlobalCoreToolsSettings.
    CurrentWorkerRuntime (GlobalCoreToolsSettings.cs:15-30) before any upload."""
    runtime = next((RUNTIME_FLAGS[flag] for flag in RUNTIME_FLAGS if flag in args), None)
    if runtime is None:
        settings = local_settings(app_root(cwd))
        value = next((v for k, v in settings.items() if k.lower() == "functions_worker_runtime"), "")
        runtime = NORMALIZE.get(value.strip().lower()) if value.strip() else None
    if runtime is None:
        raise CoreToolsError("Worker runtime cannot be 'None'. Please set a valid runtime.")
    return runtime


class GitIgnoreParser:
    """Common/GitIgnoreParser.cs (a port of codemix/gitignore-parser): lines trimmed, `#` comments and blanks
    dropped, `!` negates, a leading `/` is dropped (28-55); each pattern escaped, `**` as `(.+)` and `*` as
    `([^/]+)` (96-101); a path is denied when a positive pattern matches its start up to a word boundary
    and no negative one does (70-71, 78-94)."""

    def __init__(self, content: str) -> None:
        positive: list[str] = []
        negative: list[str] = []
        for raw in content.split("\n"):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            listed = negative if line.startswith("!") else positive
            line = line.removeprefix("!").removeprefix("/")
            listed.append(line)
        self._positive = self._combined(sorted(positive))
        self._negative = self._combined(sorted(negative))

    @staticmethod
    def _combined(patterns: list[str]) -> re.Pattern[str]:
        if not patterns:
            return re.compile(r"$^")
        return re.compile("^((" + ")|(".join(map(_pattern, patterns)) + r"))\b", re.ASCII)

    def accepts(self, path: str) -> bool:
        path = "" if path == "/" else path
        return bool(self._negative.search(path)) or not self._positive.search(path)


def _pattern(glob: str) -> str:
    escaped = re.sub(r"[\-\[\]/{}()+?.\\^$|]", lambda m: "\\" + m.group(0), glob)
    return escaped.replace("**", "(.+)").replace("*", r"([^\/]+)")


def published_files(root: Path) -> Iterator[str]:
    """The files, relative to the app root with `/`, that the zip holds: every file outside the always
    ignored folders and names (Common/FileSystemHelpers.cs:136-159, 161-190) that .funcignore accepts
    (Helpers/PublishHelper.cs:15-27, Helpers/ZipHelper.cs:50-57)."""
    funcignore = root / FUNCIGNORE
    parser = GitIgnoreParser(funcignore.read_text()) if funcignore.is_file() else None
    for folder, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if f.lower() not in IGNORED_FOLDERS)
        for name in sorted(files):
            if name.lower() in IGNORED_FILES:
                continue
            relative = Path(folder, name).relative_to(root).as_posix()
            if parser is None or parser.accepts(relative):
                yield relative


def publish_zip(root: Path, zip_path: Path) -> list[str]:
    """The zip Core Tools uploads. Without gozip beside it, Core Tools packs with DotNetZip, which keeps no
    Unix modes (Helpers/ZipHelper.cs:60-73, 90-105): neither does this one."""
    names = list(published_files(root))
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            info = zipfile.ZipInfo(name)
            info.external_attr = 0  # no modes: what DotNetZip writes
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (root / name).read_bytes())
    return names


def unpack(zip_path: Path, into: Path) -> None:
    """Unpacked as a zip deploy leaves it when modes are lost: every file 0644, folders 0755."""
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            target = into / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
            target.chmod(0o644)
