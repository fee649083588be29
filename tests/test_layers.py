"""The package's layer contract, read from the source with ``ast``.

Why: a lower layer receives what it uses (arguments, callbacks, protocols) instead of
reaching up for it, so each layer can be read, tested and replaced on its own, and the
import graph stays a tree one can reason about. Every ``import`` counts, wherever it is:
at module level, inside a function, and under ``if TYPE_CHECKING:``; a TYPE_CHECKING
import that points up is a cycle too (the type checker sees it, and the next refactor
that needs the name at run time turns it into a real one).

The rules are data (the tables below); the checkers take a package root and the tables,
so the self-tests at the bottom run them on small synthetic packages to prove they fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "clawproxy"

# The layers, top first: a layer may import only the layers before it, plus itself.
# "name" matches that module only; "name.*" matches the package and everything under it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "core",
        ("clawproxy", "clawproxy.errors", "clawproxy.units", "clawproxy.net", "clawproxy.tasks"),
    ),
    ("config", ("clawproxy.config.*",)),
    ("http", ("clawproxy.http.*",)),
    ("ollama", ("clawproxy.ollama.*",)),
    ("openai", ("clawproxy.openai.*",)),
    ("policy", ("clawproxy.policy.*",)),
    ("nodes", ("clawproxy.nodes.*",)),
    ("telemetry", ("clawproxy.telemetry.*",)),
    ("coordination", ("clawproxy.coordination.*",)),
    ("app", ("clawproxy.app.*",)),
    ("gateway", ("clawproxy.gateway",)),
    # ``python -m clawproxy`` is the process's entry point: it runs process.cli.
    ("process", ("clawproxy.process.*", "clawproxy.__main__")),
)

# Layers outside the order: each may import only the layers it names (plus itself), and
# only the layers in "imported_by" may import it.
STANDALONE: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    # The built-in Ollama simulator: a stand-in for a foreign server, so it must not lean
    # on the gateway's own code, and only the process (``--demo``) starts it.
    "simulator": {
        "patterns": ("clawproxy.simulator.*",),
        "may_import": ("core",),
        "imported_by": ("process",),
    },
}

# Who may name the Gateway (clawproxy.gateway): itself and the process that runs it.
GATEWAY_MODULE = "clawproxy.gateway"
GATEWAY_IMPORTERS: tuple[str, ...] = ("clawproxy.gateway", "clawproxy.process.*")


@dataclass(frozen=True)
class Import:
    """One import edge: ``importer`` (at ``where``) imports module ``target``."""

    importer: str
    target: str
    where: str  # "clawproxy/http/server.py:50"


# --- reading the package ------------------------------------------------------------


def modules_of(root: Path) -> dict[str, Path]:
    """Every module under the package directory ``root``, by dotted name."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(
    importer: str, is_package: bool, node: ast.ImportFrom, modules: Iterable[str]
) -> list[str]:
    """The modules a ``from ... import ...`` names: ``pkg.name`` when that is a module,
    else ``pkg``."""
    base = node.module or ""
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base]) if base else ".".join(package)
    known = set(modules)
    targets = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        targets.append(candidate if candidate in known else base)
    return list(dict.fromkeys(targets))


def imports_of(root: Path) -> list[Import]:
    """Every import of a module of the package, anywhere in each file under ``root``."""
    modules = modules_of(root)
    package = root.name
    edges: list[Import] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(root.parent).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(name, path.name == "__init__.py", node, modules)
            else:
                continue
            for target in targets:
                if target == package or target.startswith(package + "."):
                    edges.append(Import(name, target, f"{rel}:{node.lineno}"))
    return sorted(edges, key=lambda e: (e.where.split(":")[0], int(e.where.split(":")[1])))


# --- the rules ------------------------------------------------------------------------


