"""The `repdeploy` command line: thin commands over the Python API.

Each module in this package registers the commands of one area of the data flow; the group
here only wires them up, so `repdeploy --help` stays fast (heavy imports happen per command).
The areas are registered on the first look at the commands, so `repdeploy --version` imports
click and nothing else (some option declarations import torch-side modules).
"""

from __future__ import annotations

import click

from ..version import __version__


class _Main(click.Group):
    """The command group: imports its command modules when its commands are first looked at
    (so `--version` loads no torch), and under `--json` a usage error is also one JSON object on stdout."""

    _registered = False

    @property
    def commands(self) -> dict:
        if not self._registered:
            self._registered = True
            _register(self)
        return self._commands

    @commands.setter
    def commands(self, value: dict) -> None:
        self._commands = value

    def invoke(self, ctx: click.Context):
        wants_json = "--json" in ctx.args  # read now: invoking the command consumes them
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if wants_json:
                import json

                click.echo(json.dumps({"error": exc.format_message(), "exit_code": exc.exit_code}, indent=2))
            raise  # click prints the usage and exits 2


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="repdeploy")
@click.option("--debug", is_flag=True, help="Show the traceback of unexpected errors (for bug reports).")
def main(debug: bool) -> None:
    """repdeploy: RepVGG-family checkpoints to verified INT8 deployments.

    \b
    Quick start:
      repdeploy inspect ckpt.pth
      repdeploy quantize ckpt.pth --int8 --calib-data calib/ --eval-data val/ -o out/
      repdeploy pipeline -o runs/demo          # the built-in zoo, end to end

    Exit codes: 0 ok, 1 runtime error, 2 bad input or usage, 3 accuracy gate failed,
    4 backend or hardware missing.
    """
    if debug:
        from . import common

        common.DEBUG = True


def _register(group: click.Group) -> None:
    import importlib

    for area in ("core", "train", "quant", "run", "pipeline", "qat", "compare", "package", "doctor"):
        try:
            module = importlib.import_module(f"{__name__}.{area}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{area}":
                continue  # that area is not part of this build yet
            raise
        for command in module.COMMANDS:
            group.add_command(command)
