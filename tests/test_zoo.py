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
from repdeploy.training import top1_accuracy

ZOO = Path(repdeploy.__file__).parent / "assets" / "zoo"
TOLERANCE = 0.5


def _entries():
    return json.loads((ZOO / "zoo.json").read_text())["models"]


def test_zoo_index_is_complete():
    entries = _entries()
    assert {e["family"] for e in entries} == {"repvgg", "repopt"}
    for e in entries:
        assert {"name", "file", "arch", "family", "input_size", "command", "val_top1", "dataset"} <= set(e)
        packed = e.get("packed_with")
        # "a few MB at most"; a packed (fused, float16) real-width model up to 15 MB (issue 18)
        assert (ZOO / e["file"]).stat().st_size < (15_000_000 if packed else 3 * 2**20)
        assert e["command"].startswith("repdeploy train") and f"--arch {e['arch']}" in e["command"]
        if packed:  # the second step that made the shipped file from the trained checkpoint
            assert packed["command"].startswith("python -m repdeploy.zoo pack ") and e["file"] in packed["command"]
            assert f"--input-size {e['input_size']}" in packed["command"] and f"--input-size {e['input_size']}" in e["command"]
        for extra in e.get("made_with", []):
            assert extra["command"].startswith("repdeploy ") and (ZOO / extra["file"]).exists()
    assert not list(ZOO.glob("*.state")) and not list(ZOO.glob("*.part"))


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e["name"])
def test_zoo_model_reaches_recorded_accuracy(entry):
    path = ZOO / entry["file"]
    raw = torch.load(path, weights_only=True)  # plain data and tensors: safe to load
    loaded = repdeploy.load(path)
    assert loaded.spec.name == entry["arch"] and loaded.spec.family == entry["family"]
    assert loaded.form == entry.get("form", "train" if entry["family"] == "repvgg" else "target")
    if entry.get("packed_with"):  # stored float16, loaded as the float32 model at its own input size
        assert {v.dtype for v in raw["state_dict"].values()} == {torch.float16}
        assert loaded.spec.input_size == entry["input_size"]
        assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    val = open_dataset("builtin", split="val", image_size=entry["input_size"])
    accuracy = top1_accuracy(loaded.model, val)
    assert abs(accuracy - entry["val_top1"]) <= TOLERANCE, (accuracy, entry["val_top1"])
    assert accuracy > 90.0  # a real classifier, not a lucky one


def test_pack_stores_a_fused_float16_model_that_loads_as_it_computed(tmp_path):
    from repdeploy import load_fused, InputError
    from repdeploy.zoo import pack

    source = ZOO / "repvgg_mini.pth"
    info = pack(source, tmp_path / "mini48.pt", input_size=48)
    assert info["bytes"] < 0.6 * source.stat().st_size  # fused and half-width: smaller than the train form
    assert info["float16_max_rel_logit_diff"] < 5e-3
    plain, loaded, _ = load_fused(tmp_path / "mini48.pt")
    assert loaded.form == "fused" and plain.spec.input_size == 48
    reference, _, _ = load_fused(source)
    x = torch.randn(8, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = reference(x), plain(x)
    assert (a - b).abs().max() <= 5e-3 * a.abs().max() and (a.argmax(1) == b.argmax(1)).all()
    with pytest.raises(InputError, match="--input-size"):
        pack(source, tmp_path / "bad.pt", input_size=0)
