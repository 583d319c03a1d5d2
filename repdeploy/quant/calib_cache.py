"""The calibration cache (calib.json): calibrated ranges as plain data, bound to their model.

The ranges leave calibration as a `CalibrationCache` (JSON) holding each tensor's amax and
observed min/max, plus the identity of the model it belongs to (ArchSpec and a fingerprint of
the weights), so a cache for another model is refused instead of silently used. It is the single
hand-off between calibration, QAT and export, and a user may edit it and feed it back.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from ..errors import CalibrationError
from ..io import write_json_atomic
from ..models.plain import PlainNet
from ..models.specs import ArchSpec

CACHE_FORMAT = "repdeploy-calib/1"
#: A cached amax more than this many times the largest value the data produces (or less than
#: 1/PLAUSIBLE_RATIO of it) is not a calibration of this model on such data: an edited or foreign
#: range. Honest caches stay well inside: max vs entropy/percentile on another sample of the same
#: data differ by 1-4x.
PLAUSIBLE_RATIO = 10.0


def weights_fingerprint(plain: PlainNet) -> str:
    """sha256 over the fused weights (names, shapes and float32 bytes), in key order."""
    h = hashlib.sha256()
    for key, value in sorted(plain.state_dict().items()):
        t = value.detach().to(torch.float32).contiguous().cpu()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class TensorRange:
    """One activation's range: the amax used for quantization and the observed extremes."""

    amax: float
    min: float
    max: float

    def to_dict(self) -> dict:
        return {"amax": self.amax, "min": self.min, "max": self.max}


@dataclass
class CalibrationCache:
    """Calibrated activation ranges plus the identity of the model they belong to.

    Saved as JSON; a user may edit any `amax` and feed the file back with --calib-cache.
    """

    arch: dict
    weights_sha256: str
    method: str
    samples: int
    tensors: dict[str, TensorRange]
    percentile: float | None = None
    bins: int | None = None
    target: str | None = None
    data: dict = field(default_factory=dict)
    # Seconds per calibration stage of the run that made this cache (not saved in calib.json,
    # which holds ranges only; the quantize report records them).
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def amax(self) -> dict[str, float]:
        return {name: r.amax for name, r in self.tensors.items()}

    def to_dict(self) -> dict:
        return {
            "format": CACHE_FORMAT,
            "model": {"arch": self.arch, "weights_sha256": self.weights_sha256},
            "method": self.method, "percentile": self.percentile, "bins": self.bins,
            "samples": self.samples, "target": self.target, "data": self.data,
            "tensors": {name: r.to_dict() for name, r in self.tensors.items()},
        }

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "calibration cache") -> "CalibrationCache":
        if not isinstance(d, Mapping) or d.get("format") != CACHE_FORMAT:
            raise CalibrationError(f"{source} is not a repdeploy calibration cache (format {CACHE_FORMAT})")
        try:
            tensors = {}
            for name, r in d["tensors"].items():
                tr = TensorRange(float(r["amax"]), float(r.get("min", -r["amax"])), float(r.get("max", r["amax"])))
                if not all(math.isfinite(v) for v in (tr.amax, tr.min, tr.max)) or tr.amax < 0:
                    raise CalibrationError(f"{source}: amax, min and max of {name} must be finite (amax >= 0), got "
                                           f"{r.get('amax')}, {r.get('min')}, {r.get('max')}")
                tensors[name] = tr
            return cls(arch=dict(d["model"]["arch"]), weights_sha256=str(d["model"]["weights_sha256"]),
                       method=str(d["method"]), samples=_count(d["samples"], source), tensors=tensors,
                       percentile=d.get("percentile"), bins=d.get("bins"), target=d.get("target"),
                       data=dict(d.get("data") or {}))
        except CalibrationError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise CalibrationError(f"{source} is malformed ({type(exc).__name__}: {exc}); re-run calibration") from exc

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationCache":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError as exc:
            raise CalibrationError(f"calibration cache {p} does not exist; drop --calib-cache to calibrate") from exc
        except RecursionError:
            raise CalibrationError(f"calibration cache {p} is nested too deeply to be a calibration cache; re-run "
                                   "calibration") from None
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"calibration cache {p} is not readable JSON ({exc}); re-run calibration") from exc
        return cls.from_dict(d, source=str(p))

    def check_plausible(self, observed: Mapping[str, float], *, source: str = "calibration cache",
                        data: str = "the data") -> None:
        """Refuse ranges the data cannot explain: `observed` is each tensor's largest |value| on a
        sample of the images (a max calibration). An amax of 1e38 quantizes every activation to zero
        while the report would still read PASSED."""
        for name, seen in observed.items():
            amax = self.tensors[name].amax if name in self.tensors else None
            if amax is None or not math.isfinite(seen) or seen <= 0:
                continue
            if amax > PLAUSIBLE_RATIO * seen or amax < seen / PLAUSIBLE_RATIO:
                raise CalibrationError(
                    f"{source}: the range of {name} (amax {amax:.4g}) is implausible for {data}, whose largest value "
                    f"there is {seen:.4g} (allowed: within {PLAUSIBLE_RATIO:g}x); the cache was edited or made for "
                    "other data: drop --calib-cache to recalibrate")

    def check_model(self, plain: PlainNet, source: str = "calibration cache") -> None:
        """Refuse a cache made for another architecture or other weights."""
        spec: ArchSpec = plain.spec
        if self.arch != spec.to_dict():
            other = self.arch.get("name", "?") if isinstance(self.arch, dict) else "?"
            raise CalibrationError(
                f"{source} was made for {other}, not for this {spec.name}; drop --calib-cache to recalibrate"
            )
        if self.weights_sha256 != weights_fingerprint(plain):
            raise CalibrationError(
                f"{source} was made for other weights of {spec.name} (fingerprint differs); "
                "drop --calib-cache to recalibrate"
            )


def _count(value, source: str) -> int:
    from ..validate import integer

    try:
        return integer("samples", value, low=0, high=10**9, allow_none=False)  # type: ignore[return-value]
    except Exception as exc:  # noqa: BLE001 - InputError: reworded for the cache
        raise CalibrationError(f"{source}: {exc}; re-run calibration") from None
