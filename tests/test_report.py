"""Report writers: json/csv/md agree with the records, and report.html is one self-contained page."""

import base64
import csv
import json
from html.parser import HTMLParser

from repdeploy.report import layer_diagnostics, plain_table, write_report

RECORDS = [
    {"name": "repvgg", "arch": "RepVGG-mini", "status": "PASSED", "fp32_top1": 95.5, "int8_top1": 94.25,
     "top1_drop": 1.25, "top1_agreement": 97.0, "sqnr_db": 21.5, "fp32_ms": 0.40, "int8_ms": 0.20, "speedup": 2.0,
     "fp32_top5": 99.0, "int8_top5": 99.0, "engine": "ort", "target": "ort",
     "diagnostics": {"layers": [{"layer": "stage0", "weight_std": 0.05, "weight_absmax": 0.9, "centre_share": 0.4, "sqnr_db": 30.0},
                                {"layer": "stage1.0", "weight_std": 0.03, "weight_absmax": 1.2, "centre_share": 0.5, "sqnr_db": 25.0}]}},
    {"name": "repopt", "arch": "RepOpt-VGG-mini", "status": "FAILED", "fp32_top1": 96.0, "int8_top1": 90.0,
     "top1_drop": 6.0, "speedup": 1.8, "fp32_ms": 0.36, "int8_ms": 0.2, "error": "top-1 drop 6.00 > max 2"},
    {"name": "broken", "arch": None, "status": "ERROR", "failed_stage": "load", "error": "broken.pth is not a checkpoint <b>"},
]


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.rows, self.text = [], [], 0, []
        self._in_models = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "table" and a.get("id") == "models":
            self._in_models = True
        if tag == "tr" and self._in_models:
            self.rows += 1
        if tag == "img":
            self.images.append(a["src"])
        if tag in ("script", "link"):
            raise AssertionError(f"external or active content: <{tag}>")

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_models = False

    def handle_data(self, data):
        self.text.append(data)


def test_all_four_files_written_and_consistent(tmp_path):
    paths = write_report(RECORDS, tmp_path, settings={"engine": "ort", "target": "ort", "max_drop": 2.0, "bench_batch": 1},
                         environment={"cpu": "test cpu"})
    doc = json.loads(paths.json.read_text())
    assert [m["name"] for m in doc["models"]] == ["repvgg", "repopt", "broken"]
    assert doc["settings"]["max_drop"] == 2.0 and doc["environment"]["cpu"] == "test cpu"

    rows = list(csv.DictReader(paths.csv.open()))
    assert rows[0]["int8_top1"] == "94.25" and rows[2]["failed_stage"] == "load" and rows[2]["fp32_top1"] == ""

    md = paths.md.read_text()
    assert "| repopt | RepOpt-VGG-mini | FAILED | - | - | 96.00 | 90.00 | +6.00 |" in md
    assert "broken.pth is not a checkpoint" in md

    page = PageParser()
    page.feed(paths.html.read_text())
    page.close()
    assert page.rows == 1 + 3  # header + one row per model
    # the scatter plot, the latency plot and one diagnostics plot (only repvgg has diagnostics), all embedded
    assert len(page.images) == 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    text = "".join(page.text)
    assert "broken.pth is not a checkpoint <b>" in text  # escaped, so it is text, not a tag
    assert "max top-1 drop2 pts" in text and "None" not in text  # readable settings, no raw dump


def test_readable_settings_and_shared_layer_scales():
    from repdeploy.report import readable_settings, sensitive_layers, shared_layer_limits

    rows = dict(readable_settings({"data": "builtin", "calib_data": None, "max_drop": None, "allow_mismatch": False,
                                   "duration": 1.0, "mean": [0.5, 0.5, 0.5], "qat": False, "qat_epochs": 2}))
    assert rows == {"evaluation data": "builtin", "calibration data": "train split of the evaluation data",
                    "allow mismatch": "no", "min. duration per model": "1 s", "mean": "0.5, 0.5, 0.5", "QAT": "no"}
    other = {"name": "repopt", "diagnostics": {"summary": {"most_sensitive_layers": ["stage1.0"]},
                                               "layers": [{"layer": "stage0", "sqnr_db": 40.0, "weight_std": 0.01}]}}
    limits = shared_layer_limits([RECORDS[0], other])
    lo, hi = limits["SQNR (dB)"]
    assert lo < 25.0 and hi > 40.0  # one axis spans both models' values
    assert sensitive_layers(other) == ["stage1.0"] and sensitive_layers(RECORDS[2]) == []


def test_no_plots_without_numbers(tmp_path):
    paths = write_report(RECORDS[2:], tmp_path)
    page = PageParser()
    page.feed(paths.html.read_text())
    assert page.images == [] and page.rows == 2


def test_plain_table_and_diagnostics_extraction():
    text = plain_table(RECORDS)
    lines = text.splitlines()
    assert lines[0].startswith("model") and "speed-up" in lines[0]
    assert "2.00x" in lines[2] and "-" in lines[4]
    assert "broken: ERROR at load: broken.pth is not a checkpoint" in text
    layers = layer_diagnostics(RECORDS[0])
    assert [row["layer"] for row in layers] == ["stage0", "stage1.0"] and layers[1]["sqnr_db"] == 25.0
    assert layer_diagnostics({"diagnostics": [{"name": "x", "sqnr_db": 1.0, "note": "text"}]}) == [{"layer": "x", "sqnr_db": 1.0}]


def test_scatter_plots_agreement_or_sqnr_when_top1_says_nothing():
    from repdeploy.report.plots import scatter_metric

    def rec(**kw):
        base = {"name": "m", "speedup": 3.0, "top1_drop": 0.5, "fp32_top1": 98.0, "num_classes": 10,
                "top1_agreement": 97.0, "sqnr_db": 25.0}
        return {**base, **kw}

    assert scatter_metric([rec(), rec(name="n")])[0] == "top1_drop"
    # planted: random-init 1000-class models at chance (0.1 %), and a run without labels
    assert scatter_metric([rec(), rec(fp32_top1=0.1, num_classes=1000)])[0] == "top1_agreement"
    assert scatter_metric([rec(top1_drop=None, fp32_top1=None)])[0] == "top1_agreement"
    assert scatter_metric([rec(top1_drop=None, fp32_top1=None, top1_agreement=None)])[0] == "sqnr_db"
    assert scatter_metric([rec(speedup=None)]) is None


def test_settings_state_the_counts_used_and_the_session_settings():
    from repdeploy.report import readable_settings

    spin = {"session.intra_op.spin_duration_us": "100"}
    records = [{"name": "a0", "calibration": {"samples": 64},
                "bench": [{"runner": {"session_config": spin}}, {"runner": {"session_config": spin}}]}]
    rows = dict(readable_settings({"calib_samples": 512}, records))
    assert rows["calibration images"] == "64 (512 requested)"  # the issue: 512 shown when 64 were used
    assert rows["ORT session settings (latency)"] == ("session.intra_op.spin_duration_us=100 "
                                                     "(the same for FP32 and INT8)")
    records[0]["bench"][0]["runner"]["session_config"] = {}  # planted: FP32 timed under ORT defaults
    assert "differs" in dict(readable_settings({}, records))["ORT session settings (latency)"]
    two = [{"name": "a", "calibration": {"samples": 512}}, {"name": "b", "calibration": {"samples": 64}}]
    assert dict(readable_settings({"calib_samples": 512}, two))["calibration images"] == "a 512, b 64 (512 requested)"
    assert dict(readable_settings({"calib_samples": 512}, two[:1]))["calibration images"] == "512"
