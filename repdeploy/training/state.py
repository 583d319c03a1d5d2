"""The training state a run checkpoints and `--resume` continues from.

One file (written atomically) holds everything a resumed run needs to reproduce the
uninterrupted one bit for bit: the model and optimizer state, the gradient multipliers, the
step, the epoch history and the running loss of an interrupted epoch, the global torch RNG
state (for callers' losses that draw from it), the run's config and its identity (what model,
data and settings it belongs to). Data order and augmentation are seeded per epoch and per
step (train.py), so no data-loader state is needed.

A state is only adopted by the run it belongs to: a different identity or a different setting
in `RESUME_KEYS` is refused with the difference named. Records cross this boundary as plain
data (dicts), so the file format does not depend on the loop's classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..optim.multipliers import MultiplierMap

FORMAT = "repdeploy-train-state"
# The config fields a resumed run must share with the interrupted one for "resume" to mean anything.
RESUME_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing", "seed", "augment")


@dataclass
class ResumePoint:
    """Where a restored run continues: its step, epoch history and the interrupted epoch's loss."""

    step: int
    history: list[dict]
    partial: tuple[float, int]


def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, multipliers: MultiplierMap,
               config: dict, step: int, history: list[dict], partial: tuple[float, int] = (0.0, 0),
               identity: dict | None = None) -> None:
    """Write the whole training state to `path` atomically (a crash leaves the previous one)."""
    from ..io import save_torch_atomic

    save_torch_atomic(path, {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "multipliers": multipliers.state_dict(),
        "step": step,
        "config": config,
        "history": history,
        "epoch_loss": [float(partial[0]), int(partial[1])],
        "torch_rng": torch.get_rng_state(),
        "identity": identity or {},
    })
    from ..ledger import note_resume_state

    note_resume_state(Path(path))  # an interrupt from now on says the state moved on and how to --resume


def restore_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, multipliers: MultiplierMap,
                  config: dict, identity: dict | None = None) -> ResumePoint:
    """Load the state at `path` into model, optimizer, multipliers and the torch RNG.

    Refused (InputError) when it belongs to another run or was made with other settings;
    CheckpointError when it is unreadable or does not fit the model and optimizer.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        from ..checkpoints.files import load_error_reason

        raise CheckpointError(f"training state {path} cannot be read ({load_error_reason(exc)}); "
                              "delete it to start over") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a repdeploy training state; delete it to start over")
    saved_identity = state.get("identity") or {}
    wanted = identity or {}
    different = sorted(k for k in set(saved_identity) | set(wanted) if saved_identity.get(k) != wanted.get(k))
    if different:
        raise InputError(f"--resume: {path} belongs to another run (different {', '.join(different)}); "
                         "resume with the same model and settings, or delete the state to start over")
    saved = state["config"]
    changed = [k for k in RESUME_KEYS if saved.get(k) != config.get(k)]
    if changed:
        raise InputError(f"--resume: {path} was made with different {', '.join(changed)} "
                         f"({', '.join(f'{k}={saved.get(k)}' for k in changed)}); use the same settings")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"training state {path} does not match this model/optimizer ({exc})") from exc
    multipliers.load_state_dict(state["multipliers"])
    torch.set_rng_state(state["torch_rng"])
    loss_sum, loss_n = state.get("epoch_loss", [0.0, 0])
    return ResumePoint(int(state["step"]), list(state["history"]), (float(loss_sum), int(loss_n)))


__all__ = ["save_state", "restore_state", "ResumePoint", "RESUME_KEYS", "FORMAT"]
