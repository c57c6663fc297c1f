"""Measure the shape of the package from its own imports (read from the AST, nothing imported).

Counts what docs/architecture.md promises to keep small: import circles between modules
(strongly connected components of the module graph, type-checking imports included), imports of
the project's own modules made inside functions, and modules over the line limit.

    python bench/import_graph.py            # summary
    python bench/import_graph.py --list     # every circle and every in-function import
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "slideflow"


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    line: int
    in_function: bool
    type_checking: bool


@dataclass
class Graph:
    modules: dict[str, Path]
    edges: list[Edge] = field(default_factory=list)

    def circles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (Tarjan, iterative)."""
        adj: dict[str, set[str]] = {m: set() for m in self.modules}
        for e in self.edges:
            if e.src != e.dst:
                adj[e.src].add(e.dst)
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        on_stack: set[str] = set()
        stack: list[str] = []
        out: list[list[str]] = []
        counter = 0
        for root in sorted(adj):
            if root in index:
                continue
            work = [(root, iter(sorted(adj[root])))]
            index[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on_stack.add(root)
            while work:
                node, it = work[-1]
                nxt = next(it, None)
                if nxt is not None:
                    if nxt not in index:
                        index[nxt] = low[nxt] = counter
                        counter += 1
                        stack.append(nxt)
                        on_stack.add(nxt)
                        work.append((nxt, iter(sorted(adj[nxt]))))
                    elif nxt in on_stack:
                        low[node] = min(low[node], index[nxt])
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
        return sorted(out)


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that `name` starts with (``a.b.c`` -> ``a.b`` if c is a name)."""
    while name:
        if name in modules:
            return name
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return None


class _Visitor(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: dict[str, Path]):
        self.module = module
        self.package = module if is_package else module.rsplit(".", 1)[0]
        self.modules = modules
        self.depth = 0
        self.type_checking = 0
        self.edges: list[Edge] = []

    def _add(self, target: str, line: int) -> None:
        dst = _resolve(target, self.modules)
        if dst is not None and dst != self.module:
            self.edges.append(Edge(self.module, dst, line, self.depth > 0, self.type_checking > 0))

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = ast.unparse(node.test)
        guarded = test in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        self.type_checking += guarded
        for child in node.body:
            self.visit(child)
        self.type_checking -= guarded
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE:
                self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != PACKAGE:
            return
        for alias in node.names:
            full = f"{target}.{alias.name}"
            if full in self.modules:
                self._add(full, node.lineno)
            else:
                self._add(target, node.lineno)


def build(root: Path = ROOT) -> Graph:
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {_module_name(f, root): f for f in files}
    graph = Graph(modules)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        visitor = _Visitor(name, path.name == "__init__.py", modules)
        visitor.visit(tree)
        graph.edges.extend(visitor.edges)
    return graph


def in_function_imports(graph: Graph) -> list[Edge]:
    """One entry per import statement inside a function (a statement naming several modules
    counts once)."""
    seen: dict[tuple[str, int], Edge] = {}
    for e in graph.edges:
        if e.in_function:
            seen.setdefault((e.src, e.line), e)
    return list(seen.values())


def line_counts(graph: Graph) -> dict[str, int]:
    return {m: len(p.read_text().splitlines()) for m, p in graph.modules.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print every circle and in-function import")
    ap.add_argument("--max-lines", type=int, default=400)
    args = ap.parse_args(argv)
    graph = build()
    circles = graph.circles()
    inner = in_function_imports(graph)
    big = {m: n for m, n in line_counts(graph).items() if n > args.max_lines}
    print(f"modules: {len(graph.modules)}  import edges: {len(graph.edges)}")
    print(f"circles: {len(circles)}")
    print(f"imports of own modules inside functions: {len(inner)}")
    print(f"modules over {args.max_lines} lines: {len(big)}")
    if args.list:
        for comp in circles:
            print("  circle:", " <-> ".join(comp))
        for e in inner:
            print(f"  in-function: {e.src}:{e.line} -> {e.dst}")
        for m, n in sorted(big.items(), key=lambda kv: -kv[1]):
            print(f"  {n:5d} {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
