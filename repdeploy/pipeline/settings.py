"""What a pipeline run was asked to do: one record every stage reads and none writes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import defaults

BUILTIN_DATA = "builtin"

# Short defaults: `make demo` runs 2-4 small models end to end in a few minutes on 2 cores.
# Serious latency numbers come from `repdeploy bench` with longer --duration.
DEFAULT_WARMUP_S = defaults.BENCH_WARMUP_S
DEFAULT_DURATION_S = defaults.BENCH_DURATION_S
DEFAULT_ITERATIONS = defaults.BENCH_ITERATIONS
DEFAULT_MAX_DURATION_S = defaults.BENCH_MAX_DURATION_S
DEFAULT_BENCH_SESSIONS = defaults.BENCH_SESSIONS


@dataclass
class PipelineSettings:
    data: str = BUILTIN_DATA
    calib_data: str | None = None
    calib_samples: int = defaults.CALIB_SAMPLES
    calib_method: str | None = None  # None: the PTQ default for the family
    engine: str = "ort"
    target: str = "ort"
    max_drop: float | None = None
    min_sqnr: float | None = None  # label-free gate: INT8 vs FP32 SQNR (dB) on the eval images, exit 3
    min_agreement: float | None = None  # label-free gate: INT8 vs FP32 top-1 agreement (0-1), exit 3
    bench_batch: int = 1
    threads: int | None = None
    warmup: float = DEFAULT_WARMUP_S
    duration: float = DEFAULT_DURATION_S
    iterations: int = DEFAULT_ITERATIONS
    max_duration: float = DEFAULT_MAX_DURATION_S
    bench_sessions: int = DEFAULT_BENCH_SESSIONS
    eval_limit: int | None = None
    seed: int = defaults.SEED
    qat: bool = False  # add a QAT column: fine-tune from the PTQ ranges, evaluate its INT8 model
    qat_epochs: int = defaults.QAT_EPOCHS
    qat_lr: float | None = None  # None: qat's default (sgd 0.01)
    train_data: str | None = None  # QAT training images; default: the train split of --data
    allow_mismatch: bool = False  # keep models whose verification failed (recorded per row)
    fallback_float: bool = False  # with max_drop: leave the most sensitive layers in float
    mean: tuple[float, ...] | None = None  # preprocessing overrides (None: the model's record or the data's)
    std: tuple[float, ...] | None = None
    resize: int | None = None
    device: str = defaults.DEVICE  # where torch steps (calibration, verification, QAT) run
    input_size: int | None = None  # every model fed at this size (None: the zoo entry's, else the model's)
    diagnostics: str = defaults.DIAGNOSTICS  # quantize's per-layer records (quant/diagnostics.py MODES)
    labels: str | None = None  # class names file (one per line) for the ONNX metadata; default: the data's
    input_format: str = "float"  # uint8-nhwc / uint8-nchw: also write the INT8 model that normalises in its graph

    def to_dict(self) -> dict:
        return asdict(self)