def _matches(module: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        stem = pattern[:-2]
        return module == stem or module.startswith(stem + ".")
    return module == pattern


def layers_of(
    module: str,
    layers: Sequence[tuple[str, Sequence[str]]] = LAYERS,
    standalone: Mapping[str, Mapping[str, Sequence[str]]] = STANDALONE,
) -> list[str]:
    """Every layer whose patterns match ``module`` (exactly one, for a placed module)."""
    found = [name for name, patterns in layers if any(_matches(module, p) for p in patterns)]
    found += [
        name
        for name, rule in standalone.items()
        if any(_matches(module, p) for p in rule["patterns"])
    ]
    return found


def unplaced(
    root: Path,
    layers: Sequence[tuple[str, Sequence[str]]] = LAYERS,
    standalone: Mapping[str, Mapping[str, Sequence[str]]] = STANDALONE,
) -> list[str]:
    """Modules in no layer or in more than one."""
    problems = []
    for module, path in modules_of(root).items():
        rel = path.relative_to(root.parent).as_posix()
        found = layers_of(module, layers, standalone)
        if not found:
            problems.append(
                f"{rel}: module {module} is in no layer; add it to the LAYERS table in "
                "tests/test_layers.py, deliberately, at the layer it belongs to"
            )
        elif len(found) > 1:
            problems.append(f"{rel}: module {module} is in several layers: {', '.join(found)}")
    return problems


def _allowed(
    source: str,
    target: str,
    layers: Sequence[tuple[str, Sequence[str]]],
    standalone: Mapping[str, Mapping[str, Sequence[str]]],
) -> bool:
    if source == target:
        return True
    if target in standalone and source not in standalone[target]["imported_by"]:
        return False
    if source in standalone:
        return target in standalone[source]["may_import"]
    if target in standalone:
        return True
    order = [name for name, _ in layers]
    return order.index(target) < order.index(source)


def direction_violations(
    root: Path,
    layers: Sequence[tuple[str, Sequence[str]]] = LAYERS,
    standalone: Mapping[str, Mapping[str, Sequence[str]]] = STANDALONE,
) -> list[str]:
    """Imports that point to a later layer, or into or out of a standalone layer."""
    problems = []
    for edge in imports_of(root):
        source_layers = layers_of(edge.importer, layers, standalone)
        target_layers = layers_of(edge.target, layers, standalone)
        if len(source_layers) != 1:
            continue  # reported by unplaced()
        source = source_layers[0]
        if len(target_layers) != 1:
            problems.append(
                f"{edge.where} imports {edge.target}, which is in "
                f"{'no layer' if not target_layers else 'several layers'}"
            )
            continue
        target = target_layers[0]
        if not _allowed(source, target, layers, standalone):
            problems.append(
                f"{edge.where} imports {edge.target} (layer {target}) from layer {source}"
            )
    return problems


def import_cycles(root: Path) -> list[list[str]]:
    """The strongly connected components of the import graph that hold a cycle
    (Tarjan's algorithm), each sorted; a module importing itself is one too."""
    modules = modules_of(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for edge in imports_of(root):
        if edge.target in graph:
            graph[edge.importer].add(edge.target)

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def cycle_report(root: Path) -> list[str]:
    """One entry per cycle: its modules, then the imports that close it."""
    edges = imports_of(root)
    report = []
    for component in import_cycles(root):
        members = set(component)
        inside = [
            f"    {e.where} imports {e.target}"
            for e in edges
            if e.importer in members and e.target in members
        ]
        report.append(f"cycle among {', '.join(component)}:\n" + "\n".join(inside))
    return report


def gateway_violations(
    root: Path,
    gateway: str = GATEWAY_MODULE,
    importers: Sequence[str] = GATEWAY_IMPORTERS,
) -> list[str]:
    """Imports of the gateway module from anywhere but the modules allowed to name it."""
    return [
        f"{e.where} imports {e.target} from {e.importer}; only "
        f"{', '.join(importers)} may name the Gateway"
        for e in imports_of(root)
        if e.target == gateway and not any(_matches(e.importer, p) for p in importers)
    ]


# --- the contract on the real package -----------------------------------------------


def _fail(title: str, problems: list[str]) -> None:
    if problems:
        pytest.fail(f"{title} ({len(problems)}):\n" + "\n".join(problems), pytrace=False)


def test_every_module_is_in_exactly_one_layer() -> None:
    _fail("modules outside the layer table", unplaced(PACKAGE_ROOT))


def test_imports_point_only_to_earlier_layers() -> None:
    _fail("imports against the layer order", direction_violations(PACKAGE_ROOT))


def test_no_import_cycles() -> None:
    _fail("import cycles", cycle_report(PACKAGE_ROOT))


def test_only_the_process_names_the_gateway() -> None:
    _fail("imports of the Gateway", gateway_violations(PACKAGE_ROOT))


# --- the checkers can fail: synthetic packages ----------------------------------------


def make_package(base: Path, files: Mapping[str, str]) -> Path:
    """Write ``files`` (paths relative to ``base``) and return the package root."""
    for rel, text in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return base / "clawproxy"


# A tidy package shaped like the real one, which the cases below spoil one way each.
CLEAN = {
    "clawproxy/__init__.py": "",
    "clawproxy/errors.py": "class Oops(Exception): ...\n",
    "clawproxy/config/__init__.py": "",
    "clawproxy/config/loading.py": "from clawproxy.errors import Oops\n",
    "clawproxy/http/__init__.py": "",
    "clawproxy/http/server.py": "from ..config import loading\nfrom clawproxy import errors\n",
    "clawproxy/http/flow.py": "from .server import x\n",
    "clawproxy/app/__init__.py": "",
    "clawproxy/app/chat.py": "import clawproxy.http.server\n",
    "clawproxy/gateway.py": "from clawproxy.app.chat import y\n",
    "clawproxy/process/__init__.py": "",
    "clawproxy/process/cli.py": (
        "from clawproxy.gateway import Gateway\nfrom clawproxy.simulator import OllamaSimulator\n"
    ),
    "clawproxy/simulator/__init__.py": "from .server import OllamaSimulator\n",
    "clawproxy/simulator/server.py": "from clawproxy.errors import Oops\n",
}


def test_a_clean_package_passes(tmp_path: Path) -> None:
    root = make_package(tmp_path, CLEAN)
    assert unplaced(root) == []
    assert direction_violations(root) == []
    assert import_cycles(root) == []
    assert gateway_violations(root) == []


def test_resolves_relative_and_from_imports(tmp_path: Path) -> None:
    root = make_package(tmp_path, CLEAN)
    edges = {(e.importer, e.target) for e in imports_of(root)}
    assert ("clawproxy.http.server", "clawproxy.config.loading") in edges  # from .. import mod
    assert ("clawproxy.http.server", "clawproxy.errors") in edges  # from pkg import mod
    assert ("clawproxy.http.flow", "clawproxy.http.server") in edges  # from .mod import name
    assert ("clawproxy.process.cli", "clawproxy.simulator") in edges  # from pkg import name
    assert ("clawproxy.simulator", "clawproxy.simulator.server") in edges  # in an __init__


def test_reports_an_upward_import_with_file_line_and_layers(tmp_path: Path) -> None:
    files = dict(CLEAN)
    files["clawproxy/http/server.py"] += "\n\ndef later():\n    from clawproxy.app import chat\n"
    root = make_package(tmp_path, files)
    assert direction_violations(root) == [
        "clawproxy/http/server.py:6 imports clawproxy.app.chat (layer app) from layer http"
    ]


def test_reports_a_type_checking_only_cycle(tmp_path: Path) -> None:
    files = dict(CLEAN)
    files["clawproxy/http/server.py"] += (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .flow import Flow\n"
    )
    root = make_package(tmp_path, files)
    assert import_cycles(root) == [["clawproxy.http.flow", "clawproxy.http.server"]]
    report = cycle_report(root)
    assert "clawproxy/http/server.py:5 imports clawproxy.http.flow" in report[0]
    assert "clawproxy/http/flow.py:1 imports clawproxy.http.server" in report[0]


def test_reports_a_function_level_cycle_and_upward_import(tmp_path: Path) -> None:
    files = dict(CLEAN)
    files["clawproxy/config/loading.py"] += "\n\ndef build():\n    import clawproxy.gateway\n"
    root = make_package(tmp_path, files)
    assert import_cycles(root) == [
        [
            "clawproxy.app.chat",
            "clawproxy.config.loading",
            "clawproxy.gateway",
            "clawproxy.http.server",
        ]
    ]
    assert direction_violations(root) == [
        "clawproxy/config/loading.py:5 imports clawproxy.gateway (layer gateway) from layer config"
    ]
    assert gateway_violations(root) == [
        "clawproxy/config/loading.py:5 imports clawproxy.gateway from clawproxy.config.loading; "
        "only clawproxy.gateway, clawproxy.process.* may name the Gateway"
    ]


def test_reports_a_package_init_cycle(tmp_path: Path) -> None:
    """``from . import name`` (not a module) in a submodule is an edge to the __init__."""
    files = dict(CLEAN)
    files["clawproxy/simulator/server.py"] += "from . import OllamaSimulator\n"
    root = make_package(tmp_path, files)
    assert import_cycles(root) == [["clawproxy.simulator", "clawproxy.simulator.server"]]


def test_reports_the_simulator_leaning_on_the_gateway_and_being_imported(
    tmp_path: Path,
) -> None:
    files = dict(CLEAN)
    files["clawproxy/simulator/server.py"] += "from clawproxy.config import loading\n"
    files["clawproxy/app/chat.py"] += "from clawproxy.simulator import OllamaSimulator\n"
    root = make_package(tmp_path, files)
    assert direction_violations(root) == [
        "clawproxy/app/chat.py:2 imports clawproxy.simulator (layer simulator) from layer app",
        "clawproxy/simulator/server.py:2 imports clawproxy.config.loading (layer config) "
        "from layer simulator",
    ]


def test_reports_a_module_in_no_layer(tmp_path: Path) -> None:
    files = dict(CLEAN)
    files["clawproxy/newthing.py"] = ""
    files["clawproxy/process/cli.py"] += "from clawproxy import newthing\n"
    root = make_package(tmp_path, files)
    problems = unplaced(root)
    assert len(problems) == 1
    assert problems[0].startswith("clawproxy/newthing.py: module clawproxy.newthing is in no layer")
    assert "add it to the LAYERS table" in problems[0]
    assert direction_violations(root) == [
        "clawproxy/process/cli.py:3 imports clawproxy.newthing, which is in no layer"
    ]
