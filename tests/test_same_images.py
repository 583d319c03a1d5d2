"""Eval data that is the calibration data under another path is flagged by content (issue 22)."""

from __future__ import annotations

import json
import shutil

import numpy as np
from click.testing import CliRunner
from PIL import Image

from repdeploy.cli import main
from repdeploy.data import calibration_sample, from_arrays, open_dataset, same_images
from repdeploy.zoo import zoo_entry


def photo_folder(directory, n: int, seed: int):
    """`n` labelled class-folder photos (noise images; classes 0 and 1) as PNG files."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = directory / f"{i % 2}"  # index-named: matched to the model's classes 0 and 1
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(cls / f"{seed}_{i}.png")
    return directory


def test_a_copied_folder_is_the_same_images_and_a_different_one_is_not(tmp_path):
    calib = photo_folder(tmp_path / "calib", 12, seed=0)
    shutil.copytree(calib, tmp_path / "copy")
    photo_folder(tmp_path / "other", 12, seed=1)
    opened = {name: open_dataset(tmp_path / name, split="val", image_size=32) for name in ("calib", "copy", "other")}
    assert same_images(opened["calib"], opened["copy"])  # another path, the same bytes
    assert not same_images(opened["calib"], opened["other"])
    # One copied photo among new ones is enough; a sample that leaves it out is not flagged.
    shutil.copy(next((calib / "0").iterdir()), tmp_path / "other" / "0" / "copied.png")
    mixed = open_dataset(tmp_path / "other", split="val", image_size=32)
    assert same_images(opened["calib"], mixed)
    copied_at = [i for i in range(len(mixed)) if same_images(opened["calib"], mixed.subset([i]))]
    assert len(copied_at) == 1
    rest = mixed.subset([i for i in range(len(mixed)) if i != copied_at[0]])
    assert not same_images(opened["calib"], rest)


def test_arrays_compare_their_pixels_not_their_names():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 3, 16, 16), dtype=np.uint8)
    y = np.arange(20) % 4
    a = from_arrays(x, y, image_size=16, name="a")
    b = from_arrays(x.copy(), y, image_size=16, name="b")
    c = from_arrays(x[::-1][:10].copy(), y[:10], image_size=16, name="c")  # the last 10, reversed
    assert same_images(a, b)
    assert same_images(calibration_sample(a, 10, seed=0), c) == bool(
        set(calibration_sample(a, 10, seed=0).indices) & set(range(10, 20)))
    assert not same_images(a.subset(range(10)), c)
    # The built-in data's train and val splits are different digits.
    train, val = (open_dataset("builtin", split=s, image_size=8, channels=1) for s in ("train", "val"))
    assert not same_images(train, val) and same_images(train, train)


def test_quantize_flags_eval_data_that_copies_the_calibration_folder(tmp_path):
    """The zoo's 10-class mini model, calibrated on a folder and evaluated on its copy."""
    calib = photo_folder(tmp_path / "calib", 16, seed=0)
    shutil.copytree(calib, tmp_path / "val")
    runner = CliRunner()

    def warnings_for(eval_dir, out):
        r = runner.invoke(main, ["quantize", str(zoo_entry("repvgg").file), "--calib-data", str(calib),
                                 "--calib-samples", "16", "--eval-data", str(eval_dir), "--diagnostics", "off",
                                 "-o", str(out), "--json", "-q", "--allow-mismatch"])
        assert r.exit_code == 0, r.output
        return [w["flag"] for w in json.loads(r.stdout)["warnings"]]

    assert "calibrated on eval" in warnings_for(tmp_path / "val", tmp_path / "q1")
    photo_folder(tmp_path / "fresh", 16, seed=5)
    assert "calibrated on eval" not in warnings_for(tmp_path / "fresh", tmp_path / "q2")
