"""What `quantize` accepts: a model in any form a user holds, and options checked before any work.

`load_plain` turns a checkpoint path, a fused PlainNet, a train-form module or what
`repdeploy.load()` returned into one PlainNet (fusing and verifying where needed) plus a record
of where it came from; `check_quantize_arguments` refuses bad options with the option named.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, InputError
from ..models.plain import PlainNet
from ..zoo import is_zoo_path
from .calibrators import METHODS
from .quantizer import TARGETS


def load_plain(model: Any, load_kwargs: dict) -> tuple[PlainNet, dict]:
    """(PlainNet in eval mode, where it came from: source, variant, zoo, fusion figures)."""
    from ..checkpoints import Loaded

    if isinstance(model, Loaded):  # what repdeploy.load() returns
        if model.model is None:
            raise InputError(f"{model.path}: a scales file has no weights to quantize; {model.deploy_steps}")
        model = model.model
    if isinstance(model, PlainNet):
        return model.eval(), {"source": "PlainNet (in memory)", "variant": model.spec.name, "zoo": False}
    if isinstance(model, torch.nn.Module) and hasattr(model, "spec"):  # a train-form model: fuse (verified)
        from ..fuse import fuse

        fused = fuse(model.eval())
        return fused.plain.eval(), {"source": f"{type(model).__name__} (in memory)", "variant": model.spec.name,
                                    "zoo": False, "fusion": fused.equivalence.to_dict()}
    if isinstance(model, (str, os.PathLike)):
        from ..checkpoints import load_fused

        path = Path(model)
        if not path.exists():
            raise CheckpointError(f"checkpoint {path} does not exist; give a .pth/.pt/.safetensors file")
        fused = load_fused(path, **load_kwargs)
        loaded, equivalence = fused.loaded, fused.equivalence
        info = {"source": str(path), "variant": loaded.spec.name, "format": loaded.format, "form": loaded.form,
                "zoo": is_zoo_path(path),
                "fusion": equivalence.to_dict() if equivalence is not None else None}
        return fused.plain.eval(), info
    raise InputError(f"quantize takes a checkpoint path, a repdeploy model (PlainNet or a RepVGG/RepOpt-VGG "
                     f"module) or what repdeploy.load() returned, not {type(model).__name__}")


def check_quantize_arguments(calib_method: str, target: str, calib_samples: int, percentile: float,
                             max_drop: float | None, eval_data=None, eval_limit: int | None = None, seed: int = 0,
                             fallback: bool = False, resize: int | None = None,
                             input_size: int | None = None) -> None:
    """Raise InputError naming the first bad option of a `quantize` call."""
    from .. import validate

    validate.input_size("--input-size", input_size)
    validate.integer("--calib-samples", calib_samples, low=1, high=10_000_000, allow_none=False)
    validate.number("--percentile", percentile, allow_none=False)
    validate.integer("--eval-limit", eval_limit, low=1)
    validate.seed("--seed", seed)
    validate.resize("--resize", resize)
    if calib_method not in METHODS:
        raise InputError(f"unknown calibration method {calib_method!r}; use one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise InputError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    if calib_samples < 1:
        raise InputError(f"--calib-samples must be >= 1, got {calib_samples}")
    if not 0.0 < percentile <= 100.0:
        raise InputError(f"--percentile must be in (0, 100], got {percentile}")
    validate.max_drop("--max-drop", max_drop)
    if max_drop is not None and eval_data is None and not fallback:
        # Without eval data the drop is never measured: the gate would silently pass everything.
        # (With fallback, max_drop is the budget the holdout choice meets; the pipeline gates after.)
        raise InputError(f"--max-drop {max_drop:g} needs --eval-data (labelled images) to measure the top-1 drop")
