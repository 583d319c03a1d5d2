"""One vocabulary across commands (docs/cli.md): names, defaults, --json/--json-out, -q, aliases."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from repdeploy import defaults
from repdeploy.cli import main
from repdeploy.zoo import zoo_entry


def options(command: str) -> dict[str, click.Option]:
    """Visible options of a command by their long name."""
    out = {}
    for p in main.commands[command].params:
        if isinstance(p, click.Option) and not p.hidden:
            for o in p.opts:
                if o.startswith("--"):
                    out[o] = p
    return out


def test_the_same_thing_has_the_same_name_everywhere():
    retired = {"--data", "--val-data", "--limit", "--image-size", "--batch"}
    for name in main.commands:
        visible = set(options(name))
        assert not visible & retired, (name, visible & retired)
        assert "--json" in visible and "--json-out" in visible, name
        assert any(p.name == "quiet" or "-q" in getattr(p, "opts", ()) for p in main.commands[name].params), name
    for name in ("eval", "quantize", "pipeline", "qat", "train", "hypersearch"):
        assert "--eval-data" in options(name), name
    for name in ("eval", "quantize", "pipeline"):
        assert "--eval-limit" in options(name), name
    for name in ("eval", "qat", "train", "compare"):
        assert options(name)["--batch-size"].type is click.INT, name
    assert "--batches" in options("bench") and options("pipeline")["--batches"].type is click.INT
    assert "--samples" not in options("compare") and "--eval-limit" in options("compare")
    # --input-size wherever a model is built to be fed (D2se trained at 224 is not forced to 320)
    for name in ("export", "train", "hypersearch", "quantize", "qat", "pipeline", "eval"):
        assert options(name)["--input-size"].type is click.INT, name
    for name in ("quantize", "qat", "pipeline"):
        assert options(name)["--diagnostics"].default == defaults.DIAGNOSTICS, name
    assert options("qat")["--epochs"].default == options("pipeline")["--qat-epochs"].default == defaults.QAT_EPOCHS


def docs_cli() -> str:
    from pathlib import Path

    return (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()


def every_option() -> dict[str, dict[str, click.Option]]:
    """{--name: {command: option}} over every visible option of every command."""
    out: dict[str, dict[str, click.Option]] = {}
    for name in main.commands:
        for opt, param in options(name).items():
            out.setdefault(opt, {})[name] = param
    return out


def signature_of(param: click.Option) -> tuple:
    """What must agree between two commands' options of one name: the kind of value and the default."""
    kind = type(param.type).__name__
    if isinstance(param.type, click.Choice):
        kind = ("Choice", tuple(param.type.choices))
    elif isinstance(param.type, click.Path):
        kind = "Path"
    default = None if "Sentinel" in repr(param.default) or param.default is False else param.default
    return kind, param.is_flag, repr(default)


def test_every_option_is_written_in_docs_cli():
    doc = docs_cli()
    missing = sorted(o for o in every_option() if f"`{o}" not in doc)
    assert not missing, f"options not in docs/cli.md: {missing}"


def documented_differences() -> set[str]:
    doc = docs_cli()
    section = doc[doc.index("### Defaults that differ by command"):]
    section = section[: section.index("\n## ")]
    return {line.split("`")[1] for line in section.splitlines() if line.startswith("| `--")}


def test_one_name_has_one_type_and_one_default_except_where_docs_say_why():
    differing = {o for o, by in every_option().items() if len({signature_of(p) for p in by.values()}) > 1}
    documented = documented_differences()
    assert differing - documented == set(), f"options that differ between commands without a reason in docs/cli.md"
    assert documented - differing == set(), "docs/cli.md lists a difference that no longer exists"


def test_the_check_catches_a_planted_divergence(monkeypatch):
    """A command whose --calib-samples default drifts, or an undocumented option, fails the checks."""
    param = options("qat")["--calib-samples"]
    monkeypatch.setattr(param, "default", 256)
    differing = {o for o, by in every_option().items() if len({signature_of(p) for p in by.values()}) > 1}
    assert "--calib-samples" in differing - documented_differences()
    monkeypatch.setattr(param, "default", defaults.CALIB_SAMPLES)
    monkeypatch.setattr(param, "opts", ["--calibration-samples"])
    assert "--calibration-samples" in every_option() and "`--calibration-samples" not in docs_cli()


