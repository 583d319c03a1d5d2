"""train, hypersearch: produce the checkpoints repdeploy deploys (RepVGG and RepOpt-VGG)."""

from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import click

from .. import defaults
from .common import emit, handle_errors, json_option, quiet_option
from .options import amp_option, deprecated_alias, device_option

OPTIMIZER_CHOICES = ["sgd", "adamw", "repopt-sgd", "repopt-adamw", "agd"]


def _loop_options(command: str) -> Callable[[Callable], Callable]:
    """Options shared by every command that runs the training loop; help worded for `command`."""
    if command == "hypersearch":
        arch_help = "RepOpt-VGG variant whose hyper-search form to train, e.g. RepOpt-VGG-mini, RepOpt-VGG-B1."
        lr_help = "Peak learning rate of its SGD (default 0.1)."
        wd_help = "Weight decay of its SGD (default 1e-4; none on 1-D parameters)."
    else:
        arch_help = "Variant to train, e.g. RepVGG-mini, RepOpt-VGG-mini, RepVGG-A0."
        lr_help = ("Peak learning rate (default 0.1 for sgd and repopt-sgd, 1e-3 for adamw and repopt-adamw; "
                   "agd: a gain, default 1).")
        wd_help = ("Default 1e-4 for sgd/repopt-sgd, 0.05 for adamw/repopt-adamw "
                   "(no decay on 1-D parameters except identity scales).")
    options = [
        click.option("--arch", required=True, help=arch_help),
        click.option("--train-data", default="builtin", show_default=True,
                     help="Training data: 'builtin' (UCI digits), an image folder (class sub-folders, "
                          "optionally under train/ and val/) or a labelled .npz."),
        click.option("--eval-data", default=None,
                     help="Validation data (default: the source's own val split, else 10% held out)."),
        click.option("--input-size", type=int, default=None, help="Input size (default: the variant's)."),
        click.option("--epochs", type=int, default=30, show_default=True),
        click.option("--batch-size", type=int, default=64, show_default=True),
        click.option("--lr", type=float, default=None, help=lr_help),
        click.option("--weight-decay", type=float, default=None, help=wd_help),
        click.option("--warmup-epochs", type=float, default=1.0, show_default=True),
        click.option("--label-smoothing", type=float, default=0.1, show_default=True),
        click.option("--augment", type=click.Choice(["none", "shift", "shift-flip"]), default="shift",
                     show_default=True, help="Training augmentation (no flips by default: digits are not symmetric)."),
        click.option("--seed", type=int, default=defaults.SEED, show_default=True),
        click.option("--checkpoint-every", type=int, default=0, show_default=True,
                     help="Steps between training-state checkpoints (0 = every epoch)."),
        click.option("--state", "state_path", default=None, type=click.Path(dir_okay=False),
                     help="Training-state file for --resume (default: OUTPUT.state)."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run from its training state."),
        device_option,
        amp_option,
        deprecated_alias("--data", "--train-data"),
        deprecated_alias("--val-data", "--eval-data"),
        deprecated_alias("--image-size", "--input-size"),
    ]

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        # The aliases come last in the list but must wrap outermost (they read the others' values).
        for option in reversed(options[:-3]):
            wrapper = option(wrapper)
        for alias in options[-3:]:
            wrapper = alias(wrapper)
        return wrapper

    return decorate


def _placement(device: str, amp: str):
    from ..devices import amp_dtype, resolve_device

    where = resolve_device(device)
    return where, amp_dtype(amp, where)


def _prepare(arch: str, data: str, val_data: str | None, image_size: int | None, seed: int, batch_size: int = 1):
    from ..data import open_train_val
    from ..models import get_spec

    from ..validate import input_size, integer, seed as check_seed, training_batch

    base = get_spec(arch)
    input_size("--input-size", image_size)  # 0 is an error, not "the default"
    check_seed("--seed", seed)
    integer("--batch-size", batch_size, low=1, high=65_536, allow_none=False)
    size = image_size if image_size is not None else base.input_size
    # Bounded by this machine's memory before any data is read (issue 21 N12).
    training_batch("--input-size/--batch-size", batch=batch_size, size=size, channels=base.in_channels,
                   widths=base.widths, depths=base.depths)
    train_set, val_set = open_train_val(data, image_size=size, channels=base.in_channels, val_source=val_data,
                                        seed=seed)
    return get_spec(arch, num_classes=len(train_set.classes)), train_set, val_set, size


def _config(optimizer: str, **kw: Any):
    from ..training.recipes import DEFAULT_LR, DEFAULT_WEIGHT_DECAY
    from ..training.loop import TrainConfig

    lr = kw.pop("lr")
    wd = kw.pop("weight_decay")
    return TrainConfig(lr=DEFAULT_LR[optimizer] if lr is None else lr,
                       weight_decay=DEFAULT_WEIGHT_DECAY[optimizer] if wd is None else wd, **kw)


def _command_line() -> str:
    return "repdeploy " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _text(r: dict) -> str:
    lines = [f"{r['arch']} ({r['optimizer']}) -> {r['output']}"]
    if r.get("val_top1") is not None:
        lines.append(f"  val top-1   {r['val_top1']:.2f} % on {r['val_images']} images")
    lines.append(f"  train loss  {r['train_loss']:.4f} after {r['epochs']} epochs, {r['steps']} steps")
    if r["steps"] == r.get("resumed_from_step"):
        lines.append("  resumed     the saved training state was already complete; weights written as saved")
    else:
        lines.append(f"  speed       {r['images_per_second']:.0f} images/s ({r['seconds']:.1f} s)")
    return "\n".join(lines)


@click.command("train")
@_loop_options("train")
@click.option("--optimizer", type=click.Choice(OPTIMIZER_CHOICES), default=None,
              help="Default: sgd for RepVGG, repopt-sgd for RepOpt-VGG (which needs --scales).")
@click.option("--scales", type=click.Path(dir_okay=False), default=None,
              help="RepOpt scales file from `repdeploy hypersearch` (for repopt-sgd / repopt-adamw).")
@click.option("--sgs", is_flag=True, help="Add Spatial Gradient Scaling (exact for SGD).")
@click.option("--sgs-every", type=int, default=5, show_default=True, help="Epochs between SGS refreshes.")
@click.option("--clip-grad", type=float, default=None,
              help="Clip the gradient norm (refused with RepOpt/SGS multipliers: it breaks their equivalence).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (.pth).")
@json_option
@quiet_option
@handle_errors
def train_cmd(arch, train_data, eval_data, input_size, epochs, batch_size, lr, weight_decay, warmup_epochs,
              label_smoothing, augment, seed, checkpoint_every, state_path, resume, device, amp, optimizer, scales,
              sgs, sgs_every, clip_grad, output, as_json):
    """Train a RepVGG (branch form) or RepOpt-VGG (plain form) model.

    The checkpoint is the family's upstream key format as a plain state_dict (RepVGG train form:
    rbr_dense/rbr_1x1/rbr_identity; RepOpt-VGG: conv/bn per block), loadable with
    weights_only=True and by `repdeploy inspect/fuse/quantize`. The whole training state is saved
    to OUTPUT.state every epoch (or --checkpoint-every steps) for --resume.

    \b
    Examples:
      repdeploy train --arch RepVGG-mini --epochs 30 -o repvgg_mini.pth
      repdeploy hypersearch --arch RepOpt-VGG-mini -o scales.pth
      repdeploy train --arch RepOpt-VGG-mini --optimizer repopt-sgd --scales scales.pth -o repopt.pth
      repdeploy train --arch RepVGG-A0 --train-data imagenet/ --input-size 224 --sgs -o a0.pth
      repdeploy train --arch RepVGG-mini --optimizer agd -o agd.pth     # no learning rate needed
    """
    from ..io import ensure_writable_file, save_torch_atomic
    from ..models import get_spec
    from ..optim.repopt import load_scales
    from ..training.recipes import train_architecture

    from ..rundir import refuse_other_kind, refuse_overwriting_inputs

    ensure_writable_file(output)
    refuse_overwriting_inputs([train_data, eval_data, scales], files=[output, state_path or f"{output}.state"])
    refuse_other_kind(output, "torch")
    refuse_other_kind(state_path or f"{output}.state", "torch", "--state")
    if state_path is not None and Path(state_path).resolve() == Path(output).resolve():
        raise click.BadParameter("the training state and the checkpoint must be different files", param_hint="--state")
    where, amp_type = _placement(device, amp)
    family = get_spec(arch).family
    optimizer = optimizer or ("repopt-sgd" if family == "repopt" else "sgd")
    spec, train_set, val_set, size = _prepare(arch, train_data, eval_data, input_size, seed, batch_size)
    scale_values = load_scales(scales, spec) if scales else None
    config = _config(optimizer, lr=lr, weight_decay=weight_decay, epochs=epochs, batch_size=batch_size,
                     warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, augment=augment, seed=seed,
                     checkpoint_every=checkpoint_every, clip_grad_norm=clip_grad)
    model, result = train_architecture(
        spec, train_set, val_set, config, optimizer=optimizer, scales=scale_values, sgs=sgs, sgs_every=sgs_every,
        state_path=state_path or f"{output}.state", resume=resume, device=where, amp=amp_type,
    )
    save_torch_atomic(output, {k: v.detach().clone() for k, v in model.state_dict().items()})
    record = {
        "arch": spec.name, "family": spec.family, "optimizer": optimizer, "sgs": sgs, "output": str(output),
        "input_size": size, "num_classes": spec.num_classes, "val_images": len(val_set),
        "device": str(where), "amp": amp, "command": _command_line(), **result.to_dict(),
    }
    emit(record, as_json, _text)


@click.command("hypersearch")
@_loop_options("hypersearch")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Scales file to write (.pth).")
@json_option
@quiet_option
@handle_errors
def hypersearch_cmd(arch, train_data, eval_data, input_size, epochs, batch_size, lr, weight_decay, warmup_epochs,
                    label_smoothing, augment, seed, checkpoint_every, state_path, resume, device, amp, output,
                    as_json):
    """Train RepOpt-VGG's hyper-search form and write its branch scales (upstream scales format).

    The scales file is a plain dict of 1-D tensors (stage0.scale_conv.weight, ...); pass it to
    `repdeploy train --optimizer repopt-sgd --scales FILE`.

    \b
    Examples:
      repdeploy hypersearch --arch RepOpt-VGG-mini --epochs 20 -o scales.pth
      repdeploy hypersearch --arch RepOpt-VGG-B1 --train-data cifar100/ --input-size 32 -o b1_scales.pth
    """
    from ..io import ensure_writable_file
    from ..training.hypersearch import hypersearch

    from ..rundir import refuse_other_kind, refuse_overwriting_inputs

    ensure_writable_file(output)
    refuse_overwriting_inputs([train_data, eval_data], files=[output, state_path or f"{output}.state"])
    refuse_other_kind(output, "torch")
    refuse_other_kind(state_path or f"{output}.state", "torch", "--state")
    where, amp_type = _placement(device, amp)
    spec, train_set, val_set, size = _prepare(arch, train_data, eval_data, input_size, seed, batch_size)
    config = _config("sgd", lr=lr, weight_decay=weight_decay, epochs=epochs, batch_size=batch_size,
                     warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, augment=augment, seed=seed,
                     checkpoint_every=checkpoint_every)
    result = hypersearch(spec, train_set, val_set, config, output=output,
                         state_path=state_path or f"{output}.state", resume=resume, device=where, amp=amp_type)
    record = {"arch": spec.name, "output": str(output), "input_size": size, "val_images": len(val_set),
              "optimizer": "sgd (search form)", "device": str(where), "amp": amp, "command": _command_line(),
              "scales": result.summary(), **result.train.to_dict()}
    emit(record, as_json, lambda r: _text(r) + f"\n  scales      {r['scales']}")


COMMANDS = [train_cmd, hypersearch_cmd]
