"""INT8 quantization of fused PlainNets: fake-quant core, calibration, PTQ and diagnostics.

The names below are the package's public API (docs/api.md, docs/quantization.md). They import
lazily (PEP 562): the fake-quant core (`quant.calib`, `quant.quantizer`) sits layers below the PTQ
workflow, and importing one of them runs this module, which must not load PTQ with it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["quantize", "QuantizeResult", "QuantPlainNet", "CalibrationCache", "calibrate"]


def __getattr__(name: str) -> Any:
    if name in ("quantize", "QuantizeResult"):
        from . import ptq

        return getattr(ptq, name)
    if name == "QuantPlainNet":
        from .quantizer import QuantPlainNet

        return QuantPlainNet
    if name == "CalibrationCache":
        from .calib_cache import CalibrationCache

        return CalibrationCache
    if name == "calibrate":
        from .calib import calibrate

        return calibrate
    raise AttributeError(name)
