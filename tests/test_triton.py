"""Triton model repositories: every emitted config.pbtxt parses with Triton's own schema
(tritonclient's model_config_pb2) and agrees with its ONNX graph; the cross-check fails on
planted faults; plans are named per compute capability; re-packaging replaces only repdeploy's
model directories. Serving with a real tritonserver is `make serve-check` (docs/triton.md).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from repdeploy.cli import main
from repdeploy import InputError, OutputError, Preprocessing
from repdeploy.metadata import set_metadata_prop, stamp
from repdeploy.triton import package_models
from repdeploy.triton.check import cross_check, parse_config, schema_available
from repdeploy.triton.config import PARAM_PREPROCESSING, PARAM_TENSORRT, plan_model, quote
from repdeploy.triton.signature import META_CLASS_NAMES, read_onnx
from repdeploy.export.plan_stamp import write_stamp
from repdeploy.zoo import zoo_entry

DIGITS = [f"digit {d}" for d in range(10)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The zoo RepVGG-mini as FP32, INT8 ort layout and INT8 tensorrt layout ONNX."""
    from repdeploy import quantize

    from repdeploy.data.builtin import builtin_classes

    out = tmp_path_factory.mktemp("models")
    for target in ("ort", "tensorrt"):
        quantize(zoo_entry("repvgg").file, output_dir=out / target, target=target, calib_samples=32)
    files = {"fp32": out / "ort" / "model_fp32.onnx", "int8_ort": out / "ort" / "model_int8_ort.onnx",
             "int8_tensorrt": out / "tensorrt" / "model_int8_tensorrt.onnx"}
    # quantize records the zoo's class names; the tests below start from unnamed models (as a
    # user's own ONNX may be) and name them through --labels or the metadata themselves.
    for path in files.values():
        model = onnx.load(str(path))
        recorded = [p for p in model.metadata_props if p.key == META_CLASS_NAMES]
        assert [json.loads(p.value) for p in recorded] == [list(builtin_classes())]
        model.metadata_props.remove(recorded[0])
        onnx.save(model, str(path))
    return files


def with_class_names(src, dst, names=DIGITS):
    model = onnx.load(str(src))
    set_metadata_prop(model, META_CLASS_NAMES, json.dumps(names))
    onnx.save(model, str(dst))
    return dst


