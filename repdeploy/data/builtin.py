"""The built-in dataset: the UCI handwritten digits shipped as repdeploy/assets/digits.npz.

8x8 grey images in 10 classes with a fixed train/val split; `open_dataset("builtin")` reads them
as an .npz (data.arrays) with the digits' own statistics, upsampled to the model's input size.
"""

from __future__ import annotations

from pathlib import Path

# Grey-level statistics of the built-in digits' train split (pixels scaled to [0, 1]), measured
# once with numpy over the 1,397 8x8 training images.
DIGITS_MEAN = (0.3058, 0.3058, 0.3058)
DIGITS_STD = (0.3761, 0.3761, 0.3761)
BUILTIN_NAMES = ("builtin", "digits")


def builtin_path() -> Path:
    """Where the shipped digits archive lives."""
    return Path(__file__).resolve().parent.parent / "assets" / "digits.npz"


def is_builtin(source) -> bool:
    """Whether a data source names the built-in set (None, "builtin" or "digits")."""
    return source is None or str(source).lower() in BUILTIN_NAMES


def builtin_classes() -> list[str]:
    """The digits' class names, as the shipped archive lists them ("0" .. "9")."""
    import numpy as np

    with np.load(builtin_path(), allow_pickle=False) as archive:
        return [str(c) for c in archive["classes"]]
