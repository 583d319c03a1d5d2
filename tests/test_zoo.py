"""The shipped zoo: each model loads through repdeploy.load and reaches its recorded accuracy.

Tolerance: 0.5 percentage points (2 of the 400 validation images). Evaluation is deterministic
for a given build, but CPU kernels (thread count, oneDNN version) may reorder float sums and flip
an argmax that sits on a near-tie.
"""

import json
from pathlib import Path

import pytest
import torch

import repdeploy
from repdeploy.data import open_dataset
from repdeploy.train import top1_accuracy

ZOO = Path(repdeploy.__file__).parent / "assets" / "zoo"
TOLERANCE = 0.5


def _entries():
    return json.loads((ZOO / "zoo.json").read_text())["models"]


def test_zoo_index_is_complete():
    entries = _entries()
    assert {e["family"] for e in entries} == {"repvgg", "repopt"}
    for e in entries:
        assert {"name", "file", "arch", "family", "input_size", "command", "val_top1", "dataset"} <= set(e)
        assert (ZOO / e["file"]).stat().st_size < 3 * 2**20  # "a few MB at most"
        assert e["command"].startswith("repdeploy train") and f"--arch {e['arch']}" in e["command"]
        for extra in e.get("made_with", []):
            assert extra["command"].startswith("repdeploy ") and (ZOO / extra["file"]).exists()
    assert not list(ZOO.glob("*.state")) and not list(ZOO.glob("*.part"))


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e["name"])
def test_zoo_model_reaches_recorded_accuracy(entry):
    path = ZOO / entry["file"]
    torch.load(path, weights_only=True)  # a plain state_dict: safe to load
    loaded = repdeploy.load(path)
    assert loaded.spec.name == entry["arch"] and loaded.spec.family == entry["family"]
    assert loaded.form == ("train" if entry["family"] == "repvgg" else "target")
    val = open_dataset("builtin", split="val", image_size=entry["input_size"])
    accuracy = top1_accuracy(loaded.model, val)
    assert abs(accuracy - entry["val_top1"]) <= TOLERANCE, (accuracy, entry["val_top1"])
    assert accuracy > 90.0  # a real classifier, not a lucky one
