"""What every command shares: error reporting, logging, --json/--json-out, --quiet, renamed options.

The vocabulary every command follows is in docs/cli.md. Spellings used before it stay accepted
for one release as hidden aliases (`deprecated_alias`), with a note on stderr.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import sys
import warnings
from typing import Any, Callable

import click

from ..errors import RepDeployError
from ..progress import DATA_WARNING, LOGGER_NAME, disable_bars, enable_bars, set_quiet

#: The release in which the deprecated spellings stop being accepted.
ALIAS_REMOVAL = "0.3"


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
            ctx = click.get_current_context(silent=True)
            json_out = ctx.meta.get(_JSON_OUT_KEY) if ctx is not None else None
            if json_out:
                from ..io import ensure_writable_file

                ensure_writable_file(json_out)  # before the work, not after it
            with warnings.catch_warnings():
                # Library warnings (unstable timing, a layout on the wrong runtime) are shown as
                # they happen, as one `warning:` line; --quiet hides them with every other message.
                warnings.simplefilter("default")
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors: click prints them with exit code 2
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - this is the boundary
            if DEBUG and not isinstance(exc, (KeyboardInterrupt, RepDeployError)):
                raise  # known errors stay one line; the unexpected ones are what a bug report needs
            message, code = describe_failure(exc)
            click.echo(f"error: {message}", err=True)
            sys.exit(code)
        finally:
            # A command run in-process (click's test runner, main() called from Python) must not
            # leave the CLI's handler behind: library calls after it would print again.
            reset_logging()

    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    log_warning(str(message))


# ------------------------------------------------------------------------------ logging


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (click's test runner swaps it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


_handler: _StderrHandler | None = None


def configure_logging(quiet: bool) -> None:
    """Install the CLI's stderr handler on the `repdeploy` logger (library code only logs).

    Stage lines are INFO, library warnings WARNING; --quiet keeps errors only.
    """
    global _handler
    logger = logging.getLogger(LOGGER_NAME)
    if _handler is None:
        _handler = _StderrHandler()
        _handler.setFormatter(_Formatter())
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
    _handler.setLevel(DATA_WARNING if quiet else logging.INFO)  # quiet: errors and data warnings only
    set_quiet(quiet)
    if not quiet:
        logger.setLevel(logging.INFO)
    enable_bars()


def reset_logging() -> None:
    """Remove the CLI's handler and settings, leaving the `repdeploy` logger as a library's."""
    logger = logging.getLogger(LOGGER_NAME)
    if _handler is not None and _handler in logger.handlers:
        logger.removeHandler(_handler)
    set_quiet(False)
    logger.setLevel(logging.NOTSET)
    disable_bars()


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING and not message.startswith(("warning:", "note:")):
            message = f"warning: {message}"
        return message


def log_warning(message: str) -> None:
    """A warning for the user on stderr (silenced by --quiet)."""
    logging.getLogger(LOGGER_NAME).warning(message)


def quiet_option(fn: Callable) -> Callable:
    def set_it(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        configure_logging(value)
        return value

    return click.option(
        "--quiet", "-q", is_flag=True, expose_value=False, is_eager=True, callback=set_it,
        help="Print nothing but results and errors.",
    )(fn)


# ------------------------------------------------------------------------------ --json / --json-out

_JSON_OUT_KEY = "repdeploy.json_out"


def json_option(fn: Callable) -> Callable:
    """--json (print exactly one JSON object on stdout) and --json-out FILE (write it there)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, json_out: str | None, **kwargs: Any) -> Any:
        click.get_current_context().meta[_JSON_OUT_KEY] = json_out  # handle_errors checks it first
        return fn(*args, **kwargs)

    wrapper = click.option("--json-out", "json_out", type=click.Path(dir_okay=False), default=None,
                           help="Also write the JSON result to this file.")(wrapper)
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object on stdout instead of text.")(wrapper)


def to_json(record: Any) -> str:
    return json.dumps(record, indent=2, default=_default)


def emit(record: dict, as_json: bool, text: Callable[[dict], str] | None = None) -> None:
    """Print a result: one JSON object for machines, or readable lines for people.

    With --json-out the same JSON object is also written (atomically) to that file.
    """
    ctx = click.get_current_context(silent=True)
    json_out = ctx.meta.get(_JSON_OUT_KEY) if ctx is not None else None
    if json_out:
        from ..io import write_bytes_atomic

        write_bytes_atomic(json_out, (to_json(record) + "\n").encode())
    if as_json:
        click.echo(to_json(record))
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


# ------------------------------------------------------------------------------ renamed options


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
        kwargs["prep"] = dict(mean=_floats("--mean", prep_mean), std=_floats("--std", prep_std), resize=prep_resize)
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
