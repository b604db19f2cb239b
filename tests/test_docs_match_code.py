"""The README and the docs hold to the tree: README's "Layout" names every module of handler/ and only paths
that exist, its "Keys" table lists exactly the keys handler/keys.py derives, and no doc, docstring or comment
names a project file that is not there."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from handler.keys import TWEET_KEY_PREFIX, StreamKeys
from handler.settings import MonitorSettings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, ROOT / "RELIABILITY.md", *sorted((ROOT / "docs").glob("*.md"))]
# The folders of the project a path mention such as `handler/keys.py` starts from.
PROJECT_FOLDERS = ("handler", "tests", "bench", "deploy", "scripts", "docs", "requirements", "monitor", ".ci")
# Where comments and docstrings are read, besides the docs above.
SOURCES = [
    *sorted(
        path for folder in ("handler", "tests", "bench", "deploy") for path in ROOT.glob(f"{folder}/**/*.py")
    ),
    *sorted((ROOT / "scripts").iterdir()),
    ROOT / "deploy" / "launcher.sh",
    ROOT / "pyproject.toml",
]
# Named as examples of files that are not the project's: a redis.py in the working directory would shadow
# redis-py (the launcher's safe-path mode is there against it).
NOT_PROJECT_FILES = {"redis.py"}
PATH_MENTION = re.compile(
    r"(?<![\w/.-])((?:" + "|".join(map(re.escape, PROJECT_FOLDERS)) + r")/[\w./*<>-]*[\w*/>])"
)
FILE_NAME_MENTION = re.compile(r"(?<![\w/.*<-])([A-Za-z_][\w-]*\.py)\b")


def section(text: str, heading: str) -> str:
    """The text under a Markdown heading, up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\n", text, re.M)
    assert match is not None, f"README.md has no heading {heading!r}"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, match.end())
    return text[match.end() : end.start() if end else len(text)]


def layout_paths() -> set[str]:
    """The paths the Layout tree names: `handler/` then `  reclaim/` then `    cycle.py` is
    handler/reclaim/cycle.py; a line's names come before its description (two spaces apart)."""
    (tree,) = re.findall(r"^```\n(.*?)^```", section(README.read_text(), "Layout"), re.M | re.S)
    paths: set[str] = set()
    parents: list[tuple[int, str]] = []  # (indent, folder) of the folders still open
    for line in tree.splitlines():
        indent = len(line) - len(line.lstrip())
        while parents and parents[-1][0] >= indent:
            parents.pop()
        prefix = parents[-1][1] if parents else ""
        names = []
        for word in re.split(r"\s{2,}", line.strip()):
            if not re.fullmatch(r"[\w.-]+(/[\w.-]+)*/?", word) or not ("." in word or word.endswith("/")):
                break  # the description starts
            names.append(word)
        paths.update(prefix + name for name in names)
        if len(names) == 1 and names[0].endswith("/"):
            parents.append((indent, prefix + names[0]))
    return paths


def is_only_a_docstring(module: Path) -> bool:
    body = ast.parse(module.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def test_the_layout_is_read() -> None:
    paths = layout_paths()
    assert {"handler/", "handler/reclaim/", "handler/reclaim/cycle.py", "host.json", "docs/"} <= paths


@pytest.mark.parametrize("path", sorted(layout_paths()))
def test_every_path_the_layout_names_exists(path: str) -> None:
    assert (ROOT / path).exists(), f"README.md's Layout names {path}, which does not exist"


def test_the_layout_names_every_module_of_the_package() -> None:
    """An __init__.py that holds only its docstring is the folder's; one that holds code is a module."""
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "handler").rglob("*.py")
        if not (path.name == "__init__.py" and is_only_a_docstring(path))
    }
    unnamed = sorted(modules - layout_paths())
    assert [] == unnamed, f"README.md's Layout does not name {unnamed}"


def keys_table() -> set[str]:
    """The key names in the first column of README's "Keys" table."""
    rows = re.findall(r"^\| `([^`]+)` \|", section(README.read_text(), "Keys"), re.M)
    assert rows, "README.md's Keys section has no table of keys"
    return set(rows)


def test_the_keys_table_lists_exactly_the_keys_the_monitor_derives() -> None:
    """Every key StreamKeys derives for `tweets_stream` and a group named `<group>` (the stream itself, the
    group and the consumer are not keys the monitor adds), and the processor's tweet:<id>."""
    settings = MonitorSettings(
        REDIS_HOST="localhost",
        STREAM_NAME="tweets_stream",
        STREAM_CONSUMER_GROUP_NAME="<group>",
        MONITORING_CONSUMER_NAME="monitoring_app",
        MIN_IDLE_TIME_SEC=10,
        DEAD_LETTER_STREAM="",
    )
    keys = StreamKeys.from_settings(settings)
    derived = {getattr(keys, field.name) for field in fields(keys)} - {keys.stream, keys.group, keys.consumer}
    assert len(fields(keys)) - 3 == len(derived)  # one name per key
    expected, listed = derived | {TWEET_KEY_PREFIX.decode() + "<id>"}, keys_table()
    assert expected == listed, f"README.md's Keys lacks {expected - listed}, lists {listed - expected} too"


def mentions(pattern: re.Pattern[str], files: list[Path]) -> list[tuple[str, str]]:
    """(where, what) for every match of `pattern` in `files`."""
    found = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in pattern.finditer(line):
                found.append((f"{path.relative_to(ROOT)}:{number}", match.group(1)))
    return found


def exists(mention: str) -> bool:
    """A path, a glob (bench/results/*.json) or a pattern (bench/results/<file>.json: its folder) exists."""
    mention = mention.split("<", 1)[0].rsplit("/", 1)[0] + "/" if "<" in mention else mention
    return any(ROOT.glob(mention.rstrip("/"))) if "*" in mention else (ROOT / mention).exists()


def test_every_project_path_the_docs_and_the_code_mention_exists() -> None:
    missing = [(where, path) for where, path in mentions(PATH_MENTION, DOCS + SOURCES) if not exists(path)]
    assert [] == missing, f"mentions of paths that do not exist: {missing}"


def test_every_link_in_the_docs_leads_to_a_file() -> None:
    links = mentions(re.compile(r"\]\(([^)\s]+)\)"), DOCS)
    local = [(where, to) for where, to in links if not to.startswith(("https://", "http://", "#"))]
    assert local, "no local links found: the pattern no longer reads the docs"
    missing = [
        (where, target)
        for where, target in local
        if not (ROOT / where.split(":")[0]).parent.joinpath(target.split("#")[0]).exists()
    ]
    assert [] == missing, f"links to files that do not exist: {missing}"


def test_every_python_file_name_the_docs_and_the_code_mention_is_a_file_of_the_project() -> None:
    """A bare name such as `sweep.py` in a comment names a module that exists somewhere in the project."""
    names = {path.name for path in SOURCES} | {path.name for path in ROOT.glob("*.py")}
    unknown = [
        (where, name)
        for where, name in mentions(FILE_NAME_MENTION, DOCS + SOURCES)
        if name not in names and name not in NOT_PROJECT_FILES
    ]
    assert [] == unknown, f"file names that are no file of the project: {unknown}"
