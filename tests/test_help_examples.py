"""Every example line of every command's --help parses, uses the current option names, and the
cheap ones run, as copied, against the built-in zoo in a temporary directory.

The sandbox stands in for a user's working directory: `ckpt.pth`, `repvgg.pth`, `repopt.pth`,
`scales.pth` are the zoo's files, `ckpt.pth.tar` a training checkpoint (model + EMA) of the
zoo's weights, `calib/`, `val/`, `train/` small image folders of the built-in digits, and
`runs/demo/` what `repdeploy quantize --int8 -o runs/demo` writes for the zoo (so the
whole-zoo quantize example has run, with fewer calibration images). Examples whose inputs are
not there (a full-size RepVGG-A0 file, ImageNet) and commands that train (train, hypersearch,
qat, pipeline) are only parsed.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from repdeploy.cli import main
from repdeploy.models import get_spec

RUN = {"inspect", "fuse", "export", "eval", "bench", "quantize", "doctor", "package"}
INPUTS = ("checkpoint", "model", "models", "calib_data", "eval_data", "calib_cache", "train_data")
EXAMPLE = re.compile(r"^\s+((?:torchrun\s.*?-m\s+)?repdeploy\s.*)$")


def help_examples() -> list[tuple[str, str]]:
    """(command whose --help shows it, example line) for every example of every command."""
    found = []
    group_ctx = click.Context(main, info_name="repdeploy")
    for name, command in [("repdeploy", main), *sorted(main.commands.items())]:
        ctx = group_ctx if command is main else click.Context(command, info_name=name, parent=group_ctx)
        lines = command.get_help(ctx).splitlines()
        for i, line in enumerate(lines):
            m = EXAMPLE.match(line)
            if m:
                text = m.group(1)
                while text.endswith("\\") and i + 1 < len(lines):  # a shell line continuation
                    i += 1
                    text = text[:-1] + " " + lines[i].strip()
                found.append((name, text))
    return found


def split(line: str) -> tuple[list[str], str]:
    """The argv after `repdeploy`, and the example's trailing comment."""
    comment = line.split("#", 1)[1].strip() if "#" in line else ""
    argv = shlex.split(line, comments=True)
    return argv[argv.index("repdeploy") + 1:], comment


def parse(argv: list[str]) -> tuple[click.Command, click.Context]:
    command = main.commands[argv[0]]
    ctx = command.make_context(argv[0], list(argv[1:]), parent=click.Context(main, info_name="repdeploy"))
    return command, ctx


def test_every_command_has_examples_and_they_parse_with_current_names():
    examples = help_examples()
    commands_with_examples = {name for name, _ in examples}
    assert set(main.commands) <= commands_with_examples, set(main.commands) - commands_with_examples
    for name, line in examples:
        argv, _ = split(line)
        command, ctx = parse(argv)  # raises click.UsageError/BadParameter if it does not parse
        visible = {o for p in command.params if not getattr(p, "hidden", False) for o in p.opts + p.secondary_opts}
        for token in argv[1:]:
            if token.startswith("-") and token not in ("-", "--"):
                assert token.split("=")[0] in visible, f"{name} --help example uses {token}, not a current option: {line}"
        arch = ctx.params.get("arch")
        if arch:
            spec = get_spec(arch)  # a named variant must exist
            if argv[0] == "hypersearch":
                assert spec.family == "repopt", f"hypersearch --help suggests {arch}, which it refuses: {line}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    from repdeploy import save_fused, fuse
    from repdeploy.zoo import builtin_zoo, zoo_entry

    root = tmp_path_factory.mktemp("user")
    repvgg, repopt = zoo_entry("repvgg").file, zoo_entry("repopt").file
    for name, source in [("ckpt.pth", repvgg), ("repvgg.pth", repvgg), ("repopt.pth", repopt)]:
        shutil.copy(source, root / name)
    shutil.copy(Path(repopt).with_name("repoptvgg_mini_scales.pth"), root / "scales.pth")
    weights = torch.load(repvgg, weights_only=True)
    torch.save({"model": weights, "ema": weights, "epoch": 30}, root / "ckpt.pth.tar")
    from repdeploy import load

    save_fused(fuse(load(root / "ckpt.pth").model).plain, root / "fused.pt")
    digits = np.load(Path(__import__("repdeploy").__file__).parent / "assets" / "digits.npz")
    for folder, split_name, per_class in [("calib", "train", 4), ("train", "train", 4), ("val", "val", 6)]:
        images, labels = digits[f"{split_name}_images"], digits[f"{split_name}_labels"]
        for c in range(10):
            (root / folder / str(c)).mkdir(parents=True)
            for i, idx in enumerate(np.flatnonzero(labels == c)[:per_class]):
                Image.fromarray(images[idx]).save(root / folder / str(c) / f"{i}.png")
    runner = CliRunner()
    import repdeploy.zoo

    small = [e for e in builtin_zoo() if e.input_size <= 32]  # the A0-width speed model is the demo's, not a test's
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(repdeploy.zoo, "builtin_zoo", lambda zoo="default": small)
        r = runner.invoke(main, ["quantize", "--int8", "--calib-samples", "64", "-o", str(root / "runs" / "demo"), "-q"])
    assert r.exit_code == 0, r.output
    assert {e.name for e in small} <= {p.name for p in (root / "runs" / "demo").iterdir()}
    return root


def _inputs_present(ctx: click.Context) -> bool:
    for key in INPUTS:
        value = ctx.params.get(key)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if v is not None and str(v) != "builtin" and not Path(v).exists():
                return False
    return True


def test_cheap_help_examples_run_as_copied(sandbox, monkeypatch):
    from repdeploy.export.tensorrt import import_tensorrt
    from repdeploy import BackendMissingError

    try:
        import_tensorrt()
        have_trt = True
    except BackendMissingError:
        have_trt = False
    monkeypatch.chdir(sandbox)
    ran, parsed_only = [], []
    for name, line in help_examples():
        argv, comment = split(line)
        if argv[0] not in RUN or line.startswith("torchrun"):
            parsed_only.append(line)
            continue
        _, ctx = parse(argv)
        if argv[0] == "quantize" and ctx.params.get("checkpoint") is None:
            parsed_only.append(line)  # the whole zoo with 512-image calibration: the sandbox setup ran it already
            continue
        if not _inputs_present(ctx):
            parsed_only.append(line)
            continue
        needs_trt = "TensorRT" in comment or "--format trt" in line or "--engine trt" in line
        needs_gpu = needs_trt or "--device cuda" in line
        if needs_gpu and (have_trt or torch.cuda.is_available()):
            parsed_only.append(line)  # no GPU run here; the point is the exit code when it is absent
            continue
        r = CliRunner().invoke(main, argv)
        expected = 4 if needs_gpu else 0
        assert r.exit_code == expected, f"`{line}` (from {name} --help) exited {r.exit_code}:\n{r.output}\n{r.stderr}"
        if "--json" in argv:
            import json

            json.loads(r.stdout)  # exactly one JSON object on stdout
        ran.append(line)
    # The run is not vacuous: every command in RUN had at least one example that ran.
    assert {split(line)[0][0] for line in ran} == RUN, (ran, parsed_only)
    assert len(ran) >= 12, (ran, parsed_only)