def tiny_graph(path, *, dtype=TensorProto.FLOAT, batch="N", shape=(3, 8, 8), classes=4, record=True):
    """A hand-made classifier graph: input -> GlobalAveragePool -> Flatten -> MatMul -> logits."""
    in_shape = [batch, *shape]
    x = helper.make_tensor_value_info("pixels", dtype, in_shape)
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, classes])
    w = helper.make_tensor("w", TensorProto.FLOAT, [shape[0], classes], np.ones(shape[0] * classes, np.float32))
    nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("GlobalAveragePool", ["f"], ["p"]), helper.make_node("Flatten", ["p"], ["q"]),
             helper.make_node("MatMul", ["q", "w"], ["scores"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    if record:
        stamp(model, preprocessing=Preprocessing(input_size=8, resize=8, mean=(0.5,) * shape[0], std=(0.25,) * shape[0]))
    onnx.save(model, str(path))
    return path


def check_dir(model_dir, onnx_path=None):
    config = parse_config(model_dir / "config.pbtxt")
    sig = read_onnx(onnx_path or model_dir / "1" / "model.onnx")
    return config, cross_check(config, sig, model_dir)


def test_schema_is_tritons_own():
    assert schema_available()
    from repdeploy.triton.check import _schema

    assert _schema().ModelConfig.DESCRIPTOR.full_name == "inference.ModelConfig"


def test_every_precision_and_layout_packages_into_one_checked_repository(exported, tmp_path):
    named = with_class_names(exported["int8_ort"], tmp_path / "model_int8_ort.onnx")
    repo = tmp_path / "repo"
    result = package_models([f"int8_ort={named}", f"fp32={exported['fp32']}",
                             f"int8_trt={exported['int8_tensorrt']}"], repo, labels=None)
    assert [m.name for m in result.models] == ["int8_ort", "fp32", "int8_trt"]
    assert all(m.checked for m in result.models)
    for m in result.models:
        config, problems = check_dir(repo / m.name)
        assert problems == [], (m.name, problems)
        assert (config.backend, config.platform) == ("onnxruntime", "onnxruntime_onnx")
        assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
        assert [tuple(i.dims) for i in config.input] == [(3, 32, 32)] and list(config.output[0].dims) == [10]
        assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
        assert [w.batch_size for w in config.model_warmup] == [1, 8]
        assert all(v.zero_data for w in config.model_warmup for v in w.inputs.values())
        record = Preprocessing.from_dict(json.loads(config.parameters[PARAM_PREPROCESSING].string_value))
        assert record == read_onnx(repo / m.name / "1" / "model.onnx").preprocessing
    ort_config = parse_config(repo / "int8_ort" / "config.pbtxt")
    assert ort_config.output[0].label_filename == "labels.txt"
    assert (repo / "int8_ort" / "labels.txt").read_text().splitlines() == DIGITS
    assert ort_config.parameters["repdeploy.precision"].string_value == "int8"
    assert ort_config.parameters["repdeploy.int8_layout"].string_value == "ort"
    # No class names recorded and no --labels: no labels file and no label_filename, never made-up names.
    assert not (repo / "fp32" / "labels.txt").exists()
    assert parse_config(repo / "fp32" / "config.pbtxt").output[0].label_filename == ""
    assert parse_config(repo / "fp32" / "config.pbtxt").parameters["repdeploy.precision"].string_value == "fp32"


def test_cross_check_fails_planted_faults(exported, tmp_path):
    repo = tmp_path / "repo"
    package_models([f"m={exported['int8_ort']}"], repo, labels=_labels(tmp_path))
    good = (repo / "m" / "config.pbtxt").read_text()
    faults = {
        "input name": ('name: "input"', 'name: "images"'),
        "data type": ("data_type: TYPE_FP32\n    dims: [ 3", "data_type: TYPE_FP16\n    dims: [ 3"),
        "dims with the batch": ("dims: [ 3, 32, 32 ]\n", "dims: [ 8, 3, 32, 32 ]\n"),
        "channel count": ("dims: [ 3, 32, 32 ]\n", "dims: [ 1, 32, 32 ]\n"),
        "class count": ("dims: [ 10 ]", "dims: [ 1000 ]"),
        "warm-up beyond max batch": ("\n    batch_size: 8", "\n    batch_size: 16"),
        "warm-up dims": ("dims: [ 3, 32, 32 ] zero_data", "dims: [ 3, 16, 32 ] zero_data"),
        "fixed batch claimed": ("max_batch_size: 8", "max_batch_size: 0"),
        "backend": ('backend: "onnxruntime"', 'backend: "pytorch"'),
    }
    for what, (old, new) in faults.items():
        assert old in good, what
        (repo / "m" / "config.pbtxt").write_text(good.replace(old, new, 1))
        _, problems = check_dir(repo / "m")
        assert problems, f"planted fault not caught: {what}"
    (repo / "m" / "config.pbtxt").write_text(good)
    assert check_dir(repo / "m")[1] == []
    (repo / "m" / "labels.txt").write_text("\n".join(DIGITS[:9]) + "\n")
    assert any("labels.txt" in p for p in check_dir(repo / "m")[1])
    (repo / "m" / "config.pbtxt").write_text("name: \"m\"\nmax_batch_size: 8\nnot_a_field: 1\n")
    with pytest.raises(InputError, match="does not parse as a Triton ModelConfig"):
        parse_config(repo / "m" / "config.pbtxt")


def _labels(tmp_path, names=DIGITS):
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"{n}\n" for n in names))
    return path


def test_fixed_batch_gives_max_batch_size_zero_and_full_dims(tmp_path):
    fixed = tiny_graph(tmp_path / "fixed.onnx", batch=4)
    result = package_models([fixed], tmp_path / "repo")
    config, problems = check_dir(result.models[0].directory)
    assert problems == []
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [4, 3, 8, 8] and list(config.output[0].dims) == [4, 4]
    assert [w.batch_size for w in config.model_warmup] == [1]
    with pytest.raises(InputError, match="fixed batch of 4"):
        package_models([fixed], tmp_path / "repo2", max_batch_size=8)
    # A dynamic-batch config over a fixed-batch graph is what the cross-check exists to catch.
    config.max_batch_size = 8
    assert any("fixed" in p for p in cross_check(config, read_onnx(fixed)))


