"""Defaults shared by every command and API function, so the same option means the same thing.

quantize, pipeline, qat and bench (and their Python functions) read these constants; docs/cli.md
lists them. Change a default here, once, never in a command.
"""

from __future__ import annotations

#: Calibration: a seeded sample of this many images. 512 settles the entropy/percentile
#: histograms of every zoo model; the cost is one float forward per image.
CALIB_SAMPLES = 512
CALIB_METHOD = "entropy"
CALIB_PERCENTILE = 99.99

#: Per-layer diagnostics after quantization (quant/diagnostics.py MODES): "sample" reads a few
#: images off verification's float and fake-quant passes; "full" adds one forward per layer; "off" none.
DIAGNOSTICS = "sample"

#: Where torch steps run (calibration, verification, QAT; evaluation of torch models):
#: "auto" is the first CUDA GPU when there is one, else the CPU (devices.resolve_device).
DEVICE = "auto"

#: INT8 graph layout when nothing else decides it.
TARGET = "ort"

#: Evaluation batch size (accuracy does not depend on it; memory does).
EVAL_BATCH_SIZE = 64

#: Latency: warm up, then run until both the duration and the iteration count are met
#: (trtexec-style). Short enough for `make demo` over the zoo on 2 cores; serious figures come
#: from `repdeploy bench --duration 10`.
BENCH_WARMUP_S = 0.5
BENCH_DURATION_S = 1.0
BENCH_ITERATIONS = 30
BENCH_BATCH_SIZE = 1
#: Runs extend while a median or the speed-up is noisy (95 % interval wider than +-5 %), up to
#: this many seconds per model; still noisy then, the report says so.
BENCH_MAX_DURATION_S = 6.0
#: `bench` and the pipeline measure each model pair over this many fresh runtime sessions: on a
#: shared machine a session's level can differ from the next one's by more than its own runs vary,
#: and only an interval across sessions predicts what a rerun will show. The interval is a
#: t-interval over the sessions' speed-ups, so their number buys its width: t is 4.30 at 3
#: sessions and 2.36 at 8 (docs/benchmarks.md, "Bench repeatability").
BENCH_SESSIONS = 8

#: Training-side defaults of QAT (the short fine-tune from the PTQ ranges); `pipeline --qat`
#: fine-tunes for as many epochs as `qat` does.
QAT_EPOCHS = 3
QAT_BATCH_SIZE = 64

SEED = 0
