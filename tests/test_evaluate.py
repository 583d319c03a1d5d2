"""Accuracy on the built-in val split against a direct computation; agreement and SQNR helpers."""

import math

import numpy as np
import pytest
import torch

from conftest import trained_like
from repdeploy.data import open_dataset
from repdeploy import DataError, evaluate, fuse, open_runner
from repdeploy.evaluate import accuracy_from_logits, open_eval_data, sqnr_db, top1_agreement, topk_correct


@pytest.fixture(scope="module")
def plain():
    return fuse(trained_like("RepVGG-mini", seed=1)).plain


def _direct(plain):
    """Top-1/top-5 on the built-in val split straight from the module, with torch.topk."""
    ds = open_dataset("builtin", split="val", image_size=32)
    c1 = c5 = n = 0
    with torch.no_grad():
        for i in range(0, len(ds), 100):
            items = [ds[j] for j in range(i, min(i + 100, len(ds)))]
            x = torch.stack([t for t, _ in items])
            y = torch.tensor([label for _, label in items])
            top = plain(x).topk(5, dim=1).indices
            c1 += int((top[:, 0] == y).sum())
            c5 += int((top == y[:, None]).any(1).sum())
            n += len(y)
    return 100 * c1 / n, 100 * c5 / n, n


def test_eval_on_builtin_val_matches_direct_computation(plain):
    top1, top5, n = _direct(plain)
    with open_runner(plain, "torch") as r:
        acc = evaluate(r, open_eval_data(r, "builtin"), batch_size=64, keep_logits=True)
    assert acc.images == n == 400
    assert acc.top1 == pytest.approx(top1) and acc.top5 == pytest.approx(top5)
    assert acc.logits.shape == (400, 10) and acc.to_dict()["top1"] == acc.top1
    with open_runner(plain, "ort") as r:
        ort_acc = evaluate(r, open_eval_data(r, "builtin"), batch_size=37)
    assert abs(ort_acc.top1 - top1) <= 100 / 400  # at most one near-tie may flip


def test_topk_on_a_hand_made_case():
    logits = np.array([[0.1, 0.9, 0.0, 0.2, 0.3, 0.4], [5, 4, 3, 2, 1, 0], [0, 0, 0, 0, 0, 1.0]])
    labels = np.array([1, 5, 0])
    assert topk_correct(logits, labels, 1) == 1
    assert topk_correct(logits, labels, 5) == 2  # row 1's label is ranked 6th
    top1, top5 = accuracy_from_logits(logits, labels)
    assert top1 == pytest.approx(100 / 3) and top5 == pytest.approx(200 / 3)
    assert accuracy_from_logits(logits[:, :3], np.array([1, 0, 0]))[1] is None


def test_agreement_and_sqnr_known_values():
    ref = np.ones((10, 10))
    assert sqnr_db(ref, ref + 0.1) == pytest.approx(20.0)  # signal 100, noise 1
    assert sqnr_db(ref, ref) == math.inf
    a = np.eye(4)
    b = np.eye(4)[[0, 1, 3, 2]]
    assert top1_agreement(a, b) == 0.5
    with pytest.raises(DataError, match="shapes"):
        sqnr_db(a, np.ones((3, 4)))


def test_unlabelled_data_and_foreign_labels_are_refused(plain, tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "flat.npy", images)
    np.savez(tmp_path / "many.npz", images=images, labels=np.array([0, 1, 2, 3, 4, 40]))
    with open_runner(plain, "torch") as r:
        with pytest.raises(DataError, match="no labels"):
            evaluate(r, open_eval_data(r, str(tmp_path / "flat.npy")))
        with pytest.raises(DataError, match="label 40"):
            evaluate(r, open_eval_data(r, str(tmp_path / "many.npz")))


def test_eval_cli_json_matches_the_library(plain, tmp_path):
    import json
    import subprocess
    import sys

    from repdeploy import export_onnx

    onnx_path = export_onnx(plain, tmp_path / "m.onnx", input_size=32)
    r = subprocess.run([sys.executable, "-m", "repdeploy", "eval", str(onnx_path), "--data", "builtin", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    with open_runner(onnx_path, "ort") as runner:
        acc = evaluate(runner, open_eval_data(runner, "builtin"))
    assert record["top1"] == acc.top1 and record["top5"] == acc.top5 and record["images"] == 400
