"""What every command shares: error reporting, logging, --json/--json-out, --quiet, renamed options.

The vocabulary every command follows is in docs/cli.md. Spellings used before it stay accepted
for one release as hidden aliases (`deprecated_alias`), with a note on stderr.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from ..errors import RepDeployError
from ..failures import describe_failure  # noqa: F401 - the boundary's wording, re-exported for the commands
from ..progress import DATA_WARNING, LOGGER_NAME, disable_bars, enable_bars, set_quiet

#: The release in which the deprecated spellings stop being accepted.
ALIAS_REMOVAL = "0.3"


#: Set by `repdeploy --debug` (or REPDEPLOY_DEBUG=1): unexpected errors show their traceback.
DEBUG = bool(os.environ.get("REPDEPLOY_DEBUG"))

def handle_errors(fn: Callable) -> Callable:
    """The error boundary of a command: every failure becomes one line on stderr and an exit code.

    With --json the same failure is also one JSON object on stdout (`{"error": ..., "exit_code": ...}`),
    so a caller that parses stdout always gets JSON. Output directories the failed command created
    are removed when still empty. Tracebacks appear only with `repdeploy --debug` (or REPDEPLOY_DEBUG=1).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..failures import remove_if_empty, restore_interrupt
        from ..ledger import created_dirs, recording

        restore_interrupt()  # from here on Ctrl-C unwinds, so staged outputs are discarded
        command = recording()  # what this command kept and created (ledger.py); forgotten when it ends
        command.__enter__()
        ctx = click.get_current_context(silent=True)
        if ctx is not None and kwargs.get("as_json") is True:
            ctx.meta[_AS_JSON_KEY] = True
        try:
            json_out = ctx.meta.get(_JSON_OUT_KEY) if ctx is not None else None
            if json_out:
                check_json_out(json_out)  # before the work, not after it
            with warnings.catch_warnings():
                # Library warnings (unstable timing, a layout on the wrong runtime) are shown as
                # they happen, as one `warning:` line; --quiet hides them with every other message.
                warnings.simplefilter("default")
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors: click prints them with exit code 2
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - this is the boundary
            remove_if_empty(created_dirs())
            if DEBUG and not isinstance(exc, (KeyboardInterrupt, RepDeployError)):
                raise  # known errors stay one line; the unexpected ones are what a bug report needs
            message, code = describe_failure(exc)
            fail(message, code)
        finally:
            # A command run in-process (click's test runner, main() called from Python) must not
            # leave the CLI's handler behind: library calls after it would print again.
            reset_logging()
            command.__exit__(None, None, None)

    return wrapper


def fail(message: str, code: int) -> None:
    """Print one `error:` line (and, with --json, one JSON error object on stdout) and exit."""
    ctx = click.get_current_context(silent=True)
    wants_json = ctx is not None and (ctx.meta.get(_AS_JSON_KEY) or ctx.params.get("as_json") is True)
    if wants_json and not ctx.meta.get(_EMITTED_KEY):
        click.echo(to_json({"error": message, "exit_code": code}))
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def command_inputs(ctx: click.Context) -> list[str]:
    """Every parameter value of the running command that names an existing file or directory,
    outputs aside: what an output must never replace."""
    found: list[str] = []
    for name, value in ctx.params.items():
        if name in ("output", "json_out"):
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, str) and v and os.path.exists(v):
                found.append(v)
    return found


def check_json_out(json_out: str) -> None:
    """--json-out must be a writable regular file that is neither an input nor the -o output."""
    from ..errors import OutputError
    from ..io import ensure_writable_file
    from ..rundir import refuse_overwriting_inputs

    ensure_writable_file(json_out)
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    try:
        refuse_overwriting_inputs(command_inputs(ctx), files=[json_out])
    except OutputError as exc:
        raise OutputError(str(exc).replace("give -o another path", "give --json-out another path")) from None
    from ..rundir import refuse_other_kind

    refuse_other_kind(json_out, "json", "--json-out")
    output = ctx.params.get("output")
    if isinstance(output, str) and output:
        out, js = Path(output), Path(json_out)
        if out.resolve() == js.resolve() or js.resolve().is_relative_to(out.resolve()):
            raise OutputError(f"--json-out {json_out} is the -o output {output} (or inside it); give --json-out a "
                              "path of its own")


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
_AS_JSON_KEY = "repdeploy.as_json"
_EMITTED_KEY = "repdeploy.emitted"


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
    """Strict JSON: a NaN or Inf that reached a record is written as null, never as the invalid `NaN`."""
    from ..io import finite_json

    return json.dumps(finite_json(record), indent=2, default=_default, allow_nan=False)


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
        if ctx is not None:
            ctx.meta[_EMITTED_KEY] = True  # one JSON object on stdout: a later failure adds no second
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
