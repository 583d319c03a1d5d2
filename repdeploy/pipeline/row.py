"""One model's report row: assembled from the stage records it got to, then judged.

`assemble_row` is the only place a row's figures are filled in, so every field of report.json,
the CSV, the markdown and the HTML traces back to one record; `judge_row` is the gate (the
verdicts, the accuracy drop) that makes it PASSED or FAILED.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .records import Evaluated, Fused, ModelJob, Prepared, QatTuned, Quantized, StageFailure, Timed
from .settings import PipelineSettings


@dataclass
class ModelRow:
    """One model's outcome; `to_dict()` is the record report.py renders."""

    name: str
    checkpoint: str
    run_dir: str
    status: str = "ERROR"  # PASSED | FAILED (a verdict or a gate) | KEPT (--allow-mismatch) | ERROR (a stage raised)
    failed_stage: str | None = None
    error: str | None = None
    exit_code: int = 0
    arch: str | None = None
    family: str | None = None
    num_classes: int | None = None
    engine: str = "ort"
    target: str = "ort"
    bench_batch: int = 1
    threads: int | None = None
    fp32_top1: float | None = None
    fp32_top5: float | None = None
    int8_top1: float | None = None
    int8_top5: float | None = None
    top1_drop: float | None = None
    top1_agreement: float | None = None  # percent of val images where FP32 and INT8 agree
    sqnr_db: float | None = None  # INT8 logits vs FP32 logits
    fp32_ms: float | None = None  # median latency at bench_batch
    int8_ms: float | None = None
    speedup: float | None = None  # fp32_ms / int8_ms
    fp32_ms_ci: list | None = None  # bootstrap 95 % interval of the median [low, high]
    int8_ms_ci: list | None = None
    speedup_ci: list | None = None  # 95 % interval of the speed-up over sessions and interleaved rounds
    speedup_sessions: list | None = None  # the speed-up of each fresh session on its own
    latency_noisy: bool | None = None  # an interval above is wider than +-5 %
    qat_top1: float | None = None  # INT8 top-1 after QAT (with --qat)
    qat_drop: float | None = None
    eval_images: int | None = None  # how many images the accuracies above were measured on
    parity: str | None = None  # ok | MISMATCH (checks) [allowed]: the verdicts in one cell
    verdicts: list = field(default_factory=list)  # verify.Verdict records, one per numeric hand-off
    warnings: list = field(default_factory=list)  # sanity warnings shown beside the figures
    allow_mismatch: bool = False
    preprocessing: dict | None = None  # the record the model is fed with (preprocess.Preprocessing)
    fusion: dict | None = None
    calibration: dict | None = None
    diagnostics: dict | None = None
    bench: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def assemble_row(job: ModelJob, s: PipelineSettings, *, fused: Fused | None = None, prepared: Prepared | None = None,
                 quantized: Quantized | None = None, evaluated: Evaluated | None = None, timed: Timed | None = None,
                 tuned: QatTuned | None = None, failure: StageFailure | None = None, timings: dict | None = None,
                 artifacts: list[str] | None = None) -> ModelRow:
    """The row of a model that got as far as the records given: ERROR at `failure`'s stage, or
    judged by `judge_row` when every stage ran. A record not reached leaves its fields empty."""
    row = ModelRow(name=job.name, checkpoint=str(job.checkpoint), run_dir=str(job.final_dir), engine=s.engine,
                   target=s.target, bench_batch=s.bench_batch, threads=s.threads, allow_mismatch=s.allow_mismatch,
                   timings=dict(timings or {}), artifacts=list(artifacts or []))
    if fused is not None:
        row.arch, row.family, row.num_classes = fused.variant, fused.family, fused.spec.num_classes
        row.fusion = fused.fusion
    if prepared is not None:
        row.preprocessing = prepared.val.preprocessing.to_dict()
    if quantized is not None:
        row.calibration, row.diagnostics = dict(quantized.calibration), dict(quantized.diagnostics)
        row.verdicts += quantized.verdicts
    if evaluated is not None:
        e = evaluated
        row.fp32_top1, row.fp32_top5, row.int8_top1, row.int8_top5 = e.fp32_top1, e.fp32_top5, e.int8_top1, e.int8_top5
        row.eval_images, row.top1_drop = e.images, e.top1_drop
        row.top1_agreement, row.sqnr_db = e.top1_agreement, e.sqnr_db
        row.verdicts += e.verdicts
    if timed is not None:
        _fill_latency(row, timed)
    if tuned is not None:
        row.verdicts += tuned.verdicts
        row.qat_top1 = tuned.top1
        row.qat_drop = row.fp32_top1 - tuned.top1 if row.fp32_top1 is not None else None
    if failure is not None:
        row.status, row.failed_stage = "ERROR", failure.stage
        row.error = str(failure.error)
        row.exit_code = getattr(failure.error, "exit_code", 1)
    else:
        judge_row(row, s)
    return row