def test_uint8_nhwc_input_is_declared_as_the_graph_has_it(tmp_path):
    """The in-graph-preprocessing form (uint8 NHWC pixels) is not on main yet; a hand-made graph of
    that interface stands in for it."""
    path = tiny_graph(tmp_path / "u8.onnx", dtype=TensorProto.UINT8, shape=(8, 8, 3), classes=4)
    model = onnx.load(str(path))  # GlobalAveragePool needs NCHW: add the transpose a real one has
    model.graph.node.insert(1, helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2]))
    model.graph.node[2].input[0] = "t"
    onnx.save(model, str(path))
    result = package_models([path], tmp_path / "repo")
    config, problems = check_dir(result.models[0].directory)
    assert problems == []
    assert config.input[0].data_type == config.DESCRIPTOR.file.enum_types_by_name["DataType"].values_by_name[
        "TYPE_UINT8"].number
    assert list(config.input[0].dims) == [8, 8, 3]


def test_tensorrt_plans_are_named_per_compute_capability(exported, tmp_path):
    onnx_path = shutil.copy(exported["int8_tensorrt"], tmp_path / "model.onnx")
    profile = [{"name": "input", "min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}]
    plans = []
    for cc in ("8.0", "8.9"):
        folder = tmp_path / f"sm{cc}"
        folder.mkdir()
        plan = folder / "model.plan"
        plan.write_bytes(f"serialized engine for {cc}".encode())  # bytes are copied, never parsed
        write_stamp(plan, compute_capability=cc, tensorrt_version="10.3.0", onnx=onnx_path, profiles=profile)
        shutil.copy(onnx_path, folder / "model.onnx")
        plans.append(plan)
    repo = tmp_path / "repo"
    result = package_models([f"a0={p}" for p in plans], repo, labels=_labels(tmp_path))
    config, problems = check_dir(repo / "a0", onnx_path)
    assert problems == []
    assert (config.backend, config.platform) == ("tensorrt", "tensorrt_plan")
    assert dict(config.cc_model_filenames) == {"8.0": "model_sm80.plan", "8.9": "model_sm89.plan"}
    assert (repo / "a0" / "1" / "model_sm89.plan").read_bytes() == b"serialized engine for 8.9"
    assert config.max_batch_size == 32  # the profile's maximum
    assert config.parameters[PARAM_TENSORRT].string_value == "10.3.0"
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert result.models[0].platform == "tensorrt_plan"
    with pytest.raises(InputError, match="more than the engines' profile takes"):
        package_models([f"a0={p}" for p in plans], tmp_path / "r2", max_batch_size=64)
    # One plan per compute capability, one TensorRT version per model, a known build GPU.
    write_stamp(plans[1], compute_capability="8.0", tensorrt_version="10.3.0", onnx=onnx_path, profiles=profile)
    with pytest.raises(InputError, match="same compute capability"):
        package_models([f"a0={p}" for p in plans], tmp_path / "r3")
    write_stamp(plans[1], compute_capability="8.9", tensorrt_version="10.8.0", onnx=onnx_path, profiles=profile)
    with pytest.raises(InputError, match="different TensorRT versions"):
        package_models([f"a0={p}" for p in plans], tmp_path / "r4")
    bare = tmp_path / "bare.plan"
    bare.write_bytes(b"x")
    with pytest.raises(InputError, match="--compute-capability"):
        package_models([bare], tmp_path / "r5")
    low = [{**profile[0], "min": [4, 3, 32, 32]}]
    write_stamp(plans[0], compute_capability="8.0", tensorrt_version="10.3.0", onnx=onnx_path, profiles=low)
    with pytest.raises(InputError, match="smallest batch is 4"):
        package_models([plans[0]], tmp_path / "r6")


def test_options_that_contradict_the_model_are_refused(exported, tmp_path):
    with pytest.raises(InputError, match="ort INT8 layout"):
        package_models([exported["int8_ort"]], tmp_path / "r", kind="gpu", tensorrt_accelerator=True)
    with pytest.raises(InputError, match="needs --instance-kind gpu"):
        package_models([exported["int8_tensorrt"]], tmp_path / "r", tensorrt_accelerator=True)
    with pytest.raises(InputError, match="9 class names"):
        package_models([exported["fp32"]], tmp_path / "r", labels=_labels(tmp_path, DIGITS[:9]))
    named = with_class_names(exported["fp32"], tmp_path / "named.onnx")
    with pytest.raises(InputError, match="disagrees with the class names"):
        package_models([named], tmp_path / "r", labels=_labels(tmp_path, [f"c{i}" for i in range(10)]))
    with pytest.raises(InputError, match="only TensorRT plans"):
        package_models([f"m={exported['fp32']}", f"m={exported['int8_ort']}"], tmp_path / "r")
    assert not (tmp_path / "r").exists()  # every refusal came before anything was written
    result = package_models([exported["int8_tensorrt"]], tmp_path / "gpu", kind="gpu", tensorrt_accelerator=True)
    config, problems = check_dir(result.models[0].directory)
    assert problems == []
    accel = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "INT8"


def test_repackaging_replaces_only_repdeploys_model_directories(exported, tmp_path):
    repo = tmp_path / "repo"
    package_models([f"a={exported['fp32']}", f"b={exported['int8_ort']}"], repo)
    (repo / "theirs").mkdir()
    (repo / "theirs" / "config.pbtxt").write_text('name: "theirs"\n')
    before_b = (repo / "b" / "1" / "model.onnx").read_bytes()
    package_models([f"a={exported['int8_ort']}"], repo)  # a replaced, b and theirs untouched
    assert (repo / "a" / "1" / "model.onnx").read_bytes() == exported["int8_ort"].read_bytes()
    assert (repo / "b" / "1" / "model.onnx").read_bytes() == before_b
    assert (repo / "theirs" / "config.pbtxt").read_text() == 'name: "theirs"\n'
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging left behind
    with pytest.raises(OutputError, match="no repdeploy manifest lists"):
        package_models([f"theirs={exported['fp32']}"], repo)
    assert (repo / "theirs" / "config.pbtxt").read_text() == 'name: "theirs"\n'
    (repo / "a" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        package_models([f"a={exported['fp32']}"], repo)
    assert (repo / "a" / "notes.txt").read_text() == "mine"
    with pytest.raises(OutputError, match="contains the input"):
        package_models([f"b={repo / 'b' / '1' / 'model.onnx'}"], repo)
    assert (repo / "b" / "1" / "model.onnx").read_bytes() == before_b


def test_a_run_directory_is_never_taken_for_a_model_directory(exported, tmp_path):
    run = tmp_path / "runs" / "mini"
    run.mkdir(parents=True)
    (run / "report.json").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({"tool": "repdeploy", "artifacts": ["report.json"]}))
    with pytest.raises(InputError, match="run directory, not a Triton model"):
        package_models([f"mini={exported['fp32']}"], tmp_path / "runs")
    assert (run / "report.json").is_file()


def test_text_escaping_round_trips_through_the_schema(tmp_path):
    from google.protobuf import text_format

    from repdeploy.triton.check import _schema

    tricky = 'quote " backslash \\ newline \n tab \t unicode é 数字'
    parsed = text_format.Parse(f"parameters {{ key: \"k\" value: {{ string_value: {quote(tricky)} }} }}",
                               _schema().ModelConfig())
    assert parsed.parameters["k"].string_value == tricky


def test_cli_package_json_and_errors(exported, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["package", f"mini={exported['int8_ort']}", "--labels", str(_labels(tmp_path)),
                             "-o", str(tmp_path / "repo"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["models"][0]["name"] == "mini" and doc["models"][0]["labels"] and doc["models"][0]["checked"]
    r = runner.invoke(main, ["package", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "repo")])
    assert r.exit_code == 2 and r.stderr.startswith("error: model") and "does not exist" in r.stderr
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not onnx")
    r = runner.invoke(main, ["package", str(garbage), "-o", str(tmp_path / "repo")])
    assert r.exit_code == 2 and "not a readable ONNX model" in r.stderr
    r = runner.invoke(main, ["package", f"bad/name={exported['fp32']}", "-o", str(tmp_path / "repo")])
    assert r.exit_code == 2 and "model name" in r.stderr


def test_plan_model_default_batch_and_dynamic_dims(exported):
    sig = read_onnx(exported["fp32"])
    assert sig.dynamic_batch and sig.inputs[0].shape == (None, 3, None, None) and sig.nominal_size == 32
    plan = plan_model("m", sig, max_batch_size=4)
    assert plan.max_batch_size == 4 and plan.input_dims == {"input": (3, 32, 32)}


def test_pipeline_packages_the_models_that_passed(tmp_path):
    from repdeploy import run_pipeline

    fast = dict(calib_samples=32, eval_limit=60, warmup=0.0, duration=0.0, iterations=3, max_duration=0.0,
                bench_sessions=1)
    with pytest.raises(InputError, match="--triton-repo"):
        run_pipeline([zoo_entry("repvgg").file], output_dir=tmp_path / "out", triton_repo=tmp_path / "out", **fast)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    result = run_pipeline([zoo_entry("repvgg").file, broken], output_dir=tmp_path / "out",
                          triton_repo=tmp_path / "out" / "triton", command="test", **fast)
    assert [r.status for r in result.rows] == ["PASSED", "ERROR"]
    assert [m.name for m in result.triton.models] == [result.rows[0].name]  # only the model that passed
    model_dir = tmp_path / "out" / "triton" / result.rows[0].name
    config, problems = check_dir(model_dir)
    assert problems == []
    assert (model_dir / "1" / "model.onnx").read_bytes() == (
        tmp_path / "out" / result.rows[0].name / "model_int8_ort.onnx").read_bytes()
    assert result.to_dict()["triton"]["models"][0]["checked"]


def test_force_keeps_foreign_files_and_never_deletes_a_foreign_version_folder(exported, tmp_path):
    repo = tmp_path / "repo"
    package_models([f"a={exported['fp32']}"], repo)
    (repo / "a" / "notes.txt").write_text("mine")
    package_models([f"a={exported['int8_ort']}"], repo, force=True)
    assert (repo / "a" / "notes.txt").read_text() == "mine"
    assert (repo / "a" / "1" / "model.onnx").read_bytes() == exported["int8_ort"].read_bytes()
    assert check_dir(repo / "a")[1] == []
    (repo / "theirs" / "1").mkdir(parents=True)
    (repo / "theirs" / "1" / "model.onnx").write_bytes(b"their model")
    with pytest.raises(InputError, match="is not repdeploy's"):
        package_models([f"theirs={exported['fp32']}"], repo, force=True)
    assert (repo / "theirs" / "1" / "model.onnx").read_bytes() == b"their model"


def test_a_plan_stamp_from_options_still_needs_the_profile(exported, tmp_path):
    from repdeploy.triton.stamp import engine_stamp

    plan = tmp_path / "model_int8_tensorrt.engine"
    plan.write_bytes(b"engine")
    shutil.copy(exported["int8_tensorrt"], tmp_path / "model_int8_tensorrt.onnx")  # the same stem: its source
    stamp = engine_stamp(plan, compute_capability="9.0", tensorrt_version="10.5.0")
    assert (stamp.sm, stamp.tensorrt_version, stamp.onnx.name) == ("sm90", "10.5.0", "model_int8_tensorrt.onnx")
    with pytest.raises(InputError, match="no optimization profile"):
        package_models([plan], tmp_path / "repo", compute_capability="9.0", tensorrt_version="10.5.0")
    with pytest.raises(InputError, match="major.minor"):
        engine_stamp(plan, compute_capability="sm90", tensorrt_version="10.5.0")
    write_stamp(plan, compute_capability="8.6", tensorrt_version="10.3.0", onnx=tmp_path / "model_int8_tensorrt.onnx",
                profiles=[{"name": "input", "min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [16, 3, 32, 32]}])
    assert engine_stamp(plan, compute_capability="9.0").compute_capability == "9.0"  # the option wins
    result = package_models([plan], tmp_path / "repo", compute_capability="9.0")
    config = parse_config(result.models[0].directory / "config.pbtxt")
    assert dict(config.cc_model_filenames) == {"9.0": "model_sm90.plan"} and config.max_batch_size == 16


def test_bad_labels_and_metadata_are_refused_with_the_fix(exported, tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("a\n\nb\n")
    with pytest.raises(InputError, match="blank line"):
        package_models([exported["fp32"]], tmp_path / "r", labels=blank)
    model = onnx.load(str(exported["fp32"]))
    set_metadata_prop(model, META_CLASS_NAMES, '{"not": "a list"}')
    onnx.save(model, str(tmp_path / "bad_names.onnx"))
    with pytest.raises(InputError, match="not a list of strings"):
        package_models([tmp_path / "bad_names.onnx"], tmp_path / "r")
    external = tmp_path / "external" / "model.onnx"
    external.parent.mkdir()
    onnx.save(onnx.load(str(exported["fp32"])), str(external), save_as_external_data=True, size_threshold=0)
    with pytest.raises(InputError, match="external data"):
        package_models([external], tmp_path / "r")
    assert not (tmp_path / "r").exists()
