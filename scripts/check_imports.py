"""Fail on import circles among the modules of ``src/layercache`` (issue 12).

Every module is parsed with ``ast`` (nothing is imported); the graph has an edge from a module to
each ``layercache`` module it imports: absolute and relative imports, at module level and inside
functions alike (a function-level import only postpones a circle, it does not remove it).
Imports under ``if TYPE_CHECKING:`` are left out (they never run); their ``else:`` branch counts.
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg`` (its
``__init__.py``). Importing a submodule also runs its parent packages' ``__init__``, but that
is not counted: Python finds a parent package already initialising and goes on. Dynamic imports
(``importlib.import_module``) are not seen.

A circle is a strongly connected component of more than one module, or a module importing
itself. Each is printed with the import statements that form it (``file:line``); the exit
status is 1 when there is any, 0 otherwise.

Usage: python scripts/check_imports.py [PACKAGE_DIR]   (default: src/layercache)
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACKAGE = ROOT / "src" / "layercache"


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``path:line`` (``nested``: inside a function or class)."""

    source: str
    target: str
    path: Path
    line: int
    nested: bool


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` file under ``package`` (named after it)."""
    names: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = [package.name, *path.relative_to(package).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that can run, and whether it is nested in a def or class."""

    def walk(
        nodes: list[ast.stmt], nested: bool
    ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield node, nested
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.orelse, nested)
                continue
            inner = nested or isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            )
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if not isinstance(children, list):
                    continue
                for child in children:
                    if isinstance(child, ast.stmt):
                        yield from walk([child], inner)
                    elif isinstance(child, ast.ExceptHandler | ast.match_case):
                        yield from walk(child.body, inner)

    yield from walk(tree.body, False)


def _resolve_base(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module a ``from ... import`` names (``None`` if it climbs out)."""
    if node.level == 0:
        return node.module
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 > len(package) - 1:
        return None
    base = package[: len(package) - (node.level - 1)]
    if node.module:
        base += node.module.split(".")
    return ".".join(base)


def edges(package: Path) -> list[Edge]:
    """Every import edge between modules of ``package``."""
    modules = module_names(package)
    found: list[Edge] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, nested in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve_base(module, is_package, node)
                if base is None:
                    continue
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    targets.append(candidate if candidate in modules else base)
            for target in dict.fromkeys(targets):
                if target in modules:
                    found.append(Edge(module, target, path, node.lineno, nested))
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def circles(package: Path) -> list[tuple[list[str], list[Edge]]]:
    """Each import circle of ``package``: its modules and the edges among them."""
    all_edges = edges(package)
    graph: dict[str, set[str]] = {name: set() for name in module_names(package)}
    for edge in all_edges:
        graph[edge.source].add(edge.target)
    found: list[tuple[list[str], list[Edge]]] = []
    for component in strongly_connected(graph):
        members = set(component)
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        inside = [e for e in all_edges if e.source in members and e.target in members]
        found.append((component, sorted(inside, key=lambda e: (e.source, e.line))))
    return sorted(found)


def report(package: Path) -> str:
    """The circles as text (empty when there is none)."""
    lines: list[str] = []
    base = ROOT if package.is_relative_to(ROOT) else package.parent
    for component, inside in circles(package):
        count = f"{len(component)} module{'s' if len(component) > 1 else ''}"
        lines.append(f"import circle ({count}): {', '.join(component)}")
        for edge in inside:
            where = "in a function" if edge.nested else "module level"
            lines.append(
                f"  {edge.source} -> {edge.target}"
                f"  ({edge.path.relative_to(base)}:{edge.line}, {where})"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    package = Path(argv[0]).resolve() if argv else DEFAULT_PACKAGE
    text = report(package)
    if text:
        print(text)
        print(f"check_imports: import circles in {package}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
