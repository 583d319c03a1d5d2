"""The TensorRT double against TensorRT's own type stubs (PyPI `tensorrt-stubs` 10.13, dev extra).

A double that accepts what TensorRT refuses hides bugs: a name TensorRT does not have, a keyword
it does not take, an argument it requires that the double defaults, an enum value that differs,
two enums that compare equal. So the double may define only names the stubs define, with
signatures the stubs accept, and its enums behave like pybind11's: one type per enum, equal only
to members of the same enum, the stubs' values.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import inspect
import re
from pathlib import Path

import pytest

from conftest import FAKE_TENSORRT_DIR

DOUBLE_SOURCE = FAKE_TENSORRT_DIR / "tensorrt" / "__init__.py"
# The double's own test hooks, which real TensorRT does not have (tests read them).
DOUBLE_ONLY = {"CALLS", "VIOLATIONS", "reset", "IS_FAKE", "cudart"}
# What the Python object model needs to build a tuple-like or buffer-like class.
OBJECT_MODEL = {"__new__"}
_VALUE = re.compile(r"#\s*value = <(\w+)\.(\w+): (-?\d+)>")


def _stub_file(relative: str) -> Path:
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("tensorrt-stubs is not installed: `pip install --no-deps tensorrt-stubs==10.13.0.35.1` "
                    "(the dev extra; --no-deps because its metadata requires TensorRT itself)")
    return Path(dist.locate_file(relative))


class StubClass:
    def __init__(self, node: ast.ClassDef, lines: list[str]) -> None:
        self.name = node.name
        self.bases = [ast.unparse(b) for b in node.bases]
        self.functions: dict[str, list[ast.FunctionDef]] = {}
        self.attributes: set[str] = set()
        self.values: dict[str, int] = {}
        self.nested: dict[str, StubClass] = {}
        for item in node.body:
            if isinstance(item, ast.FunctionDef):
                self.functions.setdefault(item.name, []).append(item)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                self.attributes.add(item.target.id)
                match = _VALUE.search(lines[item.lineno - 1])
                if match and match.group(2) == item.target.id:
                    self.values[item.target.id] = int(match.group(3))
            elif isinstance(item, ast.ClassDef):
                self.nested[item.name] = StubClass(item, lines)

    @property
    def is_enum(self) -> bool:
        return "__members__" in self.attributes


@functools.lru_cache(maxsize=1)
def load_stubs() -> tuple[dict[str, StubClass], set[str], str]:
    """Classes of tensorrt_bindings/tensorrt.pyi, the names `tensorrt` exports, its version."""
    text = _stub_file("tensorrt_bindings/tensorrt.pyi").read_text()
    lines = text.splitlines()
    while True:
        try:
            tree = ast.parse("\n".join(lines))
            break
        except SyntaxError as exc:
            # The generator writes a few signatures Python cannot parse (a required parameter after
            # defaulted ones: INetworkDefinition.add_scale_nd); such a method accepts anything here.
            bad = lines[exc.lineno - 1]
            match = re.match(r"^(\s*)def (\w+)\(", bad)
            assert match, f"unexpected syntax error in the stubs: {exc}"
            lines[exc.lineno - 1] = f"{match.group(1)}def {match.group(2)}(self, *args, **kwargs):"
    classes = {n.name: StubClass(n, lines) for n in tree.body if isinstance(n, ast.ClassDef)}
    init = _stub_file("tensorrt/__init__.pyi").read_text()
    exported = set(ast.literal_eval(re.search(r"^__all__ = (\[.*\])$", init, re.M).group(1))) | {"__version__"}
    version = re.search(r"^__version__: str = '([\d.]+)'", init, re.M).group(1)
    return classes, exported, version


def _members(stub: StubClass, classes: dict[str, StubClass]) -> tuple[dict[str, list], set[str]]:
    """Functions and attributes of a stub class with those of its stub bases."""
    functions, attributes = {k: list(v) for k, v in stub.functions.items()}, set(stub.attributes) | set(stub.nested)
    for base in stub.bases:
        if base in classes:
            f, a = _members(classes[base], classes)
            for k, v in f.items():
                functions.setdefault(k, []).extend(v)
            attributes |= a
    return functions, attributes


def _stub_forms(fn: ast.FunctionDef) -> tuple[list[str], int] | None:
    """(parameter names after self, how many are required); None for (*args, **kwargs)."""
    args = fn.args
    if args.vararg is not None or args.kwarg is not None:
        return None
    names = [a.arg for a in args.posonlyargs + args.args][1:]
    return names, len(names) - len(args.defaults)


def _accepted_by_stubs(signature: inspect.Signature, overloads: list[ast.FunctionDef]) -> str | None:
    """None when every call the double accepts is one an overload accepts (same names, nothing
    required there that the double defaults); else what differs."""
    params = list(signature.parameters.values())[1:]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return "takes *args/**kwargs"
    names = [p.name for p in params]
    required = sum(p.default is p.empty for p in params)
    forms = [_stub_forms(o) for o in overloads]
    if any(f is None for f in forms):
        return None
    # each call the double accepts (its required parameters plus any prefix of its optional ones,
    # by position or by name) must be one some overload accepts: the same leading names, and no
    # further parameter that the overload requires
    for count in range(required, len(names) + 1):
        if not any(len(f_names) >= count and f_names[:count] == names[:count] and f_required <= count
                   for f_names, f_required in forms):
            return f"calls with ({', '.join(names[:count])}) match no stub overload {[f[0] for f in forms]}"
    return None


def _double_tree():
    return ast.parse(DOUBLE_SOURCE.read_text())


def _public_self_attributes(cls_node: ast.ClassDef) -> set[str]:
    names = set()
    for node in ast.walk(cls_node):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                isinstance(node.value, ast.Name) and node.value.id == "self" and not node.attr.startswith("_"):
            names.add(node.attr)
    return names


def test_the_stubs_are_tensorrt_10_13():
    _, exported, version = load_stubs()
    assert version.startswith("10.13.") and {"Builder", "ICudaEngine", "DataType"} <= exported


def test_the_double_defines_only_what_tensorrt_defines(fake_tensorrt):
    classes, exported, _ = load_stubs()
    problems = []
    for node in _double_tree().body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names = [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        else:
            continue
        for name in names:
            if not name.startswith("_") and name not in DOUBLE_ONLY and name not in exported:
                problems.append(f"tensorrt.{name} is not in TensorRT")
    for node in _double_tree().body:
        if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
            continue
        stub = classes.get(node.name)
        if stub is None:
            continue  # reported above
        functions, attributes = _members(stub, classes)
        cls = getattr(fake_tensorrt, node.name)
        for base in cls.__mro__[1:]:
            if base.__module__ == fake_tensorrt.__name__ and not base.__name__.startswith("_") \
                    and base.__name__ not in stub.bases:
                problems.append(f"{node.name} derives from {base.__name__}; TensorRT's does not")
        defined = {i.name for i in node.body if isinstance(i, ast.FunctionDef)}
        for name in sorted(defined | _public_self_attributes(node)):
            if name.startswith("_") and not name.startswith("__"):
                continue
            if name in OBJECT_MODEL:
                continue
            if name not in functions and name not in attributes:
                problems.append(f"{node.name}.{name} is not in TensorRT")
                continue
            member = inspect.getattr_static(cls, name, None)
            if name in defined and callable(member) and not isinstance(member, property) and name in functions:
                why = _accepted_by_stubs(inspect.signature(member), functions[name])
                if why:
                    problems.append(f"{node.name}.{name}: {why}")
    assert problems == [], "\n".join(problems)


def test_enums_have_the_stubs_members_and_values(fake_tensorrt):
    classes, _, _ = load_stubs()
    checked = 0
    for name, obj in vars(fake_tensorrt).items():
        if not isinstance(obj, type) or name.startswith("_") or not hasattr(obj, "__members__"):
            continue
        stub = classes[name]
        assert stub.is_enum, f"{name} is an enum in the double, not in TensorRT"
        for member, value in obj.__members__.items():
            assert member in stub.values, f"{name}.{member} is not in TensorRT {sorted(stub.values)}"
            assert int(value) == stub.values[member], f"{name}.{member} = {int(value)}, TensorRT has {stub.values[member]}"
        checked += 1
    severity = classes["ILogger"].nested["Severity"]
    for member, value in fake_tensorrt.ILogger.Severity.__members__.items():
        assert int(value) == severity.values[member]
    assert checked >= 15


def test_enums_are_pybind_like_not_int_enums(fake_tensorrt):
    trt = fake_tensorrt
    # one type per enum: members of two enums never compare equal, nor to plain ints
    assert trt.DataType.FLOAT != trt.TensorIOMode.NONE and int(trt.DataType.FLOAT) == int(trt.TensorIOMode.NONE)
    assert trt.DataType.FLOAT != 0 and trt.TensorIOMode.INPUT != 1
    assert trt.DataType.HALF == trt.DataType(1) and trt.DataType.HALF is trt.float16
    assert type(trt.DataType.FLOAT) is trt.DataType and type(trt.TensorIOMode.INPUT) is trt.TensorIOMode
    assert not isinstance(trt.DataType.FLOAT, int)
    assert {trt.DataType.FLOAT: "f"}[trt.DataType.FLOAT] == "f" and trt.DataType.FLOAT.name == "FLOAT"
    assert str(trt.DataType.HALF) == "DataType.HALF" and trt.DataType.INT8.value == 2
    assert 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 2
    with pytest.raises(TypeError):
        trt.DataType.FLOAT + 1  # noqa: B018  (pybind11 enums are not arithmetic)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        trt.nptype(trt.TensorIOMode.INPUT)  # the wrong enum, same integer as DataType.HALF
    assert trt.DataType.__members__["HALF"] is trt.DataType.HALF


def test_the_signature_check_catches_what_tensorrt_would_refuse():
    """Planted faults: the check above would pass a double that accepts wrong calls otherwise."""
    classes, _, _ = load_stubs()
    functions, _ = _members(classes["IOptimizationProfile"], classes)
    set_shape = functions["set_shape"]

    def right(self, input, min, opt, max): ...  # noqa: A002, E704
    def renamed(self, name, min, opt, max): ...  # noqa: E704  (keyword `input` in TensorRT)
    def defaulted(self, input, min, opt, max=None): ...  # noqa: A002, E704  (max is required there)
    def extra(self, input, min, opt, max, batch): ...  # noqa: A002, E704

    assert _accepted_by_stubs(inspect.signature(right), set_shape) is None
    for wrong in (renamed, defaulted, extra):
        assert _accepted_by_stubs(inspect.signature(wrong), set_shape) is not None, wrong.__name__
    functions, _ = _members(classes["ICudaEngine"], classes)
    # create_execution_context's strategy is optional in TensorRT: a double requiring it is fine,
    # one taking a second parameter is not
    def strict(self, strategy): ...  # noqa: E704
    def more(self, strategy=None, profile=0): ...  # noqa: E704
    assert _accepted_by_stubs(inspect.signature(strict), functions["create_execution_context"]) is None
    assert _accepted_by_stubs(inspect.signature(more), functions["create_execution_context"]) is not None
