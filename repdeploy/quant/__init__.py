"""INT8 quantization of fused PlainNets: fake-quant core, calibration, PTQ and diagnostics.

Heavy pieces import lazily; `from repdeploy.quant import quantize` is the entry point the CLI
and the pipeline use.
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
