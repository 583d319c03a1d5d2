"""QAT: straight-through gradients, frozen ranges, recovery of a PTQ loss, DDP, kill and resume."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch

from conftest import free_port, trained_like
from repdeploy.export.qdq import check_tensorrt_qdq, count_fused_nodes, integer_node_count
from repdeploy.fuse import fuse
from repdeploy.quant.calib import calibrate
from repdeploy.optim.priors import branch_scales_from_bn, set_prior_multipliers
from repdeploy.quant.qat import qat
from repdeploy.quant.quantizer import QuantPlainNet

ZOO_REPVGG = Path(__file__).resolve().parents[1] / "repdeploy" / "assets" / "zoo" / "repvgg_mini.pth"
REPDEPLOY = [sys.executable, "-m", "repdeploy"]


def calibrated_qnet():
    plain = fuse(trained_like("RepVGG-mini")).plain
    qnet = QuantPlainNet(plain, "ort")
    qnet.set_weight_ranges()
    calibrate(qnet, [torch.randn(16, 3, 32, 32) for _ in range(2)], method="max")
    return qnet


def test_straight_through_gradients_reach_weights_and_ranges_stay_frozen():
    qnet = calibrated_qnet()
    ranges = {k: v.clone() for k, v in qnet.state_dict().items() if k.endswith("amax")}
    assert ranges and not any(n.endswith("amax") for n, _ in qnet.named_parameters())
    opt = torch.optim.SGD(qnet.parameters(), lr=0.1)
    x = torch.randn(8, 3, 32, 32)
    loss = qnet.train()(x).logsumexp(1).mean()
    loss.backward()
    grads = {n: p.grad for n, p in qnet.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.endswith("conv.conv.weight"))
    opt.step()
    after = {k: v for k, v in qnet.state_dict().items() if k.endswith("amax")}
    assert all(torch.equal(ranges[k], after[k]) for k in ranges)


def test_bn_prior_multipliers_follow_the_branch_scales():
    from repdeploy.optim.multipliers import MultiplierMap

    model = trained_like("RepVGG-mini")
    qnet = QuantPlainNet(fuse(model).plain, "ort")
    scales = branch_scales_from_bn(model)
    bn = model.stage2[1].rbr_dense.bn
    assert torch.allclose(scales["stage2.1.scale_conv.weight"], bn.weight / (bn.running_var + bn.eps).sqrt())
    mults = MultiplierMap(qnet)
    set_prior_multipliers(mults, qnet, scales, "sgd")
    m = mults.combined()["net.stage2.1.conv.conv.weight"]
    s = scales["stage2.1.scale_conv.weight"] ** 2
    t = scales["stage2.1.scale_1x1.weight"] ** 2
    raw = s.view(-1, 1, 1, 1).expand_as(m).clone()
    raw[:, :, 1, 1] += t.view(-1, 1)
    idx = torch.arange(m.shape[0])
    raw[idx, idx, 1, 1] += 1
    assert torch.allclose(m, raw / raw.mean(), rtol=1e-5)


@pytest.fixture(scope="module")
def inflated_cache(tmp_path_factory):
    """A calibration cache with every activation range blown up 100x: the kind of cache 'max'
    calibration on data with outliers produces. PTQ with it loses accuracy that QAT must win back."""
    from repdeploy.quant.ptq import quantize

    out = tmp_path_factory.mktemp("ptq")
    quantize(str(ZOO_REPVGG), output_dir=out, calib_data="builtin", calib_samples=128, calib_method="max")
    cache = json.loads((out / "calib.json").read_text())
    for rng in cache["tensors"].values():
        rng["amax"] *= 100.0
    path = out / "calib_outliers.json"
    path.write_text(json.dumps(cache))
    return path


def test_qat_recovers_accuracy_ptq_lost(tmp_path, inflated_cache):
    # 3 epochs, not 2: 2 end on the bound itself with one thread per xdist worker (97.00; 98.50 with
    # two threads), 3 give 98.75 / 98.50, so float differences between CPUs cannot flip the test.
    result = qat(str(ZOO_REPVGG), train_data="builtin", output_dir=tmp_path, epochs=3, train_samples=512,
                 calib_cache=inflated_cache, distill=True, grad_mult="bn")
    r = result.report
    print(f"\nFP32 {r['fp32_top1']:.2f}  PTQ {r['ptq_top1']:.2f}  QAT {r['qat_top1']:.2f} (ORT INT8)")
    assert r["ptq_drop"] > 3.0, "the inflated ranges should cost PTQ accuracy"
    # Issue 12: the trained log-space ranges undo the 100x error; QAT ends within 2 points of FP32.
    assert r["qat_top1"] >= r["fp32_top1"] - 2.0, "QAT should recover to within 2 points of FP32"
    # The default zoo model's loss is flat enough for the fixed default lr.
    assert r["learnable_ranges"] is True and r["lr"] == pytest.approx(0.01)
    assert (result.fp32_top1, result.ptq_top1, result.qat_top1) == (r["fp32_top1"], r["ptq_top1"], r["qat_top1"])
    # The exported ORT model really runs integer convolutions.
    assert integer_node_count(count_fused_nodes(result.int8_onnx)) > 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["calib.json", "fused.pt", "model_fp32.onnx", "model_int8_ort.onnx", "qat_state.pt", "report.json"]


def test_qat_exports_a_tensorrt_layout_that_passes_its_rules_and_the_fidelity_gate_exits_3(tmp_path):
    from repdeploy.cli.outcome import raise_for_results
    from repdeploy.errors import AccuracyGateError

    # Written first, then gated: the library hands back a FAILED result, the CLI exits 3.
    result = qat(str(ZOO_REPVGG), train_data="builtin", output_dir=tmp_path, epochs=1, train_samples=128,
                 calib_samples=64, target="tensorrt", optimizer="adamw", grad_mult="sgs", min_sqnr=99.0)
    assert result.status == "FAILED" and not result.verification_failures
    assert "--min-sqnr 99" in result.gate_failures[0]
    with pytest.raises(AccuracyGateError, match="--min-sqnr 99") as info:
        raise_for_results([result], " after QAT")
    assert info.value.exit_code == 3
    model = onnx.load(str(tmp_path / "model_int8_tensorrt.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert check_tensorrt_qdq(model) == []
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tensorrt_rule_violations"] == [] and all(v["passed"] for v in report["verdicts"])
    assert report["status"] == "FAILED" and report["fidelity_gate"]["passed"] is False
    assert report["verify_images"] == report["fidelity_gate"]["images"] > 0 and report["verify_disjoint"]


def run_cli(*args, env=None):
    return subprocess.run([*map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def test_two_process_ddp_writes_one_set_of_artifacts(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    single, multi = tmp_path / "single", tmp_path / "ddp"
    common = ["qat", ZOO_REPVGG, "--train-data", "builtin", "--epochs", "1", "--train-samples", "256",
              "--calib-samples", "64", "--batch-size", "32", "--json"]
    r1 = run_cli(*REPDEPLOY, *common, "-o", single)
    assert r1.returncode == 0, r1.stderr
    r2 = run_cli(torchrun, "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "repdeploy", *common, "-o", multi)
    assert r2.returncode == 0, r2.stderr
    one, two = json.loads(r1.stdout), json.loads(r2.stdout)  # rank 1 prints nothing
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert set(one) == set(two)
    assert abs(one["qat_top1"] - two["qat_top1"]) < 5.0
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())


def test_killed_run_resumes_to_a_valid_model(tmp_path):
    out = tmp_path / "qat"
    args = [*REPDEPLOY, "qat", ZOO_REPVGG, "--train-data", "builtin", "--epochs", "2", "--train-samples", "512",
            "--calib-samples", "64", "--batch-size", "32", "--checkpoint-every", "3", "-o", out]
    proc = subprocess.Popen([*map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "qat_state.pt"
    deadline = time.time() + 180
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert state.exists(), "no training state was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists(), "the run was killed before it finished"
    saved = torch.load(state, weights_only=True)
    assert 0 < saved["step"] < 32
    r = run_cli(*args, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["qat_top1"] > 50.0
    assert json.loads((out / "report.json").read_text())["qat_top1"] == report["qat_top1"]
    onnx.checker.check_model(onnx.load(str(out / "model_int8_ort.onnx")), full_check=True)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_learnable_ranges_train_and_freeze_before_export(tmp_path):
    from repdeploy.quant.ranges import freeze_ranges, make_ranges_learnable

    qnet = calibrated_qnet()
    before = qnet.ranges()
    assert make_ranges_learnable(qnet) == len(before)
    learned = [p for n, p in qnet.named_parameters() if n.endswith("log_amax")]
    x = torch.randn(8, 3, 32, 32)
    qnet.train()(x).logsumexp(1).mean().backward()
    assert learned and all(p.grad is not None and torch.isfinite(p.grad) for p in learned)
    assert any(p.grad.abs() > 0 for p in learned)
    with torch.no_grad():
        for p in learned:
            p.add_(math.log(1.5))  # the range is trained in log space: 1.5x wider
    frozen = freeze_ranges(qnet)
    assert not any(n.endswith("log_amax") for n, _ in qnet.named_parameters())
    assert all(abs(frozen[k] - 1.5 * before[k]) <= 1e-5 * before[k] for k in frozen)
    assert qnet.ranges() == pytest.approx(frozen)

    run = dict(train_data="builtin", epochs=1, train_samples=128, calib_samples=64)
    result = qat(str(ZOO_REPVGG), output_dir=tmp_path / "a", **run)
    cache = json.loads((tmp_path / "a" / "calib.json").read_text())
    assert {k: v["amax"] for k, v in cache["tensors"].items()} == pytest.approx(result.qnet.ranges())
    assert result.report["learnable_ranges"] is True and result.report["range_lr"] == 0.2  # the defaults
    # Deterministic on the CPU: the same seed trains the same ranges, lr and accuracy.
    again = qat(str(ZOO_REPVGG), output_dir=tmp_path / "b", **run)
    assert again.qnet.ranges() == result.qnet.ranges()
    assert (again.report["lr"], again.report["lr_sharpness"], again.qat_top1) == \
        (result.report["lr"], result.report["lr_sharpness"], result.qat_top1)


def test_pipeline_qat_column(tmp_path):
    from repdeploy.pipeline import run_pipeline
    from repdeploy.report import plain_table

    result = run_pipeline([ZOO_REPVGG], output_dir=tmp_path, qat=True, qat_epochs=1, calib_samples=64,
                          eval_limit=200, duration=0.05, iterations=5, warmup=0.0, max_duration=0.0)
    row = result.rows[0]
    assert row.status == "PASSED", row.error
    # the QAT graphs are verified like the PTQ ones, and judged with them
    qat_checks = {v["check"]: v["passed"] for v in row.verdicts if v["check"].startswith("qat_")}
    assert qat_checks == {"qat_ort_fp32": True, "qat_ort_int8": True, "qat_int8_graph": True}
    assert row.qat_top1 is not None and row.qat_drop == pytest.approx(row.fp32_top1 - row.qat_top1)
    run_dir = Path(row.run_dir)
    assert (run_dir / "qat_int8_ort.onnx").exists() and (run_dir / "qat_report.json").exists()
    assert json.loads((run_dir / "qat_report.json").read_text())["grad_mult"] == "bn"
    assert "QAT top-1 %" in plain_table([row.to_dict()])
    assert "QAT top-1 %" not in plain_table([{**row.to_dict(), "qat_top1": None, "qat_drop": None}])


def test_sharpness_is_the_top_hessian_eigenvalue_and_caps_the_default_lr():
    from repdeploy.optim.multipliers import MultiplierMap
    from repdeploy.optim.sharpness import STABLE_LR_FACTOR, sharpness, stable_lr

    # A least-squares loss 0.5 * mean((Xw - y)^2) has the constant Hessian X^T X / n.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, generator=g) * torch.tensor([3.0, 1.0, 1.0, 0.5, 0.1]), torch.randn(64, generator=g)
    model = torch.nn.Linear(5, 1, bias=False)

    def loss(m, x, y):
        return 0.5 * ((m(x).squeeze(1) - y) ** 2).mean()

    expected = float(torch.linalg.eigvalsh(x.T @ x / len(x)).max())
    assert sharpness(model, loss, x, y, iterations=50) == pytest.approx(expected, rel=1e-3)
    # With a gradient multiplier M, SGD's step sees the eigenvalues of M H.
    mults = MultiplierMap(model)
    mults.set("test", "weight", torch.full((1, 5), 2.0))
    assert sharpness(model, loss, x, y, mults, iterations=50) == pytest.approx(2 * expected, rel=1e-3)
    assert stable_lr(0.01, 100.0) == 0.01 and stable_lr(0.01, 1000.0) == pytest.approx(STABLE_LR_FACTOR / 1000.0)

