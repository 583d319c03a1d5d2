"""The options several commands share, and the old spellings of renamed ones (docs/cli.md).

Spellings used before the vocabulary stay accepted for one release as hidden aliases
(`deprecated_alias`), with a note on stderr.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from ..errors import RepDeployError
from ..failures import describe_failure
from .common import fail, log_warning

#: The release in which the deprecated spellings stop being accepted.
ALIAS_REMOVAL = "0.3"



def deprecated_alias(old: str, new: str, *, flag: bool = False) -> Callable[[Callable], Callable]:
    """Accept the old spelling `old` of option `new` for one more release, hidden from --help.

    The value is converted with the new option's type and handed to the command under the new
    option's name; a note on stderr names the new spelling. Giving both with different values
    is a usage error.

    >>> @deprecated_alias("--limit", "--eval-limit")                 # doctest: +SKIP
    ... @click.option("--eval-limit", type=int)
    """
    dest = "deprecated_" + old.lstrip("-").replace("-", "_")

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(dest)
            if value is None or (flag and not value):
                return fn(*args, **kwargs)
            ctx = click.get_current_context()
            param = next(p for p in ctx.command.params if new in getattr(p, "opts", ()))
            value = param.type_cast_value(ctx, value)
            source = ctx.get_parameter_source(param.name)
            if source is click.core.ParameterSource.COMMANDLINE and kwargs[param.name] != value:
                raise click.UsageError(f"{old} is the old spelling of {new}; give only {new}")
            log_warning(f"note: {old} is deprecated and goes in repdeploy {ALIAS_REMOVAL}; use {new}")
            kwargs[param.name] = value
            return fn(*args, **kwargs)

        option = (click.option(old, dest, is_flag=True, hidden=True) if flag
                  else click.option(old, dest, default=None, hidden=True))
        return option(wrapper)

    return decorate


def checkpoint_options(fn: Callable) -> Callable:
    """--arch/--ema/--trust-checkpoint/--allow-nonfinite, passed on as `load_kwargs`."""
    options = [
        click.option("--arch", default=None, help="Expected variant (e.g. RepVGG-A0); checked against the weights."),
        click.option("--ema", "use_ema", is_flag=True, help="Use the EMA weights of a training checkpoint."),
        click.option(
            "--trust-checkpoint", is_flag=True,
            help="Allow arbitrary unpickling (can run code from the file). Only for files you trust.",
        ),
        click.option("--allow-nonfinite", is_flag=True, help="Proceed even if weights contain NaN or Inf."),
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, arch, use_ema, trust_checkpoint, allow_nonfinite, **kwargs: Any) -> Any:
        kwargs["load_kwargs"] = dict(
            arch=arch, use_ema=use_ema, trust_checkpoint=trust_checkpoint, allow_nonfinite=allow_nonfinite
        )
        return fn(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def device_option(fn: Callable) -> Callable:
    """--device auto|cpu|cuda[:N] (resolved by repdeploy.devices where the command runs)."""
    from ..devices import DEVICE_HELP

    return click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)(fn)


def amp_option(fn: Callable) -> Callable:
    """--amp none|bf16|fp16: autocast for the training forward (fp16 on CUDA only)."""
    from ..devices import AMP_CHOICES

    return click.option("--amp", type=click.Choice(AMP_CHOICES), default="none", show_default=True,
                        help="Mixed precision for training: bf16 or fp16 autocast (fp16 needs CUDA).")(fn)
def _floats(option: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=option) from None


def preprocessing_options(fn: Callable) -> Callable:
    """--mean/--std/--resize, passed on as `prep` (dict of mean, std, resize; None = the record's or the data's)."""
    options = [
        click.option("--mean", "prep_mean", default=None,
                     help="Preprocessing mean per channel, e.g. 0.485,0.456,0.406 (default: the model's record, "
                          "else the data's own: builtin digits, an .npz's mean array, else ImageNet)."),
        click.option("--std", "prep_std", default=None, help="Preprocessing std per channel, e.g. 0.229,0.224,0.225."),
        click.option("--resize", "prep_resize", type=int, default=None,
                     help="Shorter side before the centre crop to the input size (default: the model's record, "
                          "else input/0.875 for image files, the input size for arrays)."),
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, prep_mean, prep_std, prep_resize, **kwargs: Any) -> Any:
        from .. import validate

        try:  # this wrapper runs outside the command's boundary: the same one line, here
            mean = validate.per_channel("--mean", _floats("--mean", prep_mean))
            std = validate.per_channel("--std", _floats("--std", prep_std), positive=True)
            validate.resize("--resize", prep_resize)
            if prep_resize is not None:
                # One batch of images resized to this shorter side must fit (a 1e6 resize asks for 48 TB).
                batch = kwargs.get("batch_size") if isinstance(kwargs.get("batch_size"), int) else 64
                validate.fits_in_memory("--resize", 2.0 * max(batch, 1) * 3 * 4 * prep_resize ** 2,
                                        f"a batch of {batch} images resized to {prep_resize} px")
        except RepDeployError as exc:
            fail(*describe_failure(exc))
        kwargs["prep"] = dict(mean=mean, std=std, resize=prep_resize)
        return fn(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def diagnostics_option(fn: Callable) -> Callable:
    """--diagnostics full|sample|off: what the per-layer records of the report cost (quant/diagnostics.py)."""
    from .. import defaults
    from ..quant.diagnostics import MODES

    return click.option("--diagnostics", type=click.Choice(MODES), default=defaults.DIAGNOSTICS, show_default=True,
                        help="Per-layer SQNR and weight statistics: sample (one float and one INT8 pass over a few "
                             "images), full (adds each layer's isolated logit SQNR: one pass per layer), off.")(fn)


def input_size_option(fn: Callable) -> Callable:
    """--input-size N: feed the model at N px instead of its variant's size (every command that builds one)."""
    return click.option("--input-size", type=int, default=None,
                        help="Input size in pixels (default: the model's own; e.g. 224 for a D2se trained at 224).")(fn)
