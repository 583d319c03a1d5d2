"""repdeploy: take RepVGG-family checkpoints to verified INT8 deployments.

The Python API mirrors the command line:

>>> import repdeploy
>>> loaded = repdeploy.load("ckpt.pth")                   # doctest: +SKIP
>>> result = repdeploy.fuse(loaded.model)                  # doctest: +SKIP
>>> repdeploy.export_onnx(result.plain, "model.onnx", input_size=224)   # doctest: +SKIP
>>> repdeploy.quantize("ckpt.pth", calib_data="calib/", output_dir="out/")  # doctest: +SKIP
>>> repdeploy.compare("out/model_fp32.onnx", "out/model_int8_ort.onnx", atol=1, rtol=1)  # doctest: +SKIP
>>> repdeploy.quantize(result.plain, calib_data=my_dataloader, output_dir="out/")  # doctest: +SKIP

docs/api.md has a worked example with data in memory. Library functions log through the
`repdeploy` logger and never print; the command line installs the handler.
"""

from __future__ import annotations

import importlib
import sys
import types

from .version import __version__
from .failures import install_early_interrupt as _install_early_interrupt

_install_early_interrupt()  # the command line imports torch for seconds: Ctrl-C then is one line, exit 130

# The facade is lazy (PEP 562): `import repdeploy.serving` (or `repdeploy.errors`) must not load
# torch, so each API name is imported from its module on first use. Several API functions share
# their module's name (`fuse`, `evaluate`, `bench`, `compare`, `preprocess`): importing such a
# submodule makes Python bind it on the package, which would hide the function. `_Facade` refuses
# those bindings, so `repdeploy.fuse` is the function however the submodules were imported, as it
# was when the facade imported everything eagerly.
_API = {
    "bench": ".bench", "bench_interleaved": ".bench", "bench_sessions": ".bench", "bench_models": ".bench",
    "BenchSettings": ".bench", "BenchModelsSettings": ".bench", "BenchReport": ".bench",
    "load": ".checkpoints", "load_fused": ".checkpoints", "save_fused": ".checkpoints",
    "compare": ".compare", "evaluate": ".evaluate", "export_onnx": ".export.onnx", "fuse": ".fuse",
    "run_pipeline": ".pipeline", "Preprocessing": ".preprocess", "preprocess": ".preprocess",
    "preprocessing_of": ".recorded", "QuantizeResult": ".quant.ptq", "quantize": ".quant.ptq",
    "qat": ".quant.qat", "open_runner": ".runtime",
    # result types (dataclasses) and errors, typed (py.typed)
    "FusedModel": ".checkpoints", "Loaded": ".checkpoints", "FuseResult": ".fuse", "Equivalence": ".fuse",
    "QATResult": ".quant.qat", "Accuracy": ".evaluate", "BenchResult": ".bench", "Comparison": ".compare",
    "PipelineResult": ".pipeline",
    **{name: ".errors" for name in (
        "RepDeployError", "InputError", "CheckpointError", "UnsafeCheckpointError", "NonFiniteWeightsError",
        "DataError", "OutputError", "CalibrationError", "FusionError", "ExportError", "VerificationError",
        "AccuracyGateError", "ToleranceError", "BackendMissingError")},
}


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the module dict directly: _Facade's guard is for the import system
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


class _Facade(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return  # a submodule named like an API function: the function keeps the name
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Facade

__all__ = ["__version__", *_API]
