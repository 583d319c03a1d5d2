"""repdeploy: take RepVGG-family checkpoints to verified INT8 deployments.

The Python API mirrors the command line:

>>> import repdeploy
>>> loaded = repdeploy.load("ckpt.pth")                   # doctest: +SKIP
>>> result = repdeploy.fuse(loaded.model)                  # doctest: +SKIP
>>> repdeploy.export_onnx(result.plain, "model.onnx")      # doctest: +SKIP
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so `import repdeploy` (and `repdeploy --help`) does not pay for torch and onnx.
    import importlib

    api = {
        "load": ("checkpoints", "load"),
        "fuse": ("fuse", "fuse"),
        "export_onnx": ("export.onnx", "export_onnx"),
        "quantize": ("quant.ptq", "quantize"),
        "evaluate": ("evaluate", "evaluate"),
        "bench": ("bench", "bench"),
        "run_pipeline": ("pipeline", "run_pipeline"),
    }
    if name in api:
        module, attr = api[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module 'repdeploy' has no attribute {name!r}")
