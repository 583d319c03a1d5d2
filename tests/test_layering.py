"""The import graph follows the layer order in docs/architecture.md, has no cycle, and every
module imports on its own without loading anything above it.

The graph is read from the source with `ast`, imports inside functions included: a lazy import
is still a dependency (the train -> optim -> hypersearch -> train circle was one). The order is
parsed from the ```layers block of the doc, so the doc and this test cannot drift apart.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "repdeploy"
DOC = ROOT / "docs" / "architecture.md"
FACADE = "__init__"  # the doc's name for the package module `repdeploy` itself


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, relative to repdeploy ("quant.calib"; "" is the facade)
    target: str
    file: str
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """Every repdeploy module `name` imports, wherever in the file the import statement is."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if name else []
    found = []

    def add(target: str, node: ast.stmt) -> None:
        if target != name:
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found.append(Edge(name, target, str(where), node.lineno))

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "repdeploy" or alias.name.startswith("repdeploy."):
                    add(alias.name.removeprefix("repdeploy").lstrip("."), node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
            elif node.module and (node.module == "repdeploy" or node.module.startswith("repdeploy.")):
                parts = node.module.split(".")[1:]
            else:
                continue
            package = ".".join(parts)
            # `from . import validate` depends on the submodule, not on the package facade.
            names = [a.name for a in node.names]
            submodules = [f"{package}.{n}" if package else n for n in names]
            submodules = [m for m in submodules if m in modules]
            for m in submodules:
                add(m, node)
            if len(submodules) < len(names):
                add(package, node)
    return found


def _graph() -> tuple[dict[str, Path], list[Edge]]:
    modules = _modules()
    edges = [e for name, path in modules.items() for e in _imports(name, path, modules)]
    return modules, edges


def _layers() -> list[list[str]]:
    """The ```layers block of docs/architecture.md: one layer per line, lowest first."""
    text = DOC.read_text()
    assert "## Layer order" in text, f"{DOC} lost its 'Layer order' section"
    block = text.split("## Layer order", 1)[1].split("```layers\n", 1)
    assert len(block) == 2, f"{DOC} 'Layer order' has no ```layers block"
    lines = block[1].split("\n```", 1)[0].splitlines()
    layers = [line.split("#", 1)[0].split() for line in lines]
    return [layer for layer in layers if layer]


def _display(name: str) -> str:
    return f"repdeploy.{name}" if name else "repdeploy"


class LayerMap:
    """The layer of every module: listed, inherited from its package, or inferred from its imports."""

    def __init__(self, layers: list[list[str]], modules: dict[str, Path], edges: list[Edge]) -> None:
        self.layers = layers
        self.listed: dict[str, int] = {}
        for index, layer in enumerate(layers):
            for token in layer:
                assert token not in self.listed, f"{DOC}: {token} is listed in two layers"
                self.listed[token] = index
        self.inferred: dict[str, int] = {}
        deps: dict[str, set[str]] = {m: set() for m in modules}
        for e in edges:
            deps[e.source].add(e.target)
        for name in _topological(modules, deps):
            if self._from_doc(name) is None:
                self.inferred[name] = max((self.of(d) for d in deps[name]), default=0)

    def _from_doc(self, name: str) -> int | None:
        if name == "":
            return self.listed.get(FACADE)
        if f"{name}.__init__" in self.listed:
            return self.listed[f"{name}.__init__"]
        parts = name.split(".")
        for n in range(len(parts), 0, -1):  # the module itself, then its packages, innermost first
            prefix = ".".join(parts[:n])
            if prefix in self.listed:
                return self.listed[prefix]
        return None

    def of(self, name: str) -> int:
        found = self._from_doc(name)
        # Modules on an import cycle may be unplaced here; test_no_import_cycle names the cycle.
        return found if found is not None else self.inferred.get(name, 0)

    def describe(self, name: str) -> str:
        index = self.of(name)
        how = " (not listed: inferred from its imports)" if name in self.inferred else ""
        return f"layer {index + 1} [{' '.join(self.layers[index])}]{how}"


def _violations(layers: LayerMap, edges: list[Edge]) -> list[str]:
    return [f"{e.file}:{e.line}: {_display(e.source)} ({layers.describe(e.source)}) imports "
            f"{_display(e.target)} ({layers.describe(e.target)})"
            for e in edges if layers.of(e.target) > layers.of(e.source)]


def _topological(modules: dict[str, Path], deps: dict[str, set[str]]) -> list[str]:
    order, state = [], {}

    def visit(name: str) -> None:
        if state.get(name) == "done":
            return
        state[name] = "open"
        for d in sorted(deps[name]):
            if state.get(d) != "open":  # a cycle is reported by test_no_import_cycle
                visit(d)
        state[name] = "done"
        order.append(name)

    for name in sorted(modules):
        visit(name)
    return order


def _cycles(modules: dict[str, Path], edges: list[Edge]) -> list[list[Edge]]:
    """One cycle through each strongly connected component of more than one module."""
    out: dict[str, list[Edge]] = {m: [] for m in modules}
    for e in edges:
        out[e.source].append(e)
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v: str) -> None:  # Tarjan; the graph is ~70 modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in out[v]:
            if e.target not in index:
                connect(e.target)
                low[v] = min(low[v], low[e.target])
            elif e.target in on_stack:
                low[v] = min(low[v], index[e.target])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for m in sorted(modules):
        if m not in index:
            connect(m)
    cycles = []
    for component in components:
        start = min(component)
        path, seen, at = [], {start}, start
        while True:  # walk inside the component until a module repeats: that is a cycle
            e = next(e for e in out[at] if e.target in component and (e.target not in seen or e.target == start))
            path.append(e)
            if e.target == start:
                break
            seen.add(e.target)
            at = e.target
        cycles.append(path)
    return cycles


