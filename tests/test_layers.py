"""The architecture as a test (DESIGN.md §2): imports point down the layers only, and no module
of `tether` takes part in an import cycle.

    keys, config  →  wireguard | netstack  →  device  →  api  →  appliance  →  cli

Imports are read from the source with `ast` (nothing is imported), at any depth of the module
(inside functions too: a lazy import is still a dependency), except under
`if TYPE_CHECKING:`, which exists exactly to name a type without depending on its module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tether"

# layer of each top-level part; a module may import its own part or a part of a lower layer,
# and the two protocol cores (WireGuard, the exit netstack) know nothing of each other
LAYERS = {
    "__init__": 0,
    "__main__": 6,
    "keys": 0,
    "config": 0,
    "wireguard": 1,
    "netstack": 1,
    "device": 2,
    "api": 3,
    "appliance": 4,
    "cli": 5,
}
SIBLINGS_APART = {("wireguard", "netstack"), ("netstack", "wireguard"), ("netstack", "config")}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, name: str) -> set[str]:
    """`tether...` modules (or packages) that the module at `path` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split(".")[0] == "tether")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] == "tether":
                    found.add(target)
                    # `from tether.x import y` may import the submodule tether.x.y
                    found.update(f"{target}.{a.name}" for a in child.names)
            visit(child)

    visit(tree)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {t for t in imports_of(path, name) if t in modules and t != name}
    return edges


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_point_down_the_layers():
    wrong = []
    for module, targets in graph().items():
        mine = part(module)
        for target in targets:
            theirs = part(target)
            if theirs == mine:
                continue
            if LAYERS[theirs] > LAYERS[mine] or (mine, theirs) in SIBLINGS_APART:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports pointing up or across:\n" + "\n".join(sorted(wrong))


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit to think about)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def test_no_import_cycles():
    cycles = strongly_connected(graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles():
    """The finder itself, on a graph with a known cycle and a known acyclic part."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(edges) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("limit", [600])
def test_modules_stay_readable(limit):
    """No module over ~600 lines (DESIGN: one concern per module)."""
    long = {
        str(p.relative_to(ROOT.parent)): n
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > limit * 1.1
    }
    assert not long, f"modules over ~{limit} lines: {long}"


@pytest.mark.parametrize("limit", [14])
def test_packages_stay_browsable(limit):
    """No folder of `tether` holds more than ~14 modules: past that, a part gets sublayers as
    folders (tether/api/peers, tether/api/http, tether/device/exit, ...) so that a reader finds
    a concern by its folder before reading file names."""
    crowded = {}
    for folder in [ROOT, *(p for p in ROOT.rglob("*") if p.is_dir())]:
        if folder.name == "__pycache__":
            continue
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        if len(modules) > limit:
            crowded[str(folder.relative_to(ROOT.parent))] = len(modules)
    assert not crowded, f"folders with more than {limit} modules: {crowded}"
