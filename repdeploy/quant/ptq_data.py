"""The images a `quantize` run works on: the calibration source, the eval set, the fallback holdout,
and the verification images, all fed one preprocessing record.

`open_ptq_data` checks everything that can reject the data before any expensive step;
`verification_images` picks, after calibration, the images the verdicts are computed on: the eval
set when given, else images held out of calibration, else (forward_loop, in-memory data) the first
calibration images, which the report says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DataError, InputError
from ..models.plain import PlainNet
from ..tolerance import MIN_VERIFY_IMAGES
from .calib_cache import CalibrationCache
from .fidelity import VERIFY_IMAGES, images_for, verification_split
from .settings import QuantizeSettings

BATCH = 32
FALLBACK_HOLDOUT = 256  # labelled calibration-source images the float layers are chosen on


@dataclass(frozen=True)
class PtqData:
    """What `open_ptq_data` found: each set, or None where the run has none."""

    calib_data: Any  # the source, "builtin" for a zoo model given none
    preprocessing: Any  # the record the sets are fed with (None: in-memory data, the caller's)
    cache_in: CalibrationCache | None
    eval_set: Any
    calib_set: Any  # the seeded calibration sample (of a path's images)
    calib_source: Any  # calib_data.CalibrationSource calibration iterates (None: cache or forward_loop)
    holdout: Any  # fallback's labelled holdout of the calibration source
    held_out: Any  # images held out of calibration to verify on (no eval data)
    n_verify: int


def in_memory(source) -> bool:
    from ..data import ImageDataset

    return not isinstance(source, (str, os.PathLike, ImageDataset))


def image_set(source, split: str, plain: PlainNet, s: QuantizeSettings, preprocessing):
    """`source` as an image set at the model's input (the forms `evaluate` takes too: data/forms.py)."""
    from ..data import as_dataset

    spec = plain.spec
    return as_dataset(source, split=split, image_size=spec.input_size, channels=spec.in_channels, mean=s.mean,
                      std=s.std, resize=s.resize, preprocessing=preprocessing, what=f"{split} data")


def open_ptq_data(model, plain: PlainNet, info: dict, s: QuantizeSettings) -> PtqData:
    """Every set the run uses, opened and checked (see the module docstring)."""
    from ..data import calibration_sample, holdout_split, same_images
    from ..data.labels import class_names_for
    from ..preprocess import Preprocessing
    from ..recorded import preprocessing_of
    from .calib_data import from_dataset, open_calibration_data

    spec = plain.spec
    calib_data, preprocessing = s.calib_data, s.preprocessing
    cache_in = None
    if s.calib_cache is not None:
        cache_in = CalibrationCache.load(s.calib_cache)
        cache_in.check_model(plain, source=str(s.calib_cache))
    if preprocessing is None and isinstance(model, (str, os.PathLike)):
        preprocessing = preprocessing_of(model)
    if preprocessing is None and cache_in is not None and isinstance(cache_in.data.get("preprocessing"), dict):
        preprocessing = Preprocessing.from_dict(cache_in.data["preprocessing"], f"{s.calib_cache} data.preprocessing")
    if s.forward_loop is not None and calib_data is not None:
        raise InputError("give calib_data or forward_loop, not both")
    if s.forward_loop is not None and not callable(s.forward_loop):
        raise InputError(f"forward_loop must be a callable taking the model, got {type(s.forward_loop).__name__}")
    if calib_data is None and cache_in is None and s.forward_loop is None:
        if not info.get("zoo"):
            raise DataError("no calibration data: pass --calib-data (image folder, .npy/.npz, or 'builtin' "
                            "for the built-in digits) or --calib-cache FILE")
        calib_data = "builtin"
    # One record feeds calibration and evaluation alike: the given one, the model's or the
    # cache's, else the evaluation data's defaults (where a wrong one shows in the accuracy).
    eval_set = image_set(s.eval_data, "val", plain, s, preprocessing) if s.eval_data is not None else None
    if preprocessing is None and eval_set is not None:
        preprocessing = eval_set.preprocessing
    n_verify = images_for(spec.input_size, VERIFY_IMAGES, MIN_VERIFY_IMAGES)
    if s.eval_limit is not None:
        n_verify = max(1, min(n_verify, s.eval_limit))
    calib_set = holdout = held_out = None
    if s.fallback and s.max_drop is not None:
        if calib_data is None:
            raise DataError("--fallback-float with --calib-cache needs --calib-data too: the layers to leave in "
                            "float are chosen on a labelled holdout of the calibration images, never the eval set")
        pool, holdout = holdout_split(image_set(calib_data, "train", plain, s, preprocessing), FALLBACK_HOLDOUT,
                                      s.seed)
        if not holdout.has_labels:
            raise DataError(f"--fallback-float needs labelled calibration images ({calib_data} has no labels): the "
                            "layers are chosen on a holdout of them; use class folders or labels in the .npz")
        if eval_set is not None and same_images(holdout, eval_set):
            raise DataError(f"--fallback-float: the calibration data {calib_data} is the eval data {s.eval_data}; "
                            "give calibration images of their own (a train split) so layers are not chosen on the "
                            "images they are judged on")
        if cache_in is None:
            calib_set = calibration_sample(pool, s.calib_samples, s.seed)
    elif cache_in is None and s.forward_loop is None and not in_memory(calib_data):
        pool = image_set(calib_data, "train", plain, s, preprocessing)
        if eval_set is None:  # verdicts on images calibration never saw
            pool, held_out = verification_split(pool, s.calib_samples, n_verify, s.seed)
        calib_set = calibration_sample(pool, s.calib_samples, s.seed)
    calib_source = None
    if calib_set is not None:
        calib_source = from_dataset(calib_set, BATCH)
    elif cache_in is None and s.forward_loop is None:
        calib_source = open_calibration_data(calib_data, samples=s.calib_samples, seed=s.seed,
                                             image_size=spec.input_size, channels=spec.in_channels, batch_size=BATCH,
                                             mean=s.mean, std=s.std)
    if eval_set is not None:
        from ..data.folders import check_class_match

        check_class_match(eval_set, spec.num_classes, info["variant"])  # by name, never shifted by position
    if eval_set is not None and not eval_set.has_labels:
        raise DataError(f"eval data {eval_set.source} has no labels; give a class-folder layout or labels in the .npz")
    if s.labels is not None:
        class_names_for(spec.num_classes, labels=s.labels)  # a labels file that does not fit fails before any work
    return PtqData(calib_data, preprocessing, cache_in, eval_set, calib_set, calib_source, holdout, held_out,
                   n_verify)


