"""The layer order and the absence of import circles, checked over the source (docs/architecture.md).

The source of ``src/leanml`` is parsed with `ast` (nothing is imported) into a module import graph. Each
edge is one of: ``top`` (runs when the module is imported), ``function`` (inside a function body: runs
on first call) or ``typing`` (under ``if TYPE_CHECKING:``; never runs). Then:

- no cycle among modules over ``top`` and ``function`` edges (a function-level import is a circle
  deferred, not removed, and is named as such in the failure);
- no ``typing`` edge closes a cycle either (a circle in the types is still a circle in the design);
- no import, of any kind, goes upward against `LAYERS` (between packages) or `SERVE_LAYERS` (inside
  ``leanml.serve``).

Edges follow what Python runs: ``from leanml.a import b`` is an edge to the module ``leanml.a.b`` when it
exists, else to the package ``leanml.a`` (its ``__init__``); the parents a submodule import initialises
implicitly are not edges. A package's ``__init__`` is its assembler: it may import its own submodules, and
a registry's base module must not import its members (the package does).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Packages of leanml, bottom first. One layer may import any layer below it; siblings in one layer
# (a tuple) are independent and may not import each other. From /work/shared/DESIGN.md's layer diagram.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("leanml", "io"),     # the package root (version only) and atomic file writes
    ("meter", "data"),
    ("models",),
    ("hw", "grads"),
    ("store",),
    ("select", "serve"),
    ("bench",),
    ("cli",),
)

# Inside leanml.serve, bottom first: the first name after ``leanml.serve`` (a subpackage or a module).
# ``leanml.serve`` itself (its __init__) is the assembler on top.
SERVE_LAYERS: tuple[tuple[str, ...], ...] = (
    ("types", "queue_order"),  # queue_order: an engine's EDF/FIFO order (config, the engine and the simulator)
    ("policy",),  # the Policy/ControlSurface contracts and the policy registry
    ("variants",),
    ("config",),
    ("workload",),
    ("dataplane",),
    ("control",),
    ("builder",),  # config -> profiled variants -> a runtime
    ("ray_backend",),  # the same runtimes as Ray Serve deployments
    ("sim",),
    ("demo", "demo_llm"),  # the make-demo sections (request-level and LLM replays)
)


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    kind: str  # "top", "function" or "typing"
    line: int


def module_index(src: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every .py file under ``src/leanml``."""
    out = {}
    for p in sorted((src / "leanml").rglob("*.py")):
        parts = list(p.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """(node, kind) for every import statement, kind by where it sits."""
    def walk(node: ast.AST, kind: str):
        for child in ast.iter_child_nodes(node):
            k = kind
            if isinstance(node, ast.If) and _is_type_checking(node.test) and any(child is b for b in node.body):
                k = "typing"
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and kind == "top":
                k = "function"
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, k
            yield from walk(child, k)
    yield from walk(tree, "top")


def import_graph(src: Path = SRC) -> list[Edge]:
    """Every import edge between leanml modules (self-edges dropped)."""
    mods = module_index(src)
    edges = []
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rpartition(".")[0]
        for node, kind in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import leanml.a.b as x` of a name: the module that holds it
                    t = t.rpartition(".")[0]
                if t.startswith("leanml") and t != name:
                    edges.append(Edge(name, t, kind, node.lineno))
    return sorted(set(edges), key=lambda e: (e.src, e.dst, e.line, e.kind))


def cycles(edges: list[Edge], kinds: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module over edges of ``kinds`` (Tarjan, iterative)."""
    adj: dict[str, list[str]] = {}
    for e in edges:
        if e.kind in kinds:
            adj.setdefault(e.src, []).append(e.dst)
            adj.setdefault(e.dst, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    for root in sorted(adj):
        if root in index:
            continue
        work = [(root, iter(adj[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                on.add(w)
                work.append((w, iter(adj[w])))
            elif w in on:
                low[v] = min(low[v], index[w])
    return out


def _rank(layers: tuple[tuple[str, ...], ...], key: str) -> tuple[int, str] | None:
    for i, group in enumerate(layers):
        if key in group:
            return i, key
    return None


def layer_of(module: str) -> tuple[tuple[int, str], tuple[int, str] | None]:
    """(package rank, serve rank or None) of a module; raises KeyError for a module in no layer."""
    parts = module.split(".")
    top = _rank(LAYERS, parts[1] if len(parts) > 1 else "leanml")
    if top is None:
        raise KeyError(f"{module}: package {parts[1]!r} is in no layer; add it to LAYERS in {__file__}")
    if parts[1:2] != ["serve"] or len(parts) == 2:
        return top, None
    sub = _rank(SERVE_LAYERS, parts[2])
    if sub is None:
        raise KeyError(f"{module}: {parts[2]!r} is in no serve layer; add it to SERVE_LAYERS in {__file__}")
    return top, sub


def upward(edges: list[Edge]) -> list[str]:
    """Every edge that imports upward or sideways into an independent sibling, as a readable line."""
    bad = []
    for e in edges:
        (a, sa), (b, sb) = layer_of(e.src), layer_of(e.dst)
        if a[1] != b[1]:
            if b[0] >= a[0]:
                bad.append(f"{e.src} -> {e.dst} ({e.kind} import, line {e.line}): package {a[1]!r} "
                           f"may not import {b[1]!r} ({'sibling' if a[0] == b[0] else 'upper'} layer)")
        elif e.src == "leanml.serve" or e.dst == "leanml.serve":
            if e.dst == "leanml.serve":
                bad.append(f"{e.src} -> leanml.serve ({e.kind}, line {e.line}): a serve module imports the "
                           "package's assembler")
        elif sa is not None and sb is not None and sa[1] != sb[1] and sb[0] >= sa[0]:
            bad.append(f"{e.src} -> {e.dst} ({e.kind} import, line {e.line}): serve layer {sa[1]!r} "
                       f"may not import {sb[1]!r}")
    return bad


def describe_cycle(comp: list[str], edges: list[Edge]) -> str:
    members = set(comp)
    inner = sorted({(e.src, e.dst, e.kind, e.line) for e in edges if e.src in members and e.dst in members})
    lines = [f"  {s} -> {d} ({k} import, line {n})" for s, d, k, n in inner]
    return "circle among " + ", ".join(comp) + ":\n" + "\n".join(lines)


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_graph()


def test_graph_sees_the_package(edges):
    """Guard against a check that passes because it parsed nothing."""
    mods = module_index()
    assert len(mods) > 100 and len(edges) > 300
    assert any(e.src == "leanml.select.random" and e.dst == "leanml.select.base" and e.kind == "top" for e in edges)
    kinds = {e.kind for e in edges}
    assert kinds == {"top", "function", "typing"}


def test_no_import_cycles(edges):
    found = cycles(edges, {"top", "function"})
    assert not found, "import circles (break them: see docs/architecture.md):\n" + "\n".join(
        describe_cycle(c, edges) for c in found)


def test_no_cycles_through_type_only_imports(edges):
    runtime = {frozenset(c) for c in cycles(edges, {"top", "function"})}
    found = [c for c in cycles(edges, {"top", "function", "typing"}) if frozenset(c) not in runtime]
    assert not found, "circles closed by `if TYPE_CHECKING:` imports (type against a lower module):\n" + "\n".join(
        describe_cycle(c, edges) for c in found)


def test_no_upward_imports(edges):
    bad = upward(edges)
    assert not bad, "imports against the layer order (docs/architecture.md):\n" + "\n".join(bad)


def test_every_module_has_a_layer():
    for name in module_index():
        layer_of(name)


def test_check_catches_a_planted_circle_and_an_upward_import(tmp_path):
    """The checker itself: a copy of a tiny tree with a circle and an upward import fails both ways."""
    pkg = tmp_path / "leanml"
    for d in ("meter", "select"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "meter" / "a.py").write_text("from leanml.select import b\n")          # upward
    (pkg / "select" / "b.py").write_text("def f():\n    from leanml.select import c\n")  # function-level
    (pkg / "select" / "c.py").write_text("from leanml.select.b import f\n")
    es = import_graph(tmp_path)
    assert cycles(es, {"top", "function"}) == [["leanml.select.b", "leanml.select.c"]]
    assert cycles(es, {"top"}) == []
    assert len(upward(es)) == 1 and "'meter' may not import 'select'" in upward(es)[0]
