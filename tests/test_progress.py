"""Progress on every long step of `quantize` (issue 22: nothing runs longer than 5 s without a
progress line): each step emits a stage line or bar steps fine enough that one step is one
layer of one batch (torch) or one small batch (ONNX Runtime), and a terminal draws them."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from repdeploy import load_fused, progress, quantize
from repdeploy.quant import fidelity
from repdeploy.quant.quantizer import QuantPlainNet
from repdeploy.zoo import zoo_entry


@pytest.fixture(scope="module")
def plain():
    return load_fused(zoo_entry("repvgg").file).plain


def bars(events) -> dict[str, list]:
    out: dict[str, list] = {}
    for e in events:
        if e.done is not None:
            out.setdefault(e.description, []).append(e)
    return out


def test_every_long_step_of_quantize_reports_progress(plain, tmp_path):
    x = torch.randn(160, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, plain.spec.num_classes, (160,), generator=torch.Generator().manual_seed(1))
    with progress.watch() as events:
        quantize(plain, output_dir=tmp_path, calib_data=x[:64], calib_samples=64, calib_method="max",
                 eval_data=(x[64:], labels[64:]), allow_mismatch=True)
    lines = [e.description for e in events if e.done is None]
    for stage in ("calibrating", "exporting", "torch.onnx.export", "INT8 QDQ graph", "verifying", "evaluating",
                  "per-layer diagnostics"):
        assert any(stage in line for line in lines), (stage, lines)
    steps = bars(events)
    layers = len(QuantPlainNet(plain).layers())
    verify_images = 96  # the eval set, at most VERIFY_IMAGES
    for name in ("verify: torch FP32", "verify: torch fake-quant"):  # one step per layer and batch
        done = [e.done for e in steps[name]]
        assert done == list(range(0, 3 * layers + 1)) and steps[name][0].total == 3 * layers, name
    for name in ("verify: ONNX Runtime FP32", "verify: ONNX Runtime INT8"):  # one step per run of 32
        assert [e.done for e in steps[name]] == [0, 1, 2, 3], name
    assert verify_images == 3 * fidelity.VERIFY_BATCH
    calibration = steps[next(name for name in steps if name.startswith("calibrating"))]  # per layer of each batch
    assert calibration[-1].done == calibration[-1].total and calibration[-1].total % layers == 0
    assert lines[0] == "quantize: loading the model"  # said before the first long step
    assert steps["eval fp32"][-1].done == steps["eval int8"][-1].done == 2  # 96 images in batches of 64 at 32 px
    # events come in time order, and the run ends with no stage left open
    assert [e.time for e in events] == sorted(e.time for e in events)


def test_one_long_call_without_steps_keeps_a_ticking_line_and_stops_with_it():
    """torch.onnx.export reports nothing for 2-11 s on a busy machine: `waiting` beats for it."""
    import time

    with progress.watch() as events:
        with progress.waiting("one long call", every_s=0.05):
            time.sleep(0.6)
        after = len(events)
        time.sleep(0.2)
    times = [e.time for e in events if e.description == "one long call"]
    assert len(times) >= 6 and max(b - a for a, b in zip(times, times[1:])) < 0.4
    assert len(events) == after  # the heartbeat ends with the call


def test_a_long_torch_forward_advances_its_bar_per_layer(plain):
    """The 5 s rule at real size: one B1g4 forward of 32 images at 224 px takes longer than that on
    2 busy cores, so the bar must move inside a forward, not only between batches."""
    qnet = QuantPlainNet(plain)
    qnet.features_quantizer.enabled = False
    layers = list(qnet.layers().values())
    with progress.watch() as events, progress.module_steps(layers, "one forward", 1), torch.no_grad():
        for q in qnet.quantizers():
            q.enabled = False
        qnet(torch.randn(2, 3, 32, 32))
    assert [e.done for e in events] == list(range(len(layers) + 1))


def test_ort_and_eval_steps_shrink_with_the_pixels():
    assert fidelity.ort_batch(torch.zeros(1, 3, 32, 32)) == fidelity.VERIFY_BATCH
    assert fidelity.ort_batch(torch.zeros(1, 3, 224, 224)) == 8
    assert fidelity.images_for(224, 64, 8) == 8


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_draws_the_verification_bars(plain, tmp_path, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm-256color")
    progress.enable_bars()
    try:
        x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        quantize(plain, output_dir=tmp_path, calib_data=x, calib_samples=64, calib_method="max", allow_mismatch=True,
                 diagnostics="off")
    finally:
        progress.disable_bars()
    drawn = terminal.getvalue()
    for name in ("calibrating", "verify: torch FP32", "verify: torch fake-quant", "verify: ONNX Runtime INT8"):
        assert name in drawn, name
    assert "0:00:0" in drawn  # the elapsed-time column, which ticks while a step is long
