"""The package's import graph: dependencies point down, with no import cycles (issue 27).

:func:`import_graph` reads every module of ``selfsup/`` with :mod:`ast` (nothing is imported)
and records each ``import`` / ``from ... import`` of a selfsup module, at module level or inside
a function alike (a function-local import still makes a cycle, only a later one), relative
imports resolved, and each deferred reference ``"selfsup.<module>:<name>"`` (selfsup/lazy.py:
the command line's verb bodies, the package's API names), which is an import made later too.
:func:`cycles` gives its strongly connected components of more than one module.

:func:`import_time_graph` is what runs at import: module-level imports only, plus the packages
they enter: importing ``selfsup.evaluate.probes`` from outside ``selfsup.evaluate`` runs
``selfsup/evaluate/__init__.py`` first. A cycle there fails whichever module of it is imported
first (``cannot import name ... from partially initialized module``), however acyclic the
modules alone are.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import selfsup
from selfsup.lazy import REFERENCE

PACKAGE_ROOT = Path(selfsup.__file__).resolve().parent


def module_files(root: Path = PACKAGE_ROOT, package: str = "selfsup") -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``root`` (a package)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package, *parts))] = path
    return modules


def _resolve(module: str | None, level: int, current: str, is_package: bool) -> str:
    """The absolute name ``from <level dots><module> import ...`` in ``current`` refers to."""
    if level == 0:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its nearest enclosing package that is a module of ``modules``."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in modules else None


def _targets(node: ast.AST, name: str, is_package: bool, modules: dict[str, Path]
             ) -> list[str]:
    """The module names an import statement (or a deferred reference) in ``name`` imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _resolve(node.module, node.level, name, is_package)
        # ``from pkg import sub`` imports the submodule pkg.sub; ``from mod import name``, mod
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                for a in node.names]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and REFERENCE.match(
            node.value):
        return [node.value.partition(":")[0]]
    return []


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that module ``name`` (at ``path``) imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        for target in _targets(node, name, is_package, modules):
            known = _known(target, modules)
            if known is not None and known != name:
                found.add(known)
    return found


def _run_at_import(tree: ast.Module) -> Iterator[ast.stmt]:
    """The statements that run when the module is imported: not function bodies, nor
    ``if TYPE_CHECKING:`` blocks (class bodies, other ifs, try and with blocks do run)."""
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))


def import_time_graph(root: Path = PACKAGE_ROOT, package: str = "selfsup"
                      ) -> dict[str, set[str]]:
    """Module -> the modules importing it runs: its module-level imports, and each package
    such an import enters from outside (whose ``__init__`` runs first)."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        found: set[str] = set()
        for node in _run_at_import(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(node, name, is_package, modules):
                known = _known(target, modules)
                if known is None:
                    continue
                parts = known.split(".")
                entered = {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
                found |= {m for m in entered if m in modules and m != name
                          and not name.startswith(f"{m}.")}
        graph[name] = found
    return graph


def import_graph(root: Path = PACKAGE_ROOT, package: str = "selfsup") -> dict[str, set[str]]:
    """Module -> the package's modules it imports (module- and function-level alike)."""
    modules = module_files(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph.get(step, ())))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_builder_sees_every_kind_of_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from .sub import c\n")
    (package / "sub" / "__init__.py").write_text("from . import c\n")
    (package / "sub" / "c.py").write_text("import pkg.a\nfrom ..b import f\n")
    (package / "d.py").write_text("import os\nfrom pkg.a import name\n")
    graph = import_graph(package, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}  # inside a function, relative
    assert graph["pkg.sub"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a", "pkg.b"}
    assert graph["pkg.d"] == {"pkg.a"}  # a name from a module: the module
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_a_deferred_reference_is_an_import(tmp_path):
    package = tmp_path / "selfsup"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text('BODY = "selfsup.b:run"\nNAME = "selfsup.b"  # not one\n')
    (package / "b.py").write_text("def run():\n    pass\n")
    graph = import_graph(package, "selfsup")
    assert graph["selfsup.a"] == {"selfsup.b"}
    assert import_time_graph(package, "selfsup")["selfsup.a"] == set()  # resolved later


def test_the_import_time_graph_enters_packages(tmp_path):
    """Importing pkg.sub.c from outside pkg.sub runs pkg/sub/__init__.py first; from inside
    it does not (the package is already being imported); function bodies run later."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub.c import f\n")
    (package / "sub" / "c.py").write_text("from pkg.a import g\n\ndef f():\n    pass\n")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import pkg.b\n\n"
        "def g():\n    from pkg.b import h\n")
    (package / "b.py").write_text("from pkg.sub.c import f\n")
    graph = import_time_graph(package, "pkg")
    assert graph["pkg.sub"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert graph["pkg.a"] == set()
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}
    assert cycles(graph) == []
    (package / "a.py").write_text("from pkg.b import h\n")
    assert cycles(import_time_graph(package, "pkg")) == [["pkg.a", "pkg.b", "pkg.sub",
                                                           "pkg.sub.c"]]


def test_readers_and_methods_form_no_import_cycle():
    """Readers never import methods (they are handed what they need) and no reader imports a
    cycle back; dependencies among selfsup.data and selfsup.methods point down."""
    graph = import_graph()
    assert "selfsup.data.base" in graph and "selfsup.methods.gpt" in graph
    tangled = [c for c in cycles(graph) if any(m.startswith("selfsup.data") for m in c)]
    assert not tangled, f"import cycles through selfsup.data: {tangled}"


def test_readers_never_look_up_methods():
    graph = import_graph()
    readers = [m for m in graph if m == "selfsup.data" or m.startswith("selfsup.data.")]
    assert readers
    looking = {m: sorted(t for t in graph[m] if t.startswith("selfsup.methods"))
               for m in readers}
    assert not {m: t for m, t in looking.items() if t}


def test_the_package_has_no_import_cycle():
    """Dependencies point down everywhere: no cycle in selfsup/, function-level imports
    counted (a local import that only hides a cycle still makes one)."""
    found = cycles(import_graph())
    assert not found, f"import cycles: {found}"


def test_any_module_can_be_imported_first():
    """No cycle in what importing runs, packages' __init__ files counted: before the package
    import went light (issue 25) the engine, the methods and the monitors imported only
    because ``import selfsup`` happened to load selfsup.evaluate before them."""
    found = cycles(import_time_graph())
    assert not found, f"import-time cycles: {found}"


def test_the_protocols_never_import_the_dispatch():
    graph = import_graph()
    assert "selfsup.evaluate.dispatch" in graph
    for name in ("protocol", "sweep", "text", "zero_shot", "finetune"):
        module = f"selfsup.evaluate.{name}"
        assert "selfsup.evaluate.dispatch" not in graph[module], module
    assert not any(m.startswith("selfsup.evaluate") for m in graph["selfsup.loading"])
