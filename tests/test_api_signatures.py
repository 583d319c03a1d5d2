"""The public API stays callable: no public function takes more than 8 parameters (issue 20).

Commands with many options take one frozen settings record (QuantizeSettings, QatSettings,
PipelineSettings, CompareSettings, as ONNX Runtime's StaticQuantConfig), with the record's fields
accepted as keyword shortcuts through **options (one parameter).
"""

import dataclasses
import inspect

import pytest

import repdeploy

MAX_PARAMETERS = 8


def public_callables():
    for name in repdeploy.__all__:
        obj = getattr(repdeploy, name)
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj) and not issubclass(obj, BaseException):
            for attr, member in vars(obj).items():  # the result types' own public methods
                if inspect.isfunction(member) and not attr.startswith("_"):
                    yield f"{name}.{attr}", member


def count(fn) -> int:
    return len(inspect.signature(fn).parameters)


def test_no_public_function_takes_more_than_8_parameters():
    walked = dict(public_callables())
    assert {"quantize", "qat", "run_pipeline", "compare", "evaluate", "load", "fuse"} <= set(walked)
    over = {name: count(fn) for name, fn in walked.items() if count(fn) > MAX_PARAMETERS}
    assert not over, over


def test_the_walk_catches_a_long_signature(monkeypatch):
    def long(a, b, c, d, e, f, g, h, i):  # nine: one too many
        return a

    monkeypatch.setattr(repdeploy, "__all__", [*repdeploy.__all__, "long_one"])
    monkeypatch.setattr(repdeploy, "long_one", long, raising=False)
    with pytest.raises(AssertionError, match="long_one"):
        test_no_public_function_takes_more_than_8_parameters()


@pytest.mark.parametrize("fn, record", [
    ("quantize", "repdeploy.quant.settings.QuantizeSettings"), ("qat", "repdeploy.quant.settings.QatSettings"),
    ("run_pipeline", "repdeploy.pipeline.PipelineSettings"), ("compare", "repdeploy.compare.CompareSettings")])
def test_each_command_takes_one_frozen_settings_record_and_refuses_unknown_keywords(fn, record, tmp_path):
    import importlib

    module, cls = record.rsplit(".", 1)
    settings = getattr(importlib.import_module(module), cls)
    assert dataclasses.is_dataclass(settings) and settings.__dataclass_params__.frozen
    params = inspect.signature(getattr(repdeploy, fn)).parameters
    assert "settings" in params and any(p.kind is p.VAR_KEYWORD for p in params.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings().seed = 1
    # A misspelt keyword is a TypeError naming it, before any work or any file.
    kwargs = {"output_dir": tmp_path / "out"} if fn != "compare" else {}
    with pytest.raises(TypeError, match="calib_sampels"):
        getattr(repdeploy, fn)("x.pth", *(["y.onnx"] if fn == "compare" else []), calib_sampels=3, **kwargs)
    assert not (tmp_path / "out").exists()
