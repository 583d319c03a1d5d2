"""What every command shares: error reporting, --json output, --quiet."""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from typing import Any, Callable

import click

from ..errors import RepDeployError
from ..progress import set_quiet


#: Set by `repdeploy --debug` (or REPDEPLOY_DEBUG=1): unexpected errors show their traceback.
DEBUG = bool(os.environ.get("REPDEPLOY_DEBUG"))

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}


def describe_failure(exc: BaseException) -> tuple[str, int]:
    """The one line and exit code for an error that escaped a command (the error boundary).

    repdeploy's own errors carry both; the rest are mapped by kind: a full disk or a read-only
    output is the user's to fix, memory exhaustion says what to shrink, anything else is an
    internal error whose traceback `--debug` shows.
    """
    from ..rundir import committed, removed

    if isinstance(exc, RepDeployError):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        def listed(paths: list) -> str:
            return ", ".join(map(str, paths[:5])) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")

        done, gone = committed(), removed()
        kept = f"; finished before it and kept: {listed(done)}" if done else ""
        stale = f"; removed at the start as it would describe old runs: {listed(gone)}" if gone else ""
        return ("interrupted; the outputs being written were discarded and the previous ones left as they were"
                f"{kept}{stale}"), 130
    if isinstance(exc, MemoryError):
        return ("out of memory; use a smaller --batch-size, input size or --calib-samples, or a machine with more "
                "memory"), 1
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"no space left on the device{where}; the unfinished output was removed and earlier results kept; "
                "free some space or give -o a path on another disk"), 1
    if isinstance(exc, OSError) and exc.errno in _NO_ACCESS:
        where = f" {exc.filename}" if exc.filename else ""
        return f"permission denied{where} ({exc.strerror}); give -o a path you can write, or fix the permissions", 2
    if isinstance(exc, OSError):
        where = f" on {exc.filename}" if exc.filename else ""
        return f"system error{where}: {exc.strerror or exc}; check the path and the disk", 1
    text = str(exc).strip().splitlines()
    first = text[0][:200] if text else ""
    return (f"internal error: {type(exc).__name__}: {first}; rerun with `repdeploy --debug ...` for the traceback "
            "and report it"), 1


def handle_errors(fn: Callable) -> Callable:
    """The error boundary of a command: every failure becomes one line on stderr and an exit code.

    Tracebacks appear only with `repdeploy --debug` (or REPDEPLOY_DEBUG=1).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors: click prints them with exit code 2
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - this is the boundary
            if DEBUG and not isinstance(exc, (KeyboardInterrupt, RepDeployError)):
                raise  # known errors stay one line; the unexpected ones are what a bug report needs
            message, code = describe_failure(exc)
            click.echo(f"error: {message}", err=True)
            sys.exit(code)

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
        kwargs["prep"] = dict(mean=_floats("--mean", prep_mean), std=_floats("--std", prep_std), resize=prep_resize)
        return fn(*args, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