def _fill_latency(row: ModelRow, timed: Timed) -> None:
    for label, result in (("fp32", timed.fp32), ("int8", timed.int8)):
        record = result.to_dict()
        record.pop("environment")  # once per report, not per row
        record["precision"] = label
        row.bench.append(record)
    fp32, int8, speedup = timed.fp32.stats, timed.int8.stats, timed.speedup
    row.fp32_ms, row.int8_ms = fp32.median_ms, int8.median_ms
    row.fp32_ms_ci = [fp32.median_ci_low_ms, fp32.median_ci_high_ms]
    row.int8_ms_ci = [int8.median_ci_low_ms, int8.median_ci_high_ms]
    row.speedup = speedup.ratio if row.int8_ms > 0 else None
    row.speedup_ci = [speedup.ci_low, speedup.ci_high]
    row.speedup_sessions = list(speedup.session_ratios)
    row.latency_noisy = bool(fp32.noisy or int8.noisy or speedup.noisy)


def judge_row(row: ModelRow, s: PipelineSettings) -> None:
    """The row's verdict: FAILED (exit 1) on a failed hand-off unless --allow-mismatch (then KEPT,
    never PASSED), FAILED (exit 3) over --max-drop or under --min-sqnr / --min-agreement, else
    PASSED; sanity warnings and the parity cell either way."""
    from ..verify import failed, fusion_verdict, kept_line, parity_cell, sanity_warnings, warning

    fusion = fusion_verdict(row.fusion)
    if fusion is not None and not any(v.get("check") == "fusion" for v in row.verdicts):
        row.verdicts.insert(0, fusion.to_dict())
    row.parity = parity_cell(row.verdicts, allowed=s.allow_mismatch)
    row.warnings = sanity_warnings(fp32_top1=row.fp32_top1, num_classes=row.num_classes, eval_images=row.eval_images,
                                   calib_on_eval=bool((row.calibration or {}).get("on_eval_data")))
    if row.latency_noisy:
        lo, hi = row.speedup_ci or (None, None)
        interval = f" (speed-up 95 % interval {lo:.2f}-{hi:.2f}x)" if lo is not None else ""
        row.warnings.append(warning("noisy", f"latency is noisy: an interval is wider than +-5 % of its median after "
                                    f"the --max-duration cap{interval}; close other programs or run longer"))
    mismatches = failed(row.verdicts)
    row.status = "PASSED"
    if mismatches:
        if not s.allow_mismatch:
            row.status, row.exit_code, row.failed_stage = "FAILED", 1, "verification"
            row.error = "verification failed: " + "; ".join(mismatches)
            return
        row.status = "KEPT"
        row.warnings.append(warning("MISMATCH allowed", "verification FAILED but kept by --allow-mismatch: "
                                    + "; ".join(mismatches)))
        row.error = kept_line(mismatches)
    # With --qat the user deploys whichever INT8 model is better, so the gate judges that one.
    drops = [d for d in (row.top1_drop, row.qat_drop) if d is not None]
    drop = min(drops) if drops else None
    if s.max_drop is not None and drop is not None and drop > s.max_drop:
        row.status = "FAILED"
        row.error = f"top-1 drop {drop:.2f} points > --max-drop {s.max_drop:g}"
        row.exit_code = 3
        return
    # Without labels the drop means nothing; fidelity to FP32 (the eval images) still does.
    agreement = row.top1_agreement / 100.0 if row.top1_agreement is not None else None
    low = ([f"SQNR vs FP32 {row.sqnr_db:.2f} dB < --min-sqnr {s.min_sqnr:g}"]
           if s.min_sqnr is not None and row.sqnr_db is not None and row.sqnr_db < s.min_sqnr else [])
    low += ([f"top-1 agreement with FP32 {agreement:.1%} < --min-agreement {s.min_agreement:.1%}"]
            if s.min_agreement is not None and agreement is not None and agreement < s.min_agreement else [])
    if low:
        row.status, row.error, row.exit_code = "FAILED", "; ".join(low), 3
