"""The package dependency diagram of docs/architecture.md is the real import graph.

Every import between the repository's packages (``ppa`` subpackages and top-level modules,
``client``, ``server``, ``scripts``) is read from the source with `ast`; the Mermaid block in
docs/architecture.md must list exactly those edges, the graph must have no cycle, and `ppa`
must import neither Flower nor Prometheus. After an import change, rewrite the block with

    python tests/test_architecture.py
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "architecture.md"
BEGIN, END = "<!-- dependency graph: begin -->", "<!-- dependency graph: end -->"
TOP_LEVEL = ("client", "server", "scripts")
FORBIDDEN_IN_PPA = ("flwr", "prometheus_client")


def _sources() -> Iterator[Path]:
    for top in ("ppa", *TOP_LEVEL):
        yield from sorted((REPO / top).rglob("*.py"))


def unit_of(module: str) -> str | None:
    """The diagram node of a module: ``ppa.<subpackage or module>``, or a top-level folder."""
    parts = module.split(".")
    if parts[0] == "ppa":
        return "ppa" if len(parts) == 1 else f"ppa.{parts[1]}"
    if parts[0] in TOP_LEVEL:
        return parts[0]
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> Iterator[str]:
    """Absolute module names a source file imports (anywhere in the file)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def dependency_graph() -> dict[str, set[str]]:
    """unit -> the units it imports (itself excluded)."""
    graph: dict[str, set[str]] = {}
    for path in _sources():
        source = unit_of(_module_name(path))
        graph.setdefault(source, set())
        for name in imports_of(path):
            target = unit_of(name)
            if target is None or target == source or target == "ppa":
                continue
            if target.startswith("ppa.") and not _exists(target):
                continue  # `from ppa.x import name`: name is an attribute, not a module
            graph[source].add(target)
    graph.pop("ppa", None)  # the package's own __init__ (a docstring)
    return graph


def _exists(unit: str) -> bool:
    rel = Path(*unit.split("."))
    return (REPO / rel).is_dir() or (REPO / rel).with_suffix(".py").is_file()


def mermaid(graph: dict[str, set[str]]) -> str:
    def node(unit: str) -> str:
        return unit.replace(".", "_")

    lines = ["```mermaid", "flowchart TD"]
    for source in sorted(graph):
        for target in sorted(graph[source]):
            lines.append(f"  {node(source)}[{source}] --> {node(target)}[{target}]")
    lines.append("```")
    return "\n".join(lines)


def documented_block() -> str:
    text = DOC.read_text()
    match = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    assert match, f"{DOC} lacks the {BEGIN} ... {END} block"
    return match.group(1)


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between units, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = 1
        stack.append(unit)
        for nxt in sorted(graph.get(unit, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[unit] = 2
        return None

    for unit in sorted(graph):
        if unit not in state and (found := visit(unit)):
            return found
    return None


def test_the_documented_diagram_is_the_import_graph() -> None:
    assert documented_block() == mermaid(dependency_graph()), (
        "docs/architecture.md's dependency graph is stale: run python tests/test_architecture.py"
    )


def test_dependencies_point_one_way() -> None:
    graph = dependency_graph()
    assert cycle(graph) is None, f"import cycle: {' -> '.join(cycle(graph))}"
    for unit, targets in graph.items():
        if unit.startswith("ppa."):
            assert not targets & set(TOP_LEVEL), f"{unit} imports {targets & set(TOP_LEVEL)}"


def test_ppa_imports_neither_flower_nor_prometheus() -> None:
    for path in (REPO / "ppa").rglob("*.py"):
        for name in imports_of(path):
            assert name.split(".")[0] not in FORBIDDEN_IN_PPA, f"{path} imports {name}"


def test_a_cycle_is_found() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


if __name__ == "__main__":
    text = DOC.read_text()
    block = mermaid(dependency_graph())
    if BEGIN in text:
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        text = text[:start] + "\n" + block + "\n" + text[end:]
    else:
        text += f"\n{BEGIN}\n{block}\n{END}\n"
    DOC.write_text(text)
    sys.stdout.write(block + "\n")