def test_layer_order_lists_real_modules():
    modules = _modules()
    packages = {m for m, p in modules.items() if p.name == "__init__.py"}
    for token in (t for layer in _layers() for t in layer):
        if token == FACADE:
            continue
        name = token.removesuffix(".__init__")
        assert name in modules, f"{DOC} 'Layer order' lists {token}, which is no module of repdeploy"
        if token.endswith(".__init__"):
            assert name in packages, f"{DOC} 'Layer order' lists {token}, but {name} is not a package"


def test_no_import_cycle():
    modules, edges = _graph()
    cycles = _cycles(modules, edges)
    lines = [" -> ".join([_display(c[0].source)] + [f"{_display(e.target)} ({e.file}:{e.line})" for e in c])
             for c in cycles]
    assert not cycles, "import cycles (lazy imports count):\n  " + "\n  ".join(lines)


def test_no_module_imports_a_higher_layer():
    modules, edges = _graph()
    layers = LayerMap(_layers(), modules, edges)
    if layers.inferred:
        warnings.warn("modules not in docs/architecture.md 'Layer order' (layer inferred from their imports): "
                      + ", ".join(_display(m) for m in sorted(layers.inferred)), stacklevel=1)
    violations = _violations(layers, edges)
    assert not violations, ("imports of a higher layer (docs/architecture.md, 'Layer order'; move the code, "
                            "or the module's line if the direction is sound):\n  " + "\n  ".join(violations))


# The package facade imports nearly every module, and Python runs a package's __init__ before
# any of its submodules, so `import repdeploy.x` alone would hide a circle or a missing import
# behind the facade's order. The child process therefore puts a bare `repdeploy` package (its
# path, not its __init__) in sys.modules and imports each module from nothing but that; the
# heavy third-party modules stay loaded between modules, which keeps this to a few seconds.
_IMPORT_EACH = textwrap.dedent("""
    import importlib, importlib.util, json, sys, traceback
    package_dir, names = sys.argv[1], json.loads(sys.argv[2])
    failures, loaded = {}, {}

    def forget():
        for key in [k for k in sys.modules if k == "repdeploy" or k.startswith("repdeploy.")]:
            del sys.modules[key]

    for name in names:
        forget()
        spec = importlib.util.spec_from_file_location("repdeploy", package_dir + "/__init__.py",
                                                      submodule_search_locations=[package_dir])
        sys.modules["repdeploy"] = importlib.util.module_from_spec(spec)  # the path, not the facade
        try:
            importlib.import_module("repdeploy." + name)
        except BaseException:
            failures[name] = traceback.format_exc(limit=-3)
        loaded[name] = sorted(k[len("repdeploy."):] for k in sys.modules if k.startswith("repdeploy."))
    forget()
    try:
        import repdeploy  # and the facade itself, the normal way
    except BaseException:
        failures[""] = traceback.format_exc(limit=-3)
    print(json.dumps({"failures": failures, "loaded": loaded}))
""")


