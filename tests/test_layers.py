"""The package's layering holds by itself: read from every import in handler/ (deferred and type-checking
imports included), no module imports a layer above its own, no imports run in a circle, and only the CLI's
`demo` command reaches the dev servers. The README's "Layout" shows the same order."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler.dev.local_redis import LocalRedis, environment_for

PACKAGE = Path(__file__).resolve().parent.parent / "handler"

# Top to bottom; a module may import its own layer and the layers below it, never one above.
LAYERS: list[set[str]] = [
    {"cli", "__main__"},  # the edge: every command
    {"functions", "ops", "runner", "dev"},  # the custom handler, operator commands, the schedule, dev tools
    {"monitor"},  # the one object between those edges and the core
    {"metrics", "telemetry"},  # the metrics, and their export (OpenTelemetry)
    {"reclaim"},  # the cycle
    {"transport"},  # Redis plumbing that knows nothing about tweets
    {"settings", "keys", "errors", "logs", "__init__"},  # shared vocabulary
]
# Imported only when their command runs (see handler/cli.py): `reclaim` and `check` must not pay for them.
HEAVY = {"fastapi", "uvicorn", "starlette", "rich", "prometheus_client", "croniter"}
DEV = "handler.dev"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> Iterator[str]:
    """Every module of the package that `path` imports, wherever the import statement sits."""
    package = root.name
    here = module_name(path, root)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.split(".")[0] == package)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                package_parts = here.split(".") if path.name == "__init__.py" else here.split(".")[:-1]
                base = package_parts[: len(package_parts) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != package:
                continue
            for alias in node.names:  # `from handler.ops import console` imports a module
                candidate = f"{target}.{alias.name}"
                yield candidate if _is_module(candidate, root) else target


def _is_module(name: str, root: Path) -> bool:
    relative = Path(*name.split(".")[1:])
    return (root / relative).with_suffix(".py").exists() or (root / relative / "__init__.py").exists()


def layer_of(module: str, layers: list[set[str]]) -> int:
    parts = module.split(".")
    first = parts[1] if len(parts) > 1 else "__init__"
    for index, names in enumerate(layers):
        if first in names:
            return index
    raise AssertionError(f"{module} belongs to no layer: add {first!r} to LAYERS")


def import_graph(root: Path) -> dict[str, set[str]]:
    return {
        module_name(path, root): set(imports_of(path, root)) - {module_name(path, root)}
        for path in sorted(root.rglob("*.py"))
    }


def upward_imports(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    return sorted(
        f"{source} imports {target}"
        for source, targets in graph.items()
        for target in targets
        if layer_of(target, layers) < layer_of(source, layers)
    )


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by a depth-first walk (each reported once, from its smallest module)."""
    found: set[tuple[str, ...]] = set()

    def walk(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                cycle = path[path.index(target) :]
                start = cycle.index(min(cycle))
                found.add(tuple(cycle[start:] + cycle[:start]))
            elif target in graph:
                walk(target, [*path, target])

    for module in sorted(graph):
        walk(module, [module])
    return [list(cycle) for cycle in sorted(found)]


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert [] == upward_imports(import_graph(PACKAGE), LAYERS)


def test_no_imports_run_in_a_circle() -> None:
    assert [] == circles(import_graph(PACKAGE))


def test_only_the_cli_and_the_dev_tools_themselves_import_the_dev_tools() -> None:
    graph = import_graph(PACKAGE)
    importers = {
        source
        for source, targets in graph.items()
        if any(target.startswith(DEV) for target in targets) and not source.startswith(DEV)
    }
    assert {"handler.cli"} == importers


def test_the_pure_rules_import_no_redis() -> None:
    tree = ast.parse((PACKAGE / "reclaim" / "rules.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert [] == sorted(name for name in imported if name.split(".")[0] in ("redis", "hiredis"))


@pytest.mark.parametrize("command", ["reclaim", "check"])
def test_a_command_loads_only_what_it_needs(command: str, redis_8: LocalRedis, names: dict[str, str]) -> None:
    """`reclaim` and `check`, run for real, import none of what only other commands need (-X importtime
    lists every module the process imported)."""
    with redis_8.client() as client:
        client.xgroup_create(names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"], mkstream=True)
    env = environment_for(redis_8, **names, MIN_IDLE_TIME_SEC="10")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "handler", command],
        env=env,
        cwd=PACKAGE.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 0 == done.returncode, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "import time:" in line}
    assert "handler.cli" in imported  # the listing is real
    assert [] == sorted(name for name in imported if name.split(".")[0] in HEAVY or name.startswith(DEV))


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "handler"
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_the_checks_catch_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    """The checks above can fail: a transport module reaching up into the cycle, two modules in a circle."""
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "transport/__init__.py": "",
            "transport/wire.py": "def f():\n    from handler.reclaim.page import x\n",
            "reclaim/__init__.py": "",
            "reclaim/page.py": "from handler.reclaim import sweep\n",
            "reclaim/sweep.py": "from handler.reclaim.page import y\nfrom handler import errors\n",
        },
    )
    graph = import_graph(root)
    assert ["handler.transport.wire imports handler.reclaim.page"] == upward_imports(graph, LAYERS)
    assert [["handler.reclaim.page", "handler.reclaim.sweep"]] == circles(graph)