def test_python_functions_default_as_their_commands_do():
    import inspect

    import dataclasses

    from repdeploy.pipeline import PipelineSettings
    from repdeploy.quant.settings import QatSettings, QuantizeSettings

    # quantize, qat and pipeline take one settings record each: its fields' defaults are the API's
    for command, record, renamed in (("quantize", QuantizeSettings, {}), ("qat", QatSettings, {"eval_data": "val_data"}),
                                     ("pipeline", PipelineSettings, {"eval_data": "data"})):
        signature = {f.name: f for f in dataclasses.fields(record)}
        checked = 0
        for param in main.commands[command].params:
            name = renamed.get(param.name, param.name)
            if not isinstance(param, click.Option) or param.hidden or name not in signature:
                continue
            if signature[name].default is dataclasses.MISSING:  # a factory (load_kwargs): nothing to agree on
                continue
            api = signature[name].default
            cli = None if "Sentinel" in repr(param.default) else param.default
            if param.is_flag and cli is None:
                cli = False
            assert api == cli or (api is None and cli is None), (command, name, api, cli)
            checked += 1
        assert checked >= 8, (command, checked)


def test_one_defaults_module_feeds_every_command():
    for name in ("quantize", "pipeline", "qat"):
        assert options(name)["--calib-samples"].default == defaults.CALIB_SAMPLES, name
    for name in ("bench", "pipeline"):
        o = options(name)
        assert (o["--warmup"].default, o["--duration"].default, o["--iterations"].default) == (
            defaults.BENCH_WARMUP_S, defaults.BENCH_DURATION_S, defaults.BENCH_ITERATIONS), name
    import importlib
    import inspect

    bench, pipeline = importlib.import_module("repdeploy.bench"), importlib.import_module("repdeploy.pipeline")
    ptq, qat = importlib.import_module("repdeploy.quant.ptq"), importlib.import_module("repdeploy.quant.qat")

    assert ptq.QuantizeSettings().calib_samples == defaults.CALIB_SAMPLES
    assert qat.QatSettings().calib_samples == defaults.CALIB_SAMPLES
    assert pipeline.PipelineSettings().calib_samples == defaults.CALIB_SAMPLES
    assert bench.BenchSettings().duration == defaults.BENCH_DURATION_S