@functools.lru_cache(maxsize=1)
def _import_each() -> dict:
    names = sorted(m for m in _modules() if m and m != "__main__")  # __main__ runs the CLI when imported
    r = subprocess.run([sys.executable, "-c", _IMPORT_EACH, str(PACKAGE), json.dumps(names)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_module_imports_on_its_own():
    failures = _import_each()["failures"]
    assert not failures, "modules that fail to import on their own:\n" + "\n".join(
        f"{_display(m)}:\n{textwrap.indent(tb, '    ')}" for m, tb in failures.items())


def test_the_checks_catch_what_they_are_for(tmp_path):
    """Each check fails on the fault it is for: a lazy upward import, a cycle, a new module."""
    lazy = tmp_path / "calib.py"  # read as if it were repdeploy/quant/calib.py
    lazy.write_text("def f():\n    from ..train import train\n    from .. import errors\n    import repdeploy.fuse\n")
    modules = {m: PACKAGE for m in ("errors", "fuse", "train", "quant", "quant.calib")}
    edges = _imports("quant.calib", lazy, modules)
    assert {(e.target, e.line) for e in edges} == {("train", 2), ("errors", 3), ("fuse", 4)}

    layers = LayerMap([["errors"], ["fuse"], ["quant"], ["train"]], modules, edges)
    [violation] = _violations(layers, edges)
    assert "calib.py:2: repdeploy.quant.calib (layer 3 [quant]) imports repdeploy.train (layer 4" in violation

    grown = {"errors": set(), "train": {"errors"}, "quant": set(), "quant.ranges": {"train"},
             "bench_stats": {"train"}, "io": {"bench_stats"}}
    grown_edges = [Edge(s, d, "x.py", 1) for s, ds in grown.items() for d in ds]
    layers = LayerMap([["errors", "io"], ["train"], ["quant"]], dict.fromkeys(grown, PACKAGE), grown_edges)
    assert layers.of("quant.ranges") == 2  # a new module in a package takes the package's layer
    assert layers.of("bench_stats") == 1 and "bench_stats" in layers.inferred  # the lowest its imports allow
    assert [v.split(": ", 1)[1].split(" (")[0] for v in _violations(layers, grown_edges)] == ["repdeploy.io"]

    circle = [Edge("train", "optim", "train.py", 3), Edge("optim", "optim.hypersearch", "optim/__init__.py", 7),
              Edge("optim.hypersearch", "train", "optim/hypersearch.py", 9), Edge("errors", "train", "e.py", 1)]
    [cycle] = _cycles(dict.fromkeys(["errors", "train", "optim", "optim.hypersearch"]), circle)
    assert [e.file for e in cycle] == ["optim/__init__.py", "optim/hypersearch.py", "train.py"]


def test_importing_a_module_loads_nothing_above_it():
    """What actually runs: a submodule import also runs its packages' __init__ (their module-level
    imports), which the graph above does not show. The train -> optim/__init__ -> hypersearch
    circle went that way. The packages themselves are exempt (Python always runs them), not what
    they import at module level."""
    modules, edges = _graph()
    layers = LayerMap(_layers(), modules, edges)
    packages = {m for m, p in modules.items() if p.name == "__init__.py"}
    above = []
    for name, loaded in sorted(_import_each()["loaded"].items()):
        ancestors = {".".join(m.split(".")[:n]) for m in loaded for n in range(1, m.count(".") + 1)}
        for m in loaded:
            if m in modules and not (m in packages and m in ancestors) and layers.of(m) > layers.of(name):
                above.append(f"import {_display(name)} ({layers.describe(name)}) loads {_display(m)} "
                             f"({layers.describe(m)})")
    assert not above, "modules that load a higher layer when imported:\n  " + "\n  ".join(above)