@dataclass(frozen=True)
class Verification:
    """The images the verdicts are computed on, and what they are."""

    x: torch.Tensor
    name: str
    disjoint: bool  # no verification image is a calibration image
    overlap: bool  # the eval set is the calibration sample's images
    val_set: Any  # the val split opened for it (cache given, no eval data), else None


def verification_images(d: PtqData, seen: list[torch.Tensor], plain: PlainNet, s: QuantizeSettings) -> Verification:
    """The verification images of a run whose calibration kept its first images in `seen`."""
    from ..data import same_images
    from .calib_data import open_calibration_data

    spec = plain.spec
    overlap = d.eval_set is not None and d.calib_set is not None and same_images(d.calib_set, d.eval_set)
    disjoint = d.held_out is not None or (d.eval_set is not None and not overlap)
    if d.eval_set is not None or d.held_out is not None:
        chosen = d.eval_set if d.eval_set is not None else d.held_out
        name = chosen.source + ("" if d.eval_set is not None else " (held out of calibration)")
        x = torch.cat([b for b, _ in chosen.batches(BATCH, limit=d.n_verify)])
        return Verification(x, name, disjoint, overlap, None)
    if seen:
        name = d.calib_source.source if d.calib_source is not None else "forward_loop inputs"
        return Verification(torch.cat(seen), name, disjoint, overlap, None)
    if d.calib_data is not None and in_memory(d.calib_data):
        # cache given with in-memory data: the first images of that data
        first = open_calibration_data(d.calib_data, samples=d.n_verify, seed=s.seed, image_size=spec.input_size,
                                      channels=spec.in_channels, batch_size=BATCH, mean=s.mean, std=s.std)
        return Verification(torch.cat(list(first.batches())), first.source, disjoint, overlap, None)
    # cache given, no eval data: the first images of the val split
    val = image_set(d.calib_data if d.calib_data is not None else "builtin", "val", plain, s, d.preprocessing)
    x = torch.cat([b for b, _ in val.batches(BATCH, limit=d.n_verify)])
    return Verification(x, val.source, val.split == "val", overlap, val)
