"""The pipeline end to end on two small models plus a broken file, and the accuracy gate."""

import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import torch

from conftest import trained_like
from repdeploy.pipeline import ModelRow, PipelineResult, PipelineSettings, _gate, run_pipeline

FAST = dict(calib_samples=32, eval_limit=120, warmup=0.0, duration=0.0, iterations=3)
RUN_FILES = {"manifest.json", "fused.pt", "model_fp32.onnx", "model_int8_ort.onnx", "calib.json", "report.json"}
ROW_FIELDS = ("fp32_top1", "fp32_top5", "int8_top1", "int8_top5", "top1_drop", "top1_agreement", "sqnr_db",
              "fp32_ms", "int8_ms", "speedup")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    torch.save(trained_like("RepVGG-mini", seed=1).state_dict(), d / "repvgg_mini.pth")
    torch.save(trained_like("RepOpt-VGG-mini", "target", seed=2).state_dict(), d / "repopt_mini.pth")
    (d / "broken.pth").write_bytes(b"\x00 this is not a checkpoint")
    return [d / "repvgg_mini.pth", d / "broken.pth", d / "repopt_mini.pth"]


@pytest.fixture(scope="module")
def result(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return run_pipeline(checkpoints, output_dir=out, max_drop=100.0, command="test", **FAST)


def test_every_artifact_and_field_for_the_good_models(result):
    by_name = {r.name: r for r in result.rows}
    assert list(by_name) == ["repvgg_mini", "broken", "repopt_mini"]
    for name, arch in (("repvgg_mini", "RepVGG-mini"), ("repopt_mini", "RepOpt-VGG-mini")):
        row = by_name[name]
        assert row.status == "PASSED", row.error
        assert row.arch == arch
        run = result.output_dir / name
        assert RUN_FILES <= {p.name for p in run.iterdir()}
        assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no scratch or partial files left
        record = json.loads((run / "report.json").read_text())
        for key in ROW_FIELDS:
            assert isinstance(record[key], float), key
        assert record["top1_drop"] == pytest.approx(record["fp32_top1"] - record["int8_top1"])
        assert record["speedup"] == pytest.approx(record["fp32_ms"] / record["int8_ms"])
        assert [b["precision"] for b in record["bench"]] == ["fp32", "int8"] and record["bench"][0]["stats"]["count"] >= 3
        assert record["diagnostics"]["layers"] and "sqnr_db" in record["diagnostics"]["layers"][0]
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["command"] == "test" and len(manifest["input"]["sha256"]) == 64
        assert manifest["detected"]["variant"] == arch and manifest["settings"]["max_drop"] == 100.0
        assert set(manifest["timings"]) == {"load", "export", "quantize", "evaluate", "benchmark"}


def test_broken_checkpoint_is_reported_and_others_finish(result):
    broken = next(r for r in result.rows if r.name == "broken")
    assert broken.status == "ERROR" and broken.failed_stage == "load"
    assert "broken.pth" in broken.error and broken.exit_code == 2
    assert {p.name for p in (result.output_dir / "broken").iterdir()} == {"manifest.json", "report.json"}
    assert result.exit_code == 2  # no gate failure: the first error's code


def test_report_files_and_html(result):
    doc = json.loads(result.report.json.read_text())
    assert [m["name"] for m in doc["models"]] == ["repvgg_mini", "broken", "repopt_mini"]
    assert doc["environment"]["onnxruntime"] and doc["settings"]["engine"] == "ort"
    assert result.report.csv.read_text().count("\n") == 4
    assert "| broken | - | ERROR |" in result.report.md.read_text()

    class Page(HTMLParser):
        images, cells = [], []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs)["src"])

        def handle_data(self, data):
            self.cells.append(data.strip())

    page = Page()
    page.feed(result.report.html.read_text())
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert len(page.images) == 3  # drop vs speed-up, and per-layer diagnostics for each good model
    assert "repopt_mini" in page.cells and "ERROR" in page.cells


def test_gate_marks_failed_and_exit_code_3():
    s = PipelineSettings(max_drop=1.0)
    over = ModelRow("a", "a.pth", "a", top1_drop=1.5)
    under = ModelRow("b", "b.pth", "b", top1_drop=1.0)
    _gate(over, s)
    _gate(under, s)
    assert over.status == "FAILED" and "1.50 points > --max-drop 1" in over.error
    assert under.status == "PASSED" and under.error is None
    broken = ModelRow("c", "c.pth", "c", status="ERROR", exit_code=2)
    assert PipelineResult(None, [under, broken], None, s).exit_code == 2
    assert PipelineResult(None, [under, broken, over], None, s).exit_code == 3
    assert PipelineResult(None, [under], None, s).exit_code == 0


def test_cli_writes_everything_then_exits_with_the_gate(checkpoints, tmp_path):
    # --max-drop 0 fails a model exactly when INT8 lost any top-1 point; the exit code must follow
    r = subprocess.run([sys.executable, "-m", "repdeploy", "pipeline", str(checkpoints[0]), "-o", str(tmp_path),
                        "--max-drop", "0", "--calib-samples", "32", "--eval-limit", "120", "--warmup", "0",
                        "--duration", "0", "--iterations", "3"], capture_output=True, text=True)
    doc = json.loads((tmp_path / "report.json").read_text())
    row = doc["models"][0]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "repvgg_mini" / "model_int8_ort.onnx").is_file()
    expected = 3 if row["top1_drop"] > 0 else 0
    assert r.returncode == expected, r.stderr
    assert row["status"] == ("FAILED" if expected else "PASSED")
    assert "FP32 top-1 %" in r.stdout and "repvgg_mini" in r.stdout  # the plain table (not a tty)
    assert "repvgg_mini: quantize" in r.stderr  # one progress line per stage
