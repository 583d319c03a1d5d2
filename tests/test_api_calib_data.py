"""quantize() from Python with data in memory: tensors, arrays, iterables, DataLoaders, forward_loop."""

from __future__ import annotations

import json

import pytest
import torch

import repdeploy
from repdeploy.data import open_dataset
from repdeploy import DataError, InputError
from repdeploy.zoo import zoo_entry


@pytest.fixture(scope="module")
def plain():
    return repdeploy.fuse(repdeploy.load(zoo_entry("repvgg").file).model).plain


@pytest.fixture(scope="module")
def images():
    """48 preprocessed digits (float NCHW, as a training pipeline would feed the model), and labels."""
    ds = open_dataset("builtin", split="train", image_size=32)
    x, y = zip(*ds.batches(16, limit=48))
    return torch.cat(x), torch.cat(y)


def ranges(result) -> dict:
    return {k: v["amax"] for k, v in json.loads(result.calib_cache.read_text())["tensors"].items()}


def test_every_calib_data_form_gives_the_same_max_ranges(plain, images, tmp_path):
    x, y = images
    common = dict(calib_method="max", calib_samples=len(x))  # max is order-free: every form must agree
    by_form = {
        "tensor": repdeploy.quantize(plain, calib_data=x, output_dir=tmp_path / "t", **common),
        "list": repdeploy.quantize(plain, calib_data=list(x.split(10)), output_dir=tmp_path / "l", **common),
        "loader": repdeploy.quantize(
            plain, output_dir=tmp_path / "d", **common,
            calib_data=torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)),
        "forward_loop": repdeploy.quantize(
            plain, output_dir=tmp_path / "f", calib_method="max",
            forward_loop=lambda model: [model(b) for b in x.split(12)]),
    }
    reference = ranges(by_form["tensor"])
    for form, result in by_form.items():
        assert result.calib_samples == len(x), form
        assert result.ort_parity_passed and result.int8_onnx.is_file(), form
        got = ranges(result)
        assert got.keys() == reference.keys(), form
        for name in reference:
            assert got[name] == pytest.approx(reference[name], rel=1e-6), (form, name)


def test_iterables_stop_at_calib_samples_and_eval_data_can_be_in_memory(plain, images, tmp_path):
    x, y = images
    result = repdeploy.quantize(plain, calib_data=(b for b in x.split(7)), calib_samples=20,
                                eval_data=(x, y), output_dir=tmp_path)
    assert result.calib_samples == 20
    assert result.fp32_top1 is not None and result.int8_top1 is not None
    assert result.top1_drop == pytest.approx(result.fp32_top1 - result.int8_top1)
    assert result.report["eval_images"] == len(x)


def test_bad_calibration_data_is_one_clear_error_and_writes_nothing(plain, images, tmp_path):
    x, _ = images
    cases = [
        (dict(calib_data=42), InputError, "not calibration data"),
        (dict(calib_data={"x": x}), InputError, "DataLoader"),
        (dict(calib_data=[x[:, :1]]), DataError, "(N, 3, 32, 32)"),
        (dict(calib_data=[(x * 255).to(torch.uint8)]), DataError, "preprocessed float"),
        (dict(calib_data=x, forward_loop=lambda m: None), InputError, "not both"),
        (dict(forward_loop=lambda m: None), DataError, "never called the model"),
    ]
    for kwargs, error, message in cases:
        out = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            repdeploy.quantize(plain, output_dir=out, **kwargs)
        assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith(".")), kwargs


def test_library_calls_log_and_never_print(plain, images, tmp_path, capsys, caplog):
    import logging

    x, _ = images
    with caplog.at_level(logging.INFO, logger="repdeploy"):
        repdeploy.quantize(plain, calib_data=x.numpy(), calib_samples=16, output_dir=tmp_path)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert any("quantize: RepVGG-mini" in r.getMessage() for r in caplog.records)


def test_low_level_path_needs_no_hidden_setup_call(plain, images):
    """QuantPlainNet + calibrate is enough: weight ranges are set on construction."""
    from repdeploy.quant import QuantPlainNet, calibrate

    x, _ = images
    qnet = QuantPlainNet(plain, "ort")
    assert all(q.calibrated for q in qnet.quantizers() if q.per_channel)
    calibrate(qnet, [x[:16]], method="max")
    with torch.no_grad():
        err = (qnet(x[:8]) - plain(x[:8])).abs().max() / plain(x[:8]).abs().max()
    assert 0 < float(err) < 0.2  # quantized (not identical), and close to the float model
