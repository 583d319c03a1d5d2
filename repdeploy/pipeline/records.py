"""The records the pipeline's stages hand each other, one per stage, in the order they are made:

    ModelJob -> Fused -> Prepared -> Exported -> Quantized -> [Built] -> Evaluated -> Timed -> [QatTuned]

A stage is a function of the records it needs (and the settings) that returns its own record
(repdeploy/pipeline/stages.py); the report row is assembled from whichever records a model got
to (repdeploy/pipeline/row.py). Records are frozen: a stage never changes what an earlier one
made. Built (TensorRT engines) exists only with --engine trt, QatTuned only with --qat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..bench import BenchResult
    from ..bench import Speedup
    from ..data import ImageDataset
    from ..errors import RepDeployError
    from ..models.specs import ArchSpec
    from ..models.plain import PlainNet


@dataclass(frozen=True)
class ModelJob:
    """One model to run: its checkpoint, how to load it, and where its files go."""

    name: str
    checkpoint: Path
    run_dir: Path  # the staging directory every stage writes into
    final_dir: Path  # what run_dir becomes once the model is done; the row names this one
    load_kwargs: dict[str, Any] = field(default_factory=dict)  # checkpoints.load_fused options; QAT reloads with them
    input_size: int | None = None  # the zoo entry's; None: the checkpoint's own
    sha256: str | None = None  # of the checkpoint file, for the manifest and fused.pt


@dataclass(frozen=True)
class Fused:
    """The checkpoint loaded, fused to a PlainNet and verified, and what it was detected to be."""

    plain: PlainNet
    variant: str
    family: str
    form: str  # the stored form (train, deploy, ...): QAT's structural prior depends on it
    detected: dict  # checkpoints.Loaded.to_dict(), for the manifest
    fusion: dict  # the fusion's equivalence figures, or {"already_plain": True}
    input_size: int

    @property
    def spec(self) -> ArchSpec:
        return self.plain.spec


@dataclass(frozen=True)
class Prepared:
    """The evaluation images, and fused.pt written with the preprocessing they are fed with."""

    val: ImageDataset
    fused_pt: Path


@dataclass(frozen=True)
class Exported:
    """model_fp32.onnx, with the preprocessing it is fed with in its metadata."""

    fp32_onnx: Path


@dataclass(frozen=True)
class Quantized:
    """The INT8 model and its calibration, with what PTQ found out on the way."""

    int8_onnx: Path
    calib_cache: Path  # calib.json: the ranges QAT starts from
    calibration: dict  # source, on_eval_data, method, samples [, fallback]: the row's calibration record
    diagnostics: dict  # per-layer statistics and SQNR (summary, layers, float_layers)
    verdicts: tuple[dict, ...]  # PTQ's own hand-offs (ORT FP32 vs torch, ORT INT8 vs fake-quant)
    report: dict  # the whole PTQ report, kept in the run's report.json as `ptq`


@dataclass(frozen=True)
class Built:
    """TensorRT engines of the FP32 and INT8 graphs, built in the run directory (--engine trt)."""

    fp32_engine: Path
    int8_engine: Path


@dataclass(frozen=True)
class Evaluated:
    """FP32 and INT8 accuracy on the same images, and how far the INT8 logits stray."""

    fp32_top1: float
    fp32_top5: float | None
    int8_top1: float
    int8_top5: float | None
    images: int
    top1_agreement: float  # percent of images where FP32 and INT8 agree
    sqnr_db: float  # INT8 logits vs FP32 logits
    verdicts: tuple[dict, ...] = ()  # TensorRT vs ONNX Runtime, with --engine trt

    @property
    def top1_drop(self) -> float:
        return self.fp32_top1 - self.int8_top1


@dataclass(frozen=True)
class Timed:
    """FP32 and INT8 latency over fresh sessions, and the speed-up with its interval."""

    fp32: BenchResult
    int8: BenchResult
    speedup: Speedup


@dataclass(frozen=True)
class QatTuned:
    """The QAT INT8 model, fine-tuned from this run's PTQ ranges, and its accuracy (--qat)."""

    int8_onnx: Path
    top1: float
    verdicts: tuple[dict, ...]  # QAT's hand-offs, named qat_*


class StageFailure(Exception):
    """A stage raised: which one, and the error as a RepDeployError (its exit code goes in the row)."""

    def __init__(self, stage: str, error: RepDeployError) -> None:
        super().__init__(str(error))
        self.stage, self.error = stage, error