@pytest.fixture(scope="module")
def int8_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("q")
    r = CliRunner().invoke(main, ["quantize", str(zoo_entry("repvgg").file), "--calib-data", "builtin",
                                  "--calib-samples", "32", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    return out / "model_int8_ort.onnx"


def test_old_spellings_still_work_with_a_deprecation_note(int8_onnx):
    runner = CliRunner()
    new = runner.invoke(main, ["eval", str(int8_onnx), "--eval-data", "builtin", "--eval-limit", "50", "--json"])
    old = runner.invoke(main, ["eval", str(int8_onnx), "--data", "builtin", "--limit", "50", "--json"])
    assert new.exit_code == old.exit_code == 0, old.output
    a, b = json.loads(old.stdout), json.loads(new.stdout)
    a.pop("seconds"), b.pop("seconds")
    assert a == b and b["images"] == 50
    assert "--data is deprecated" in old.stderr and "use --eval-data" in old.stderr
    assert "--limit is deprecated" in old.stderr and "deprecated" not in new.stderr
    # The old name is hidden from --help, and giving both names with different values is refused.
    assert "--limit" not in runner.invoke(main, ["eval", "--help"]).stdout.replace("--eval-limit", "")
    both = runner.invoke(main, ["eval", str(int8_onnx), "--eval-limit", "10", "--limit", "20"])
    assert both.exit_code == 2 and "give only --eval-limit" in both.stderr


def test_json_is_one_object_on_stdout_and_json_out_writes_it(int8_onnx, tmp_path):
    runner = CliRunner()
    out = tmp_path / "inspect.json"
    r = runner.invoke(main, ["inspect", str(int8_onnx), "--json", "--json-out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == json.loads(out.read_text())
    b = runner.invoke(main, ["bench", str(int8_onnx), "--json", "--quiet", "--warmup", "0", "--duration", "0",
                             "--iterations", "3"])
    assert b.exit_code == 0, b.output
    doc = json.loads(b.stdout)  # the whole stdout is one JSON object
    assert doc["verdict"] == "PASSED" and doc["results"][0]["stats"]["count"] >= 3
    assert not (tmp_path / "--quiet").exists() and b.stderr == ""  # -q: results and errors only


def test_bench_old_json_file_form_still_writes_the_file(int8_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["bench", str(int8_onnx), "--batch", "2", "--json", "old.json", "--warmup", "0",
                                  "--duration", "0", "--iterations", "3"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "old.json").read_text())
    assert doc["results"][0]["batch"] == 2
    assert "use --json-out FILE" in r.stderr and "--batch is deprecated" in r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("&&&& PASSED")


def test_quiet_silences_stage_lines_and_warnings_but_not_errors(int8_onnx, tmp_path):
    runner = CliRunner()
    args = ["bench", str(int8_onnx), "--warmup", "0", "--duration", "0", "--iterations", "3", "--batch", "1"]
    loud, quiet = runner.invoke(main, args), runner.invoke(main, [*args, "-q"])
    assert loud.exit_code == quiet.exit_code == 0
    assert "bench 1 model(s)" in loud.stderr and "--batch is deprecated" in loud.stderr and quiet.stderr == ""
    assert "&&&& PASSED" in quiet.stdout and "p99" in quiet.stdout  # results stay
    bad = runner.invoke(main, ["eval", str(tmp_path / "missing.onnx"), "-q"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ")


def test_pipeline_report_names_the_calibration_method_it_defaults_to(tmp_path):
    """report.json/.md/.html said `calib_method: None` when the default (entropy) was used."""
    from repdeploy.pipeline import run_pipeline

    result = run_pipeline([str(tmp_path / "missing.pth")], output_dir=tmp_path / "run")  # fails fast, still reports
    assert result.rows[0].status == "ERROR"
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    assert doc["settings"]["calib_method"] == defaults.CALIB_METHOD
    assert doc["settings"]["calib_samples"] == defaults.CALIB_SAMPLES


def test_json_out_to_a_bad_place_is_one_line_and_the_cli_leaves_no_handler(int8_onnx, tmp_path, capsys):
    import logging

    from repdeploy.progress import status

    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(main, ["inspect", str(int8_onnx), "--json-out", str(tmp_path / "file" / "out.json")])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.output
    # After a command ran in-process, library messages are a library's again: logged, not printed.
    capsys.readouterr()
    status("a library stage line")
    assert capsys.readouterr().err == ""
    assert logging.getLogger("repdeploy").handlers == []


def test_input_size_feeds_the_model_at_that_size(tmp_path):
    """quantize --input-size: the model is calibrated, verified and recorded at that size."""
    r = CliRunner().invoke(main, ["quantize", str(zoo_entry("repvgg").file), "--calib-data", "builtin",
                                  "--calib-samples", "16", "--input-size", "48", "--diagnostics", "off",
                                  "-o", str(tmp_path), "--json", "-q"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["arch"]["input_size"] == 48 and report["preprocessing"]["input_size"] == 48
    assert report["diagnostics"] == {"mode": "off", "images": 0} and report["layers"] == []
    import repdeploy

    assert repdeploy.load_fused(tmp_path / "fused.pt").plain.spec.input_size == 48
    bad = CliRunner().invoke(main, ["quantize", str(zoo_entry("repvgg").file), "--input-size", "0",
                                    "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--input-size" in bad.stderr
    # eval builds the checkpoint's model at that size too, and feeds the data at it
    ev = CliRunner().invoke(main, ["eval", str(zoo_entry("repvgg").file), "--engine", "torch", "--input-size", "48",
                                   "--eval-limit", "20", "--json", "-q"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["preprocessing"]["input_size"] == 48
    graph = CliRunner().invoke(main, ["eval", str(tmp_path / "model_int8_ort.onnx"), "--input-size", "64"])
    assert graph.exit_code == 2 and "export the checkpoint again" in graph.stderr


def test_renamed_options_keep_their_old_spelling_for_a_release(int8_onnx):
    runner = CliRunner()
    fp32 = int8_onnx.parent / "model_fp32.onnx"
    new = runner.invoke(main, ["compare", str(fp32), str(int8_onnx), "--eval-limit", "4", "--atol", "10",
                               "--rtol", "10", "--json"])
    old = runner.invoke(main, ["compare", str(fp32), str(int8_onnx), "--samples", "4", "--atol", "10",
                               "--rtol", "10", "--json"])
    assert new.exit_code == old.exit_code == 0, old.output
    assert json.loads(new.stdout)["images"] == json.loads(old.stdout)["images"] == 4
    assert "--samples is deprecated" in old.stderr and "use --eval-limit" in old.stderr
