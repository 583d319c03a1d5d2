"""The import graph follows the layer order, has no cycle, and every module imports on its own.

The rules are import-linter contracts in pyproject.toml ([tool.importlinter]): a layers contract
(the order of docs/architecture.md, "Layer order"; every import counts, lazy ones inside functions
too, and so does a chain through modules listed nowhere; every top-level module must be listed)
and an acyclic-siblings contract. `lint-imports` checks them; this file runs it, proves with
planted imports that each contract breaks on the fault it is for, and keeps the two things a
static contract cannot say: the doc's block is the contract's order, and each module really
imports on its own.

The hand-written test this replaces also listed, per module, what importing it loaded at run time
(a package's __init__ runs first). That part is gone: every package listed whole is one layer with
its __init__, the two split ones (`quant`, `runtime`) import only lower layers at module level, and
a circle through an __init__, the failure that check was for, fails the import-on-its-own test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import grimp
import pytest
from importlinter import configuration
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.layers import LayersContract

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "repdeploy"
DOC = ROOT / "docs" / "architecture.md"


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_lint_imports_keeps_every_contract():
    """What `lint-imports` (and so `make test`) reports on the real package."""
    r = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "2 kept, 0 broken" in r.stdout


def _check(contract_id: str, graph: grimp.ImportGraph):
    options = {k: v for k, v in _contracts()[contract_id].items() if k not in ("id", "name", "type")}
    options["unmatched_ignore_imports_alerting"] = "none"  # a check removes the ignored imports from the graph
    kind = {"layers": LayersContract, "acyclic_siblings": AcyclicSiblingsContract}[_contracts()[contract_id]["type"]]
    contract = kind(name=contract_id, session_options={"root_packages": ["repdeploy"]},
                    contract_options={k: v if isinstance(v, (list, str)) else str(v).lower() for k, v in options.items()})
    return contract.check(graph, verbose=False)


@pytest.fixture()
def graph() -> grimp.ImportGraph:
    configuration.configure()  # what lint-imports does first (the contracts read its settings)
    return grimp.build_graph("repdeploy", cache_dir=None)


def test_the_contracts_break_on_planted_faults(graph):
    """A lazy upward import, one through a module listed nowhere, a new unlisted module, and a cycle
    between two modules of one layer each break a contract; the real graph breaks none."""
    assert _check("layers", graph).kept and _check("acyclic", graph).kept

    # the old train -> optim -> hypersearch -> train circle, from the optimizers' side
    graph.add_import(importer="repdeploy.optim.repopt", imported="repdeploy.training.loop", line_number=2,
                     line_contents="from ..training.loop import train")  # lazy, inside a function
    check = _check("layers", graph)
    assert not check.kept
    [broken] = check.metadata["invalid_dependencies"]
    assert (broken["importer"], broken["imported"]) == ("repdeploy.optim", "repdeploy.training")
    graph.remove_import(importer="repdeploy.optim.repopt", imported="repdeploy.training.loop")

    graph.add_module("repdeploy.unlisted")
    assert _check("layers", graph).metadata["undeclared_modules"] == {"repdeploy.unlisted"}
    graph.add_import(importer="repdeploy.errors", imported="repdeploy.unlisted")
    graph.add_import(importer="repdeploy.unlisted", imported="repdeploy.pipeline.run")
    broken = {(d["importer"], d["imported"]) for d in _check("layers", graph).metadata["invalid_dependencies"]}
    assert ("repdeploy.errors", "repdeploy.pipeline") in broken  # the chain through the unlisted module
    graph.remove_module("repdeploy.unlisted")

    graph.add_import(importer="repdeploy.rundir", imported="repdeploy.io")  # io already imports rundir
    assert _check("layers", graph).kept  # same layer: the order allows it ...
    assert not _check("acyclic", graph).kept  # ... the cycle does not


def _doc_layers() -> list[list[str]]:
    text = DOC.read_text()
    block = text.split("## Layer order", 1)[1].split("```layers\n", 1)[1].split("\n```", 1)[0]
    return [line.split("#", 1)[0].split() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_the_doc_shows_the_contracts_layer_order():
    contract = [[m.strip() for m in layer.split(":")] for layer in _contracts()["layers"]["layers"]]
    assert _doc_layers() == contract[::-1], (
        "docs/architecture.md 'Layer order' (lowest first) and pyproject.toml's layers contract (highest first) "
        "differ; change both")


# Each module from a bare `repdeploy` package (its path, not its facade's __init__, which would
# hide a circle or a missing import behind its own import order), in one child process; the heavy
# third-party modules stay loaded between modules, which keeps this to a few seconds. A static
# contract cannot see this: a module-level import that only fails at run time.
_IMPORT_EACH = textwrap.dedent("""
    import importlib, importlib.util, json, sys, traceback
    package_dir, names = sys.argv[1], json.loads(sys.argv[2])
    failures = {}

    def forget():
        for key in [k for k in sys.modules if k == "repdeploy" or k.startswith("repdeploy.")]:
            del sys.modules[key]

    for name in names:
        forget()
        spec = importlib.util.spec_from_file_location("repdeploy", package_dir + "/__init__.py",
                                                      submodule_search_locations=[package_dir])
        sys.modules["repdeploy"] = importlib.util.module_from_spec(spec)
        try:
            importlib.import_module("repdeploy." + name)
        except BaseException:
            failures[name] = traceback.format_exc(limit=-3)
    forget()
    try:
        import repdeploy
    except BaseException:
        failures[""] = traceback.format_exc(limit=-3)
    print(json.dumps(failures))
""")


def test_every_module_imports_on_its_own():
    names = sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
                   for p in PACKAGE.rglob("*.py"))
    names = [n for n in names if n not in ("__init__", "__main__")]  # __main__ runs the CLI when imported
    r = subprocess.run([sys.executable, "-c", _IMPORT_EACH, str(PACKAGE), json.dumps(names)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    failures = json.loads(r.stdout.strip().splitlines()[-1])
    assert not failures, "modules that fail to import on their own:\n" + "\n".join(
        f"repdeploy.{m}:\n{textwrap.indent(tb, '    ')}" for m, tb in failures.items())
