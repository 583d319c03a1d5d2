"""The preprocessing math is written once (repdeploy/pixels.py, numpy + Pillow) and every path uses it.

Checked against an independent reference (torch's antialiased bilinear resize, which follows
Pillow's filter), and the data sources that feed calibration and evaluation are shown to give
the numpy function's output bit for bit.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import repdeploy
from repdeploy.data import open_dataset
from repdeploy import DataError, Preprocessing
from repdeploy.pixels import to_input, to_pixels

RECORD = Preprocessing(24, 28, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def reference(image: np.ndarray, record: Preprocessing) -> np.ndarray:
    """Independent float reference: torch resize (antialiased when shrinking) + crop + normalise."""
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    scale = record.resize / min(h, w)
    nh, nw = max(record.input_size, round(h * scale)), max(record.input_size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h)
    top, left = (nh - record.input_size) // 2, (nw - record.input_size) // 2
    x = x[..., top:top + record.input_size, left:left + record.input_size] / 255.0
    mean = torch.tensor(record.mean).view(1, -1, 1, 1)
    std = torch.tensor(record.std).view(1, -1, 1, 1)
    return ((x - mean) / std).numpy()


@pytest.mark.parametrize("shape", [(40, 53, 3), (17, 12, 3)])  # shrinking and enlarging
def test_numpy_math_matches_an_independent_reference(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    ref = reference(image, RECORD)
    # uint8 and float pixels alike resize in float32: the reference within float rounding
    ours = to_input(image, RECORD)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert np.array_equal(ours, to_input(image.astype(np.float32), RECORD))
    # a planted fault is far outside the bound: the crop one pixel off
    shifted = np.roll(ref, 1, axis=-1)
    assert np.abs(ours - shifted).max() > 100 * 1e-4


def test_data_sources_feed_exactly_the_numpy_function(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 30, 37, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        (tmp_path / "folder" / "c").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(tmp_path / "folder" / "c" / f"{i}.png")
    folder = open_dataset(tmp_path / "folder", image_size=24, channels=3, resize=28)
    x_folder = next(folder.batches(6))[0].numpy()
    assert np.array_equal(x_folder, to_input(list(images), folder.preprocessing))  # bit for bit
    np.save(tmp_path / "images.npy", images)
    arrays = open_dataset(tmp_path / "images.npy", image_size=24, channels=3, resize=28)
    x_arrays = next(arrays.batches(6))[0].numpy()
    assert np.array_equal(x_arrays, to_input(images, arrays.preprocessing))
    assert np.array_equal(x_arrays, x_folder)  # a PNG and its array are one input
    assert np.array_equal(repdeploy.preprocess(images, arrays.preprocessing), x_arrays)


def test_pixels_and_shapes():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    pixels = to_pixels(image, RECORD)
    assert pixels.shape == (1, 24, 24, 3) and pixels.dtype == np.uint8
    x = to_input(image, RECORD)
    normalised = ((pixels.astype(np.float32) / np.float32(255) - np.asarray(RECORD.mean, np.float32))
                  / np.asarray(RECORD.std, np.float32)).transpose(0, 3, 1, 2)
    # to_pixels is to_input's resize rounded to whole levels: within half a level once normalised
    assert np.abs(x - normalised).max() <= 0.5 / 255 / min(RECORD.std) + 1e-5
    square = image[:24, :24]  # nothing to resize: nothing rounded
    record = Preprocessing(24, 24, RECORD.mean, RECORD.std)
    assert np.array_equal(to_pixels(square, record)[0], square)
    # (N,H,W,C), (N,C,H,W), a list of PIL images: one batch
    batch = np.stack([image, image[::-1]])
    from_nchw = to_input(batch.transpose(0, 3, 1, 2), RECORD)
    from_pil = to_input([Image.fromarray(b) for b in batch], RECORD)
    assert np.array_equal(to_input(batch, RECORD), from_nchw) and np.array_equal(from_nchw, from_pil)
    with pytest.raises(DataError, match="8-bit"):
        to_pixels(image.astype(np.float32), RECORD)
    with pytest.raises(DataError, match="not pixel values"):
        to_input(np.array([["a"]]), RECORD)
