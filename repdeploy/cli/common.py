"""What every command shares: error reporting, --json output, --quiet."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from ..errors import RepDeployError
from ..progress import set_quiet


def handle_errors(fn: Callable) -> Callable:
    """Turn repdeploy errors into one clear line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RepDeployError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("error: interrupted; no partial output was left behind", err=True)
            sys.exit(130)

    return wrapper


def quiet_option(fn: Callable) -> Callable:
    def set_it(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        set_quiet(value)
        return value

    return click.option(
        "--quiet", "-q", is_flag=True, expose_value=False, is_eager=True, callback=set_it,
        help="Print nothing but results and errors.",
    )(fn)


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")(fn)


def emit(record: dict, as_json: bool, text: Callable[[dict], str] | None = None) -> None:
    """Print a result: one JSON object for machines, or readable lines for people."""
    if as_json:
        click.echo(json.dumps(record, indent=2, default=_default))
    elif text is not None:
        click.echo(text(record))
    else:
        for key, value in record.items():
            click.echo(f"{key:>16}: {value}")


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


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
        kwargs["prep"] = dict(mean=_floats("--mean", prep_mean), std=_floats("--std", prep_std), resize=prep_resize)
        return fn(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
