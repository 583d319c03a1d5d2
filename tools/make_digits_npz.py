"""Build repdeploy/assets/digits.npz from the UCI optical digits as scikit-learn ships them.

Provenance: `sklearn/datasets/data/digits.csv.gz` inside the scikit-learn wheel (BSD-3-Clause;
the data is the UCI ML "Optical Recognition of Handwritten Digits" test set, 1,797 images of
8x8 pixels with 17 grey levels, 10 classes, CC BY 4.0). Reproduce with:

    pip download --no-deps scikit-learn -d /tmp/skl && cd /tmp/skl && unzip -o scikit_learn*.whl \
        sklearn/datasets/data/digits.csv.gz
    python tools/make_digits_npz.py /tmp/skl/sklearn/datasets/data/digits.csv.gz

The split is fixed and stratified (seed 0): 40 images per class for validation (400), the rest
(1,397) for training. Grey levels 0..16 are stored as uint8 0..255.
"""

import sys

import numpy as np


def main(csv_gz: str, out: str = "repdeploy/assets/digits.npz") -> None:
    data = np.loadtxt(csv_gz, delimiter=",", dtype=np.float64)
    images = np.round(data[:, :64] * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8)
    labels = data[:, 64].astype(np.int64)
    rng = np.random.default_rng(0)
    val_idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:40] for c in range(10)])
    val_mask = np.zeros(len(labels), bool)
    val_mask[val_idx] = True
    np.savez_compressed(
        out,
        train_images=images[~val_mask], train_labels=labels[~val_mask],
        val_images=images[val_mask], val_labels=labels[val_mask],
        classes=np.array([str(c) for c in range(10)]),
        # the train split's grey-level statistics (pixels in [0, 1]), rounded as data.DIGITS_MEAN/STD:
        # repdeploy normalises this file with them whether it is named 'builtin' or given by path
        mean=np.array([round(float((images[~val_mask] / 255.0).mean()), 4)]),
        std=np.array([round(float((images[~val_mask] / 255.0).std()), 4)]),
    )
    print(f"wrote {out}: {int((~val_mask).sum())} train, {int(val_mask.sum())} val")


if __name__ == "__main__":
    main(*sys.argv[1:])
