"""The structure of the planner package: imports point one way, modules and functions stay small.

Every import counts, at module level or inside a function (a function-local import is still a
dependency, it only runs later), and under `if TYPE_CHECKING:` too (a type named across a cycle
is a cycle of concepts). Parsed with `ast`, nothing is imported.

Sizes: no module of planner over MAX_MODULE_LINES lines, and no function of the core over
MAX_FUNCTION_LINES lines. The core is every planner module but the command line (the `cli`
package, `entry`, `progress`, `planview`: parsing and printing, held to "parse, call, print"
instead): the planning, building, scale-out and command modules, the pure core, and the formats
and storage below them (docs/design.md's module map).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "planner"


def _module_name(path: Path, pkg: Path) -> str:
    parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """planner module -> the planner modules it imports (anywhere in its body)."""
    files = {_module_name(p, pkg): p for p in pkg.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_package, node)
                # `from . import x` / `from .pkg import mod` name modules; otherwise the module itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                # A module importing its own package's face (`from . import __version__`) is not
                # an edge: planner/__init__.py imports nothing.
                if t and t != mod and not (files[t].name == "__init__.py" and mod.startswith(t + ".")):
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycle_among_planner_modules() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_sees_function_local_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle closed only by an import inside a function is found."""
    pkg = tmp_path / "planner"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import thing\n    return thing\n")
    (pkg / "c.py").write_text("from . import a\n")
    assert cycles(import_graph(pkg)) == [["planner.a", "planner.sub.b"]]
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert cycles(import_graph(pkg)) == []


def test_core_modules_do_not_reach_up() -> None:
    """The pure core (derivation, host, runs, plancache) and the OCI format library import no
    planning, building or command-line module."""
    graph = import_graph()
    upper = ("planner.graph", "planner.build", "planner.realise", "planner.execution", "planner.executors",
             "planner.cache", "planner.cli", "planner.why", "planner.planning")

    def reaching_up(mod: str) -> list[str]:  # a package counts with its modules (planner.cli.realise)
        return sorted(t for t in graph[mod] if any(t == u or t.startswith(u + ".") for u in upper))

    for mod in ("planner.derivation", "planner.host", "planner.runs", "planner.plancache"):
        assert not reaching_up(mod), (mod, reaching_up(mod))
    for mod in [m for m in graph if m.startswith("planner.oci.")]:
        assert not reaching_up(mod) and not any(t.startswith("planner.builders") for t in graph[mod]), \
            (mod, sorted(graph[mod]))


# -- sizes -----------------------------------------------------------------------------------

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
COMMAND_LINE = ("planner.cli", "planner.entry", "planner.progress", "planner.planview")


def is_core(module: str) -> bool:
    return not any(module == c or module.startswith(c + ".") for c in COMMAND_LINE)


def module_lines(pkg: Path = PKG) -> dict[str, int]:
    return {_module_name(p, pkg): len(p.read_text().splitlines()) for p in sorted(pkg.rglob("*.py"))}


def long_functions(pkg: Path = PKG, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, str, int]]:
    """(module, function, lines) of every function of a core module longer than `limit` lines,
    from its `def` to its last line; a nested function counts on its own and in its parent."""
    out = []
    for p in sorted(pkg.rglob("*.py")):
        mod = _module_name(p, pkg)
        if not is_core(mod):
            continue
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append((mod, f"{node.name} (line {node.lineno})", lines))
    return out


def test_no_module_over_500_lines() -> None:
    big = {m: n for m, n in module_lines().items() if n > MAX_MODULE_LINES}
    assert big == {}, f"modules over {MAX_MODULE_LINES} lines (split them along domain concepts): {big}"


def test_no_core_function_over_80_lines() -> None:
    long = long_functions()
    assert long == [], f"core functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_size_checks_see_long_modules_and_functions(tmp_path: Path) -> None:
    """The checkers themselves: a long module, a long core function and a long nested one are
    found; the same function in the command line is not held to the core's limit."""
    pkg = tmp_path / "planner"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("")
    body = "def f():\n" + "    x = 1\n" * 80 + "    return x\n"  # 82 lines
    nested = "def g():\n    def h():\n" + "        y = 1\n" * 80 + "        return y\n    return h\n"
    (pkg / "core.py").write_text(body + "\n" + nested)
    (pkg / "cli" / "main.py").write_text(body)
    (pkg / "small.py").write_text("def k():\n" + "    z = 1\n" * 78 + "    return z\n")  # 80 lines: allowed
    (pkg / "big.py").write_text("x = 1\n" * 501)
    found = {(m, f.split(" ")[0]) for m, f, _n in long_functions(pkg)}
    assert found == {("planner.core", "f"), ("planner.core", "g"), ("planner.core", "h")}
    assert {m for m, n in module_lines(pkg).items() if n > MAX_MODULE_LINES} == {"planner.big"}
