"""The end-to-end job: for each checkpoint, load+fuse+verify, export FP32, quantize INT8,
evaluate both, benchmark both, and write one row; then one report over all models.

Each model gets its own run directory (docs/architecture.md):

    <out>/<model>/manifest.json   tool version, command, input sha256, detected arch, settings, timings
                  fused.pt  model_fp32.onnx  model_int8_<target>.onnx  calib.json  report.json
    <out>/report.{json,csv,md,html}

A model that fails a stage is recorded as ERROR with the stage and the message, and the next
model still runs. Every numeric hand-off has a verdict (repdeploy/verify.py: fusion, ORT FP32 vs
torch, ORT INT8 vs torch fake-quant, TensorRT vs ORT); a failed one makes the model FAILED with
the reason and exit code 1, unless `allow_mismatch`, which the row then records. With
`max_drop`, a model whose INT8 top-1 drop exceeds it is FAILED with exit code 3. The caller
exits with that code after everything is written.

The package, in the order data flows through it:

    settings.py  PipelineSettings: what the run was asked to do
    records.py   the typed record each stage returns (ModelJob -> Fused -> Prepared -> Exported
                 -> Quantized -> [Built] -> Evaluated -> Timed -> [QatTuned])
    stages.py    one function per stage: records (+ settings) in, one record out
    row.py       ModelRow, assembled from the records by `assemble_row`, judged by `judge_row`
    run.py       run_pipeline: options, run directories, the stages per model, the report
"""

from .records import (Built, Evaluated, Exported, Fused, ModelJob, Prepared, QatTuned, Quantized, StageFailure,
                      Timed)
from .row import ModelRow, assemble_row, judge_row
from .run import REPORT_EXTENSIONS, PipelineResult, run_pipeline
from .settings import (BUILTIN_DATA, DEFAULT_BENCH_SESSIONS, DEFAULT_DURATION_S, DEFAULT_ITERATIONS,
                       DEFAULT_MAX_DURATION_S, DEFAULT_WARMUP_S, PipelineSettings)
from .stages import OPTIONAL_STAGES, STAGES, calibration_source

__all__ = [
    "run_pipeline", "PipelineSettings", "PipelineResult", "ModelRow", "assemble_row", "judge_row",
    "calibration_source", "ModelJob", "Fused", "Prepared", "Exported", "Quantized", "Built", "Evaluated", "Timed",
    "QatTuned", "StageFailure", "STAGES", "OPTIONAL_STAGES", "BUILTIN_DATA", "REPORT_EXTENSIONS",
    "DEFAULT_WARMUP_S", "DEFAULT_DURATION_S", "DEFAULT_ITERATIONS", "DEFAULT_MAX_DURATION_S", "DEFAULT_BENCH_SESSIONS",
]
