"""What every command shares: the error boundary, logging, --json/--json-out, --quiet.

The vocabulary every command follows is in docs/cli.md; the options several commands share are
cli/options.py's.
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

