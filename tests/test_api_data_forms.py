"""evaluate and quantize take data in the same forms, through one adapter (issue 22)."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

import repdeploy
from repdeploy.data import open_dataset
from repdeploy import DataError, InputError
from repdeploy.zoo import zoo_entry


@pytest.fixture(scope="module")
def labelled():
    """120 preprocessed val digits (float NCHW, as a training pipeline feeds the model) and labels."""
    ds = open_dataset("builtin", split="val", image_size=32)
    x, y = zip(*ds.batches(40, limit=120))
    return torch.cat(x), torch.cat(y)


def forms(x: torch.Tensor, y: torch.Tensor) -> dict:
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    return {
        "dataset": repdeploy.data.from_arrays(x, y, image_size=32),
        "tensor pair": (x, y),
        "array pair": (x.numpy(), y.numpy()),
        "list of batches": list(zip(x.split(50), y.split(50))),
        "generator": ((a, b) for a, b in zip(x.split(25), y.split(25))),
        "DataLoader": loader,
    }


def test_evaluate_takes_every_form_and_each_gives_the_same_accuracy(labelled):
    x, y = labelled
    with repdeploy.open_runner(zoo_entry("repvgg").file, "torch", device="cpu") as runner:
        by_form = {name: repdeploy.evaluate(runner, data) for name, data in forms(x, y).items()}
        # A path and the opened dataset are the same images read from disk.
        from_path = repdeploy.evaluate(runner, "builtin", limit=120)
        with pytest.raises(DataError, match="no labels"):
            repdeploy.evaluate(runner, x)  # images without labels: nothing to score
        with pytest.raises(InputError, match="DataLoader"):
            repdeploy.evaluate(runner, 42)
    reference = by_form["tensor pair"]
    assert reference.images == 120 and 0 < reference.top1 <= 100
    for name, acc in by_form.items():
        assert (acc.images, acc.top1, acc.top5) == (reference.images, reference.top1, reference.top5), name
    assert from_path.top1 == pytest.approx(reference.top1)


def test_quantize_takes_the_same_forms_for_calibration_and_evaluation(labelled, tmp_path):
    x, y = labelled
    plain = repdeploy.fuse(repdeploy.load(zoo_entry("repvgg").file).model).plain
    common = dict(calib_method="max", calib_samples=len(x), diagnostics="off")
    pair = repdeploy.quantize(plain, calib_data=(x, y), eval_data=(x, y), output_dir=tmp_path / "a", **common)
    loader = repdeploy.quantize(plain, calib_data=forms(x, y)["DataLoader"], eval_data=forms(x, y)["DataLoader"],
                                output_dir=tmp_path / "b", **common)
    assert pair.calib_samples == loader.calib_samples == len(x)
    assert pair.fp32_top1 == loader.fp32_top1 and pair.int8_top1 == loader.int8_top1
    with repdeploy.open_runner(pair.int8_onnx, "ort") as runner:
        assert repdeploy.evaluate(runner, (x, y)).top1 == pytest.approx(pair.int8_top1)


def test_result_types_and_errors_are_exported_and_typed():
    for name in ("QuantizeResult", "QATResult", "Accuracy", "FusedModel", "FuseResult", "Loaded",
                 "PipelineResult", "Comparison", "BenchResult", "Equivalence"):
        cls = getattr(repdeploy, name)
        assert dataclasses.is_dataclass(cls), name
        assert name in repdeploy.__all__
    for name in ("RepDeployError", "InputError", "DataError", "CheckpointError", "CalibrationError",
                 "VerificationError", "AccuracyGateError", "ToleranceError"):
        assert issubclass(getattr(repdeploy, name), Exception) and name in repdeploy.__all__, name
    assert inspect.signature(repdeploy.load_fused).return_annotation in ("FusedModel", repdeploy.FusedModel)
    fused = repdeploy.load_fused(zoo_entry("repvgg").file)
    assert isinstance(fused, repdeploy.FusedModel) and fused.plain.spec.name == fused.loaded.spec.name
    plain, loaded, equivalence = fused  # the old triple still unpacks
    assert plain is fused.plain and equivalence is fused.equivalence


def test_one_device_default_everywhere():
    from repdeploy import defaults
    from repdeploy.runtime.torch import TorchRunner

    from repdeploy.pipeline import PipelineSettings
    from repdeploy.quant.settings import QatSettings, QuantizeSettings

    from repdeploy.compare import CompareSettings

    from repdeploy.runtime import RunnerSettings

    assert inspect.signature(TorchRunner.__init__).parameters["device"].default == defaults.DEVICE
    # open_runner, quantize, qat, pipeline and compare take one settings record each: its device field
    for settings in (RunnerSettings, QuantizeSettings, QatSettings, PipelineSettings, CompareSettings):
        assert settings().device == defaults.DEVICE, settings.__name__
