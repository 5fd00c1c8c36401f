"""The layout rules of docs/architecture.md, checked on the source tree: every
source file stays small enough to read in one sitting, every Python module says
what it holds, and the package's imports form layers, not circles."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "whygpu"
MAX_LINES = 600
SOURCE_SUFFIXES = {".py", ".pyx", ".cpp", ".h", ".cu", ".cuh"}

pytestmark = pytest.mark.skipif(not PACKAGE.is_dir(), reason="needs the source tree")


def source_files():
    for folder in ("src", "csrc", "python/whygpu"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in SOURCE_SUFFIXES and path.is_file():
                yield path


def test_no_source_file_is_over_the_limit():
    too_long = {}
    for path in source_files():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            too_long[str(path.relative_to(ROOT))] = n
    assert not too_long, f"over {MAX_LINES} lines (split by concern, see docs/architecture.md): {too_long}"


def test_every_module_says_what_it_holds():
    silent = [
        str(p.relative_to(ROOT))
        for p in sorted(PACKAGE.rglob("*.py"))
        if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))
    ]
    assert not silent, f"modules without a docstring: {silent}"


# ---- The floors ---------------------------------------------------------------------

# What each package below the top holds (docs/architecture.md): a module that is one of these belongs in it.
FLOORS = {"bench": "what whygpu measures", "predict": "what it predicts (models)", "plots": "the figures"}
PLOT_OR_MODEL_NAMES = re.compile(r"^_*(plot|roofline|memory_model|stepsim)|_model$|_sim$|^_*amdahl")


def test_the_floors_are_packages():
    missing = [floor for floor in FLOORS if not (PACKAGE / floor / "__init__.py").is_file()]
    assert not missing, f"the floors of docs/architecture.md that are not packages: {missing}"


def test_no_module_at_the_top_is_a_plot_or_a_model():
    """The top of python/whygpu/ holds the package's API (matmul, explain, save/load, the scale-out run) and what
    every floor shares; a figure belongs in whygpu/plots/, a model in whygpu/predict/ -- by its name, and a module
    that draws (imports matplotlib) is a figure whatever its name."""
    top = sorted(PACKAGE.glob("*.py"))
    named = [p.name for p in top if PLOT_OR_MODEL_NAMES.search(p.stem)]
    assert not named, f"plots or models at the top of python/whygpu/ (move them to plots/ or predict/): {named}"
    drawing = [
        p.name
        for p in top
        for node in _imports(ast.parse(p.read_text(encoding="utf-8")))
        if any(
            name.split(".")[0] == "matplotlib"
            for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])
        )
    ]
    assert not drawing, f"modules at the top of python/whygpu/ that draw figures (move them to plots/): {drawing}"


def test_the_floor_rule_sees_plots_and_models():
    """The rule can fail: the names the flat top held before the floors were made are all caught."""
    old_top = ["plots", "plots_roofline", "plots_scaling", "plots_scaleout", "_plot_common", "roofline",
               "roofline_trust", "roofline_gpu", "scaleout_model", "memory_model"]  # fmt: skip
    assert [n for n in old_top if not PLOT_OR_MODEL_NAMES.search(n)] == []
    kept = ["_api", "explain", "why", "scaleout", "cuda", "datasets", "optim", "_registry", "_blocking", "_memory"]
    assert [n for n in kept if PLOT_OR_MODEL_NAMES.search(n)] == []


# ---- The import graph ------------------------------------------------------------


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def extension_modules() -> set[str]:
    """The compiled modules (src/): leaves of the graph, built into the package."""
    names = {p.stem for p in (ROOT / "src").rglob("*.pyx")}
    for p in (ROOT / "src").rglob("*.cpp"):
        names.update(re.findall(r"PYBIND11_MODULE\((\w+)", p.read_text(encoding="utf-8")))
    return {f"whygpu.{n}" for n in names}


def modules() -> dict[str, pathlib.Path]:
    found: dict[str, pathlib.Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    return {**dict.fromkeys(extension_modules(), ROOT / "src"), **found}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every import statement, at module level or inside a function (a late import
    hides a circle, it does not remove it), except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def import_edges(mods: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """module -> the whygpu modules it imports.  ``from . import x`` counts as an import
    of the submodule x where one exists, else of the package itself."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        if path.suffix != ".py":
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                while target and target not in mods:  # import a.b.c of a non-module name: its module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def unit(module: str) -> str:
    """The part of the package a module belongs to: whygpu.nn._backend -> whygpu.nn."""
    return ".".join(module.split(".")[:2])


def test_no_import_circles_between_modules():
    found = circles(import_edges(modules()))
    assert not found, f"import circles (move the shared piece down, see docs/architecture.md): {found}"


def test_no_import_circles_between_parts_of_the_package():
    # whygpu.nn as a whole must not import whygpu.optim while whygpu.optim imports whygpu.nn,
    # even when no single pair of modules closes the loop.  The package's own __init__
    # (which re-exports the API) is a part of its own.
    units: dict[str, set[str]] = {}
    for src, targets in import_edges(modules()).items():
        units.setdefault(unit(src), set()).update(unit(t) for t in targets if unit(t) != unit(src))
    found = circles(units)
    assert not found, f"import circles between parts of whygpu: {found}"


def test_the_checker_sees_circles():
    """The rule can fail: a late import inside a function closes a circle it reports."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from . import x\nif TYPE_CHECKING:\n    import y\n")
    assert [type(n).__name__ for n in _imports(tree)] == ["ImportFrom"]


def test_every_notebook_cell_has_an_id():
    """nbformat 4.5 cells carry an id; without one, nbformat warns when nbmake reads the notebook, and
    the warning (an error under this project's pytest settings) fails the notebook in CI."""
    import json

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5), path.name
        missing = [i for i, c in enumerate(nb["cells"]) if not c.get("id")]
        assert not missing, f"{path.name}: cells without an id: {missing}"
