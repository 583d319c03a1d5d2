"""The torch-free serving runtime (repdeploy.serving), the metadata every ONNX carries, preprocessing
inside the graph, and the lazy package facade.

The same check `make serving-check` runs in a venv without torch runs here with torch, onnx,
click, rich and matplotlib blocked from importing (tools/serving_check.py).
"""

import importlib.util
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from repdeploy.cli import main
from repdeploy import DataError, InputError, Preprocessing, preprocessing_of
from repdeploy.metadata import onnx_metadata, stamp
from repdeploy.recorded import class_names_of
from repdeploy.zoo import builtin_zoo

ROOT = Path(__file__).resolve().parents[1]


def _restamp(path: Path, record: Preprocessing) -> None:
    """Record another preprocessing in an ONNX file, through the one metadata writer."""
    import onnx

    model = onnx.load(str(path))
    stamp(model, preprocessing=record)
    onnx.save(model, str(path))
ZOO = {e.name: e.file for e in builtin_zoo()}
DIGITS = [str(i) for i in range(10)]


def _tool():
    spec = importlib.util.spec_from_file_location("serving_check", ROOT / "tools" / "serving_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A zoo model quantized (ort, plus its uint8-nhwc copy), 60 labelled JPEGs, eval's answers."""
    work = tmp_path_factory.mktemp("serving")
    return work, _tool().prepare(work)


def test_runtime_with_torch_blocked_matches_eval_image_by_image(prepared):
    work, ready = prepared
    tool = _tool()
    served = tool.classify(sys.executable, ready["models"], ready["files"], work)
    assert served["loaded"] == []  # nothing blocked was even tried
    for model in ready["models"]:
        got = served[model]["top1"]
        assert got == ready["ort_top1"], model
        top1 = 100.0 * np.mean(np.array(got) == np.array(ready["labels"]))
        assert top1 == pytest.approx(ready["eval_top1"], abs=1e-9) and top1 > 90
        assert served[model]["names"] == [DIGITS[i] for i in got]
        assert served[model]["bytes_top1"] == got[0]
    # planted fault: the record says other statistics, and the runtime no longer agrees with eval
    broken = work / "broken.onnx"
    broken.write_bytes(Path(ready["models"][0]).read_bytes())
    record = preprocessing_of(broken)
    _restamp(broken, Preprocessing(record.input_size, record.resize, (0.9,) * 3, (0.1,) * 3))
    assert tool.classify(sys.executable, [str(broken)], ready["files"], work)[str(broken)]["top1"] != ready["ort_top1"]


def test_every_onnx_tells_its_precision_preprocessing_and_class_names(prepared, tmp_path):
    work, ready = prepared
    r = cli("export", ZOO["repvgg_mini"], "-o", tmp_path / "fp16.onnx", "--precision", "fp16")
    assert r.exit_code == 0, r.output
    int8 = Path(ready["models"][0])
    # the tensorrt layout from the same ranges, written as quantize writes it (export_qdq)
    from repdeploy import load_fused
    from repdeploy.export.qdq import export_qdq
    from repdeploy.quant import QuantPlainNet
    from repdeploy.quant.calib_cache import CalibrationCache

    qnet = QuantPlainNet(load_fused(int8.parent / "fused.pt").plain, "tensorrt")
    qnet.load_ranges(CalibrationCache.load(int8.parent / "calib.json").amax)
    (tmp_path / "trt").mkdir()
    export_qdq(qnet, int8.parent / "model_fp32.onnx", tmp_path / "trt" / "model_int8_tensorrt.onnx")
    files = {int8.parent / "model_fp32.onnx": "fp32", tmp_path / "fp16.onnx": "fp16", int8: "int8-ort",
             tmp_path / "trt" / "model_int8_tensorrt.onnx": "int8-tensorrt", Path(ready["models"][1]): "int8-ort"}
    import onnx

    for path, precision in files.items():
        meta = onnx_metadata(path)
        # the hand-written reader (no onnx package in a service) reads what onnx itself reads
        assert meta == {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        assert meta["repdeploy.precision"] == precision, path
        assert class_names_of(path) == DIGITS, path
        assert preprocessing_of(path) is not None, path
    assert onnx_metadata(Path(ready["models"][1]))["repdeploy.input_format"] == "uint8-nhwc"
    assert onnx_metadata(int8)["repdeploy.input_format"] == "float"


def test_labels_file_names_the_classes_and_a_wrong_one_is_refused(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    r = cli("export", ZOO["repvgg_mini"], "-o", tmp_path / "m.onnx", "--labels", labels)
    assert r.exit_code == 0, r.output
    assert class_names_of(tmp_path / "m.onnx") == [f"digit {i}" for i in range(10)]
    labels.write_text("cat\ndog\n")
    r = cli("export", ZOO["repvgg_mini"], "-o", tmp_path / "bad.onnx", "--labels", labels)
    assert r.exit_code == 2 and "names 2 classes but the model predicts 10" in r.output
    assert not (tmp_path / "bad.onnx").exists()


def test_in_graph_preprocessing_equals_host_and_a_wrong_graph_fails(prepared, tmp_path):
    from repdeploy.ingraph import check_pixel_input, write_checked, write_pixel_input

    work, ready = prepared
    int8 = Path(ready["models"][0])
    record = preprocessing_of(int8)
    for fmt in ("uint8-nhwc", "uint8-nchw"):
        for source in (int8.parent / "model_fp32.onnx", int8):
            verdict = write_checked(source, tmp_path / f"{fmt}.onnx", record, fmt)
            assert verdict.passed and verdict.max_abs_diff == 0.0, verdict.line()  # the same float ops
    import repdeploy
    from repdeploy import load_fused
    from repdeploy.tolerance import tolerance

    fp16 = repdeploy.export_onnx(load_fused(ZOO["repvgg_mini"]).plain, tmp_path / "fp16.onnx", input_size=32,
                                 precision="fp16", preprocessing=record)
    verdict = write_checked(fp16, tmp_path / "fp16_uint8.onnx", record, "uint8-nhwc")
    assert verdict.passed and verdict.tolerance == tolerance("ort_fp16").max_rel, verdict.line()
    # planted fault: the graph normalises with another mean than the host
    wrong = Preprocessing(record.input_size, record.resize, (0.5,) * 3, record.std)
    write_pixel_input(int8, tmp_path / "wrong.onnx", wrong, "uint8-nhwc")
    _restamp(tmp_path / "wrong.onnx", record)
    verdict = check_pixel_input(int8, tmp_path / "wrong.onnx", record)
    assert not verdict.passed and "input_uint8_nhwc" in verdict.line()
    # 16-bit pixels cannot come in as uint8
    with pytest.raises(InputError, match="8-bit pixels"):
        write_pixel_input(int8, tmp_path / "x.onnx", Preprocessing(32, 32, (0.5,) * 3, (0.5,) * 3,
                                                                   value_range=(0.0, 65535.0)), "uint8-nhwc")
    # the CLI: from a fused.pt that carries a record, and from an existing ONNX
    r = cli("export", int8, "-o", tmp_path / "cli.onnx", "--input-format", "uint8-nchw", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["input_format_verdict"]["passed"]
    r = cli("eval", tmp_path / "cli.onnx", "--eval-data", "builtin", "--eval-limit", "8")
    assert r.exit_code == 2 and "takes uint8 pixels" in r.output  # the runners feed float: one clear line
    r = cli("export", tmp_path / "cli.onnx", "-o", tmp_path / "twice.onnx", "--input-format", "uint8-nhwc")
    assert r.exit_code == 2 and "takes uint8 pixels already" in r.output and not (tmp_path / "twice.onnx").exists()


def test_pipeline_stages_pass_labels_and_the_uint8_model_through(tmp_path):
    from repdeploy.pipeline import ModelJob, PipelineSettings, assemble_row
    from repdeploy.pipeline.stages import export_fp32, load_checkpoint, open_evaluation_data, quantize_int8

    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(10)))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = ModelJob(name="repvgg_mini", checkpoint=ZOO["repvgg_mini"], run_dir=run_dir, final_dir=tmp_path / "final",
                   load_kwargs={"arch": "RepVGG-mini"})
    s = PipelineSettings(calib_samples=32, eval_limit=64, labels=str(labels), input_format="uint8-nhwc")
    fused = load_checkpoint(job)
    prepared = open_evaluation_data(job, fused, s)
    exported = export_fp32(job, fused, prepared)
    quantized = quantize_int8(job, fused, prepared, s)
    names = [f"class {i}" for i in range(10)]
    pixels = run_dir / "model_int8_ort_uint8_nhwc.onnx"
    for path in (exported.fp32_onnx, quantized.int8_onnx, pixels, prepared.fused_pt):
        assert class_names_of(path) == names, path
    row = assemble_row(job, s, fused=fused, prepared=prepared, quantized=quantized)
    assert [v["check"] for v in row.verdicts][-1] == "input_uint8_nhwc" and row.verdicts[-1]["passed"]


def test_inputs_of_every_form_agree_and_bad_ones_are_refused(prepared, tmp_path):
    from repdeploy.serving import Model

    work, ready = prepared
    model = Model(ready["models"][0], threads=1)
    path = ready["files"][0]
    pil = Image.open(path).convert("RGB")
    answers = [model.predict(x, top_k=3) for x in (path, Path(path), Path(path).read_bytes(), pil, np.asarray(pil))]
    assert all(a == answers[0] for a in answers)
    assert [p.name for p in answers[0]] == [DIGITS[p.index] for p in answers[0]]
    assert abs(sum(p.score for p in model.predict(path, top_k=10)) - 1.0) < 1e-5
    batch = model.predict_batch(ready["files"][:4], top_k=2)
    assert batch == [model.predict(f, top_k=2) for f in ready["files"][:4]]
    with pytest.raises(DataError, match="not a readable image"):
        model.predict(b"not an image")
    with pytest.raises(DataError, match="uint8"):
        model.predict(np.zeros((8, 8), np.float32))
    with pytest.raises(DataError, match="does not exist"):
        model.predict(tmp_path / "missing.jpg")
    bare = tmp_path / "bare.onnx"  # an ONNX that carries no record
    import onnx

    graph = onnx.load(ready["models"][0])
    del graph.metadata_props[:]
    onnx.save(graph, str(bare))
    with pytest.raises(InputError, match="no preprocessing record"):
        Model(bare)
    assert Model(bare, preprocessing=model.preprocessing, warmup=False).predict(path) == answers[0][:1] + \
        model.predict(path)[1:]
    with pytest.raises(InputError, match="threads"):
        Model(ready["models"][0], threads=0)
    truncated = tmp_path / "truncated.onnx"  # a damaged file: one clear error, not a protobuf trace
    truncated.write_bytes(Path(ready["models"][0]).read_bytes()[:-7])
    with pytest.raises(InputError, match="truncated.onnx"):
        Model(truncated)


def test_concurrent_callers_get_the_serial_answers(prepared):
    from repdeploy.serving import Model

    work, ready = prepared
    model = Model(ready["models"][1], threads=1)  # the uint8-input graph
    files = ready["files"][:12]
    serial = [model.predict(f, top_k=3) for f in files]
    results: dict[int, list] = {}

    def worker(k: int) -> None:
        results[k] = [model.predict(f, top_k=3) for f in files[k % 3:] + files[:k % 3]]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, got in results.items():
        assert got == serial[k % 3:] + serial[:k % 3]


def test_session_settings_come_from_the_file_unless_given(prepared):
    from repdeploy.serving import Model

    work, ready = prepared
    recorded = Model(ready["models"][0], threads=1, warmup=False)
    assert recorded.session_config == {"session.intra_op.spin_duration_us": "100"}  # the ort layout's record
    assert recorded.describe()["intra_op_threads"] == 1
    quiet = Model(ready["models"][0], threads=2, spin_us=0, warmup=False)
    assert quiet.session_config["session.intra_op.allow_spinning"] == "0"
    assert quiet.describe()["intra_op_threads"] == 2
    with pytest.raises(InputError, match="spin_us"):
        Model(ready["models"][0], spin_us=-1)


def _child(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=str(ROOT)).stdout.strip()


def test_the_runtime_and_version_load_no_torch_and_the_facade_stays_right():
    heavy = "[m for m in ('torch', 'onnx', 'click', 'rich', 'matplotlib') if m in sys.modules]"
    assert _child(f"import sys, repdeploy.serving, repdeploy.errors; print({heavy})") == "[]"
    version = _child("import sys\nfrom repdeploy.cli import main\ntry:\n    main(['--version'])\n"
                     f"except SystemExit:\n    pass\nprint({heavy})")
    assert version.endswith("['click']")  # --version needs click and nothing heavier
    # API functions named like their modules stay functions however the modules were imported
    facade = _child("import repdeploy, repdeploy.fuse, repdeploy.preprocess, repdeploy.quant.ptq\n"
                    "from repdeploy import evaluate\n"
                    "print([callable(f) and not isinstance(f, type(repdeploy)) for f in (repdeploy.fuse, "
                    "repdeploy.preprocess, repdeploy.bench, repdeploy.compare, evaluate, repdeploy.quantize)])")
    assert facade == str([True] * 6)
