"""What a pipeline run was asked to do: one frozen record every stage reads and none writes.

`run_pipeline` takes it (or any of its fields as keyword shortcuts) and `checked` refuses a bad
option, naming it, before the first model starts, not after four stages.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from .. import defaults

BUILTIN_DATA = "builtin"

# Short defaults: `make demo` runs 2-4 small models end to end in a few minutes on 2 cores.
# Serious latency numbers come from `repdeploy bench` with longer --duration.
DEFAULT_WARMUP_S = defaults.BENCH_WARMUP_S
DEFAULT_DURATION_S = defaults.BENCH_DURATION_S
DEFAULT_ITERATIONS = defaults.BENCH_ITERATIONS
DEFAULT_MAX_DURATION_S = defaults.BENCH_MAX_DURATION_S
DEFAULT_BENCH_SESSIONS = defaults.BENCH_SESSIONS


#: QAT epochs beyond this are a typo (the pipeline's QAT column is a short fine-tune).
MAX_QAT_EPOCHS = 1000


@dataclass(frozen=True)
class PipelineSettings:
    data: str | None = None  # labelled validation images; None: the built-in digits
    calib_data: str | None = None
    calib_samples: int = defaults.CALIB_SAMPLES
    calib_method: str | None = defaults.CALIB_METHOD  # None: the PTQ default
    engine: str = "ort"
    target: str | None = None  # None: tensorrt for --engine trt, else ort
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
    # checkpoints.load options (--arch, --ema, ...); a zoo entry adds its arch. Not in the report.
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Defaults that depend on nothing given are resolved once, so every stage reads one value.
        if self.target is None:  # the layout the engine runs
            object.__setattr__(self, "target", "tensorrt" if self.engine == "trt" else "ort")
        if self.data is None:
            object.__setattr__(self, "data", BUILTIN_DATA)

    def to_dict(self) -> dict:
        record = asdict(self)
        record.pop("load_kwargs")
        return record


def checked(s: PipelineSettings) -> PipelineSettings:
    """`s` with its defaults resolved (target, data, calibration method), or InputError naming the
    first bad option."""
    from .. import validate
    from ..errors import InputError
    from ..ingraph import check_input_format
    from ..quant.diagnostics import check_mode
    from ..quant.ptq_report import check_fidelity_bounds

    if s.engine not in ("ort", "trt"):
        raise InputError(f"pipeline engine {s.engine!r}: choose ort or trt (torch is for `repdeploy bench`)")
    target = s.target or ("tensorrt" if s.engine == "trt" else "ort")
    if target not in ("ort", "tensorrt"):
        raise InputError(f"INT8 target {target!r}: choose ort or tensorrt")
    if s.engine == "trt" and target == "ort":
        raise InputError("--engine trt with --target ort: the ort INT8 layout (uint8 activations) is not a TensorRT "
                         "explicit-quantization graph; use --target tensorrt")
    validate.max_drop("--max-drop", s.max_drop)
    check_fidelity_bounds(s.min_sqnr, s.min_agreement)
    validate.bench_options(batch=s.bench_batch, warmup=s.warmup, duration=s.duration, iterations=s.iterations,
                           threads_=s.threads)
    validate.number("--max-duration", s.max_duration, low=0.0, high=validate.MAX_SECONDS, allow_none=False)
    validate.integer("--sessions", s.bench_sessions, low=1, high=100, allow_none=False)
    validate.integer("--calib-samples", s.calib_samples, low=1, allow_none=False)
    validate.integer("--eval-limit", s.eval_limit, low=1)
    validate.integer("--qat-epochs", s.qat_epochs, low=1, high=MAX_QAT_EPOCHS, allow_none=False)
    validate.number("--qat-lr", s.qat_lr, low=0.0, low_open=True)
    validate.resize("--resize", s.resize)
    validate.input_size("--input-size", s.input_size)
    validate.seed("--seed", s.seed)
    check_mode(s.diagnostics)
    if s.fallback_float and s.max_drop is None:
        raise InputError("--fallback-float needs --max-drop: the drop it leaves layers in float to meet")
    if s.labels is not None:
        from ..metadata import read_labels

        read_labels(s.labels)  # an unreadable or empty file is refused before the first model starts
    check_input_format(s.input_format)
    if s.engine == "trt":
        from ..export.tensorrt import import_tensorrt

        import_tensorrt()  # exit 4 before anything is written
    if s.engine == "ort" and target == "tensorrt":
        warnings.warn("the tensorrt INT8 layout is not meant for ONNX Runtime: its ORT latency is no guide to "
                      "TensorRT's (it runs slower than FP32 on ORT CPU); use --engine trt on a GPU machine",
                      stacklevel=3)
    return replace(s, target=target, data=s.data or BUILTIN_DATA,
                   calib_method=s.calib_method or defaults.CALIB_METHOD,  # the report names the method, never None
                   mean=tuple(s.mean) if s.mean is not None else None,
                   std=tuple(s.std) if s.std is not None else None,
                   labels=str(s.labels) if s.labels is not None else None,
                   load_kwargs={k: v for k, v in (s.load_kwargs or {}).items() if v})
