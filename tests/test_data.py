"""repdeploy.data: every source kind, preprocessing, seeded sampling, and bad inputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from repdeploy.data import DIGITS_MEAN, DIGITS_STD, builtin_path, calibration_sample, open_dataset, split_dataset
from repdeploy import DataError


def test_builtin_digits_splits_shapes_and_normalisation():
    train = open_dataset("builtin", split="train", image_size=32)
    val = open_dataset(None, split="val", image_size=32)
    assert (len(train), len(val)) == (1397, 400)
    assert train.classes == [str(c) for c in range(10)] and train.has_labels
    x, y = next(train.batches(2000))
    assert x.shape == (1397, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    # Grey replicated to 3 channels, and the recorded statistics normalise the train split.
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    raw = np.load(builtin_path())["train_images"]
    assert abs(raw.mean() / 255 - DIGITS_MEAN[0]) < 1e-3 and abs(raw.std() / 255 - DIGITS_STD[0]) < 1e-3
    assert abs(x.mean().item()) < 0.01  # bilinear upsampling keeps the mean
    assert set(np.unique(y.numpy())) == set(range(10))
    xi, yi = val[3]
    assert xi.shape == (3, 32, 32) and isinstance(yi, int)


def test_batches_are_seeded_and_limited():
    ds = open_dataset("builtin", split="val", image_size=16)
    a = [y for _, y in ds.batches(64, shuffle=True, seed=5, limit=100)]
    b = [y for _, y in ds.batches(64, shuffle=True, seed=5, limit=100)]
    c = [y for _, y in ds.batches(64, shuffle=True, seed=6, limit=100)]
    assert [len(t) for t in a] == [64, 36]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(torch.cat(a), torch.cat(c))
    assert ds.num_batches(64, limit=100) == 2


def test_calibration_sample_is_seeded_subset():
    ds = open_dataset("builtin", split="train", image_size=16)
    s1, s2 = calibration_sample(ds, 50, seed=1), calibration_sample(ds, 50, seed=1)
    assert len(s1) == 50 and np.array_equal(s1.indices, s2.indices)
    assert not np.array_equal(s1.indices, calibration_sample(ds, 50, seed=2).indices)
    assert len(calibration_sample(ds, 10_000)) == len(ds)
    tr, va = split_dataset(ds, 0.1, seed=0)
    assert len(tr) + len(va) == len(ds) and not set(tr.indices) & set(va.indices)


def test_npz_and_npy_arrays(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(7, 20, 24, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.arange(7) % 3)
    ds = open_dataset(tmp_path / "d.npz", image_size=16)
    assert len(ds) == 7 and ds.classes == ["0", "1", "2"] and ds.has_labels
    x, y = next(ds.batches(7))
    assert x.shape == (7, 3, 16, 16) and y.tolist() == [0, 1, 2, 0, 1, 2, 0]
    # (N,C,H,W) float arrays are model inputs already: used unchanged at the right size.
    f = rng.standard_normal((5, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "f.npy", f)
    fd = open_dataset(str(tmp_path / "f.npy"), image_size=16)
    assert not fd.has_labels and fd[0][1] == -1
    assert torch.equal(next(fd.batches(5))[0], torch.from_numpy(f))
    # ImageNet normalisation for uint8 arrays at their own size.
    g = np.full((2, 16, 16, 3), 255, np.uint8)
    np.save(tmp_path / "g.npy", g)
    xg = open_dataset(tmp_path / "g.npy", image_size=16)[0][0]
    assert torch.allclose(xg[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))


def _write_png(path, value, size=(40, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)


def test_image_folder_and_flat_folder(tmp_path):
    for cls, v in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        for i in range(3):
            _write_png(tmp_path / "imgs" / "val" / cls / f"{i}.png", v)
    ds = open_dataset(tmp_path / "imgs", split="val", image_size=24)
    assert ds.classes == ["cat", "dog"] and len(ds) == 6 and ds.has_labels
    x, y = next(ds.batches(6))
    assert x.shape == (6, 3, 24, 24) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert x[0, 0].mean() > 2 and x[-1, 2].mean() > 2  # red cats, blue dogs after normalisation
    for i in range(4):
        _write_png(tmp_path / "flat" / f"{i}.jpg", (i * 40, 0, 0), size=(50, 50))
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    flat = open_dataset(tmp_path / "flat", image_size=32, channels=1)
    assert len(flat) == 4 and not flat.has_labels and flat.classes == []
    xf, yf = flat[2]
    assert xf.shape == (1, 32, 32) and yf == -1


def test_empty_folder_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no images"):
        open_dataset(tmp_path / "empty", image_size=32)
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "missing", image_size=32)


def test_nan_array_is_a_data_error(tmp_path):
    a = np.zeros((4, 3, 8, 8), np.float32)
    a[2, 1, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", a)
    with pytest.raises(DataError, match="nan.npy.*NaN"):
        open_dataset(tmp_path / "nan.npy", image_size=8)


def test_unreadable_files_are_data_errors(tmp_path):
    _write_png(tmp_path / "f" / "a.png", (1, 2, 3))
    (tmp_path / "f" / "b.png").write_bytes(b"this is not a png")
    ds = open_dataset(tmp_path / "f", image_size=16)
    assert ds[0][0].shape == (3, 16, 16)
    with pytest.raises(DataError, match="b.png"):
        list(ds.batches(2))
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.npz"):
        open_dataset(tmp_path / "bad.npz", image_size=16)
    np.savez(tmp_path / "nokey.npz", weights=np.zeros(3))
    with pytest.raises(DataError, match="images"):
        open_dataset(tmp_path / "nokey.npz", image_size=16)
    np.save(tmp_path / "shape.npy", np.zeros((3, 5, 5, 5, 5), np.uint8))
    with pytest.raises(DataError, match="shape"):
        open_dataset(tmp_path / "shape.npy", image_size=16)


def test_open_train_val_uses_own_split_or_holds_out(tmp_path):
    from repdeploy.data import open_train_val

    tr, va = open_train_val("builtin", image_size=16)
    assert (len(tr), len(va)) == (1397, 400)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            for i in range(5 if split == "train" else 2):
                _write_png(tmp_path / "both" / split / cls / f"{i}.png", (i * 20, 0, 0))
    tr, va = open_train_val(tmp_path / "both", image_size=16)
    assert (len(tr), len(va)) == (10, 4) and tr.classes == va.classes == ["a", "b"]
    for cls in ("a", "b"):
        for i in range(10):
            _write_png(tmp_path / "one" / cls / f"{i}.png", (i * 20, 0, 0))
    tr, va = open_train_val(tmp_path / "one", image_size=16, val_fraction=0.1)
    assert (len(tr), len(va)) == (18, 2) and not set(tr.indices) & set(va.indices)
    _write_png(tmp_path / "other" / "val" / "zebra" / "0.png", (0, 0, 0))
    with pytest.raises(DataError, match="classes"):
        open_train_val(tmp_path / "one", image_size=16, val_source=tmp_path / "other")
