"""The Runner interface on torch and ONNX Runtime: same logits, same lifecycle, every model kind."""

import numpy as np
import pytest
import torch

from conftest import trained_like
from repdeploy import save_fused, InputError, RepDeployError, fuse, open_runner
from repdeploy.runtime import InputMetadata, Runner, model_kind


@pytest.fixture(scope="module")
def plain():
    return fuse(trained_like("RepVGG-mini", seed=3)).plain


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)


def test_torch_and_ort_runners_give_the_same_logits(plain, batch):
    with open_runner(plain, "torch") as t, open_runner(plain, "ort", threads=1) as o:
        a, b = t.infer(batch), o.infer(batch)
    assert a.shape == b.shape == (5, 10)
    assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(a).max())
    assert (a.argmax(1) == b.argmax(1)).all()
    # and both match the module itself, so neither runner is merely agreeing with the other
    with torch.no_grad():
        ref = plain(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(a, ref, rtol=0, atol=1e-6)


def test_every_model_kind_opens(plain, batch, tmp_path):
    fused_pt = save_fused(plain, tmp_path / "fused.pt")
    with open_runner(plain, "ort", workdir=tmp_path / "w") as o:
        ref = o.infer(batch)
    onnx_path = tmp_path / "w" / "model_fp32.onnx"
    assert onnx_path.is_file() and model_kind(onnx_path) == "onnx"
    for model, engine in [(fused_pt, "torch"), (fused_pt, "ort"), (onnx_path, "ort")]:
        with open_runner(model, engine) as r:
            np.testing.assert_allclose(r.infer({"input": batch}), ref, atol=1e-4)
            meta = r.get_input_metadata()
            if engine == "torch":
                assert meta == InputMetadata("input", (None, 3, 32, 32))
            else:  # the ONNX takes any height and width; 32 is its nominal size
                assert meta == InputMetadata("input", (None, 3, None, None), "float32", 32)
            assert meta.image_size == 32
            assert r.last_inference_time() > 0


def test_lifecycle_misuse_is_an_error(plain, batch):
    runner = open_runner(plain, "torch")
    with pytest.raises(RepDeployError, match="not active"):
        runner.infer(batch)
    with runner:
        with pytest.raises(RepDeployError, match="already active"):
            runner.activate()
        with pytest.raises(InputError, match="NCHW"):
            runner.infer(batch[0])
    assert not runner.is_active


def test_thread_settings_apply_and_are_restored(plain, batch):
    before = torch.get_num_threads()
    with open_runner(plain, "torch", threads=1) as t:
        assert torch.get_num_threads() == 1
        t.infer(batch)
    assert torch.get_num_threads() == before
    with open_runner(plain, "ort", threads=1, inter_op_threads=1) as o:
        assert o._session.get_session_options().intra_op_num_threads == 1
        assert o.describe()["intra_op_threads"] == 1


def test_wrong_engine_for_a_file_names_the_fix(plain, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(InputError, match="broken.onnx.*re-export"):
        open_runner(bad, "ort").activate()
    with pytest.raises(InputError, match="--engine ort"):
        open_runner(bad, "torch")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    with pytest.raises(InputError, match="--engine trt"):
        open_runner(engine, "ort")
    with pytest.raises(InputError, match="does not exist"):
        open_runner(tmp_path / "missing.pth", "ort")
    with pytest.raises(InputError, match="unknown engine"):
        open_runner(plain, "tvm")


def test_runner_subclass_only_overrides_impl(batch):
    class Doubling(Runner):
        engine = "numpy"

        def activate_impl(self):
            self.ready = True

        def infer_impl(self, x):
            return x.reshape(len(x), -1)[:, :4] * 2

        def get_input_metadata_impl(self):
            return InputMetadata("x", (None, 3, 32, 32))

    with Doubling("double") as r:
        out = r.infer(batch)
        assert r.ready and r.last_inference_time() >= 0
    np.testing.assert_array_equal(out, batch.reshape(5, -1)[:, :4] * 2)


def test_ort_sessions_follow_torch_thread_count_unless_told(plain, tmp_path):
    # One process-wide setting (torch.set_num_threads / OMP_NUM_THREADS) must bound ORT too, or
    # parallel test workers and users who limit torch still oversubscribe the cores.
    from repdeploy import export_onnx
    from repdeploy.export.onnx import ort_session
    from repdeploy.runtime.ort import session_options

    path = export_onnx(plain, tmp_path / "m.onnx", input_size=32)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert ort_session(path).get_session_options().intra_op_num_threads == 1
        with open_runner(path, "ort") as r:
            assert r.describe()["intra_op_threads"] == 1
        assert session_options(2).intra_op_num_threads == 2  # an explicit count wins
        with open_runner(path, "ort", threads=2) as r:
            assert r.describe()["intra_op_threads"] == 2
    finally:
        torch.set_num_threads(saved)


def test_test_processes_get_their_share_of_the_cores():
    import os

    from conftest import TEST_THREADS, _test_threads

    assert torch.get_num_threads() == TEST_THREADS == int(os.environ["OMP_NUM_THREADS"])
    env = dict(os.environ)
    try:
        os.environ.pop("REPDEPLOY_TEST_THREADS", None)
        os.environ["PYTEST_XDIST_WORKER_COUNT"] = str(10**6)  # more workers than cores
        assert _test_threads() == 1
        os.environ["REPDEPLOY_TEST_THREADS"] = "3"
        assert _test_threads() == 3
    finally:
        os.environ.clear()
        os.environ.update(env)


def test_recorded_session_config_is_applied_and_only_scheduling_keys(plain, batch, tmp_path):
    # The settings a model was measured with travel in its metadata; OrtRunner (bench, eval, the
    # API) applies them, {} gets ORT's defaults, and a file cannot smuggle in other entries.
    import onnx

    from repdeploy import export_onnx
    from repdeploy.runtime.ort import META_SESSION_CONFIG, record_session_config, recorded_session_config

    path = export_onnx(plain, tmp_path / "m.onnx", input_size=32)
    assert recorded_session_config(path) == {}
    model = onnx.load(str(path))
    record_session_config(model, {"session.intra_op.allow_spinning": "0"})
    record_session_config(model, {"session.intra_op.spin_duration_us": "70"})  # replaces, not appends
    onnx.save(model, str(path))
    assert recorded_session_config(path) == {"session.intra_op.spin_duration_us": "70"}
    with open_runner(path, "ort", threads=2) as r:
        options = r._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.spin_duration_us") == "70"
        assert r.describe()["session_config"] == {"session.intra_op.spin_duration_us": "70"}
        tuned = r.infer(batch)
    from repdeploy.runtime.ort import OrtRunner

    with OrtRunner(path, intra_op_threads=2, session_config={}) as r:
        with pytest.raises(RuntimeError, match="does not have"):  # not set: ORT's default
            r._session.get_session_options().get_session_config_entry("session.intra_op.spin_duration_us")
        np.testing.assert_array_equal(r.infer(batch), tuned)  # scheduling never changes results

    from repdeploy import ExportError

    with pytest.raises(ExportError, match="collect_node_memory_stats_to_file"):
        record_session_config(model, {"session.collect_node_memory_stats_to_file": str(tmp_path / "x")})
    for prop in model.metadata_props:
        if prop.key == META_SESSION_CONFIG:  # a hand-edited file: the unknown entry is dropped
            prop.value = '{"session.collect_node_memory_stats_to_file": "x", "session.dynamic_block_base": "2"}'
    onnx.save(model, str(path))
    with pytest.warns(UserWarning, match="ignoring"):
        assert recorded_session_config(path) == {"session.dynamic_block_base": "2"}


def test_onnx_metadata_is_read_without_the_graph_and_refuses_broken_files(plain, tmp_path):
    # Runners read the recorded config on every activation; the light reader must agree with
    # onnx's own parser and fail (not guess) on a truncated or foreign file.
    import onnx

    from repdeploy import export_onnx
    from repdeploy.runtime.ort import onnx_metadata, recorded_session_config

    path = export_onnx(plain, tmp_path / "m.onnx", input_size=32)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "x.unicode", "ré\u2713"
    onnx.save(model, str(path))
    assert onnx_metadata(path) == {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert onnx_metadata(path)["repdeploy.input_size"] == "32"
    data = path.read_bytes()
    for name, content in [("cut.onnx", data[: len(data) // 2]), ("empty.onnx", b""), ("text.onnx", b"not a protobuf")]:
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ValueError):
            onnx_metadata(bad)
        assert recorded_session_config(bad) == {}
