"""The exit code of a command, decided from the results the library hands back.

The library never raises once it has written its outputs: `quantize`, `qat` and `run_pipeline`
return results that carry their status and the failed checks. The command line alone turns them
into an exit code (docs/cli.md): 1 when a model does not compute what was measured (a failed
verdict without --allow-mismatch, or a `compare` mismatch), 3 when a model is over an accuracy
or fidelity gate, else a stage error's own code.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import AccuracyGateError, VerificationError


def raise_for_results(results: Sequence, what: str = "") -> None:
    """Raise the error of the worst outcome among quantize/qat `results` (a failed verdict outranks a gate).

    Each result has `status`, `verification_failures`, `gate_failures`, `report` and `output_dir`.
    """
    mismatched, gated = [], []
    for r in results:
        if r.status != "FAILED":
            continue
        model = f"{r.report.get('model', '?')}{what}"
        where = r.output_dir / "report.json"
        if r.verification_failures and not r.report.get("allow_mismatch"):
            mismatched.append(f"{model}: {r.verification_failures[0]}; the INT8 model does not compute what was "
                              f"measured (see {where} verdicts); pass --allow-mismatch to keep it anyway")
        elif r.gate_failures:
            gate = r.report.get("accuracy_gate") or {}
            dropped = (f"INT8 top-1 dropped {r.report['top1_drop']:.2f} points > --max-drop {gate['max_drop']}"
                       if gate.get("passed") is False else f"INT8 {r.gate_failures[0]}")
            hint = "" if what else " (layers_summary.most_sensitive_layers) or try QAT"
            gated.append(f"{model}: {dropped}; see {where}{hint}")
    if mismatched:
        raise VerificationError(mismatched[0] if len(mismatched) == 1 else
                                f"{len(mismatched)} models failed verification: {mismatched[0]}")
    if gated:
        raise AccuracyGateError(gated[0] if len(gated) == 1 else f"{len(gated)} models failed the gate: {gated[0]}")


def pipeline_exit(rows: Sequence, max_drop: float | None) -> tuple[int, str | None]:
    """(exit code, the one `error:` line) of a pipeline run's rows: 1 when a model failed verification,
    else 3 when one is over a gate, else the first stage error's code, else 0."""
    failed = [r for r in rows if r.status == "FAILED"]
    if any(r.exit_code == 1 for r in failed):
        names = [r.name for r in failed if r.exit_code == 1]
        return 1, (f"verification failed for {', '.join(names)} (see the parity column; --allow-mismatch keeps "
                   "such models)")
    if failed:
        gate = f"top-1 drop > {max_drop:g} points" if max_drop is not None else "see the report"
        return 3, f"accuracy gate failed for {', '.join(r.name for r in failed)} ({gate})"
    errors = [r for r in rows if r.status == "ERROR"]
    if errors:
        # Rows that stopped at a stage: the same one `error:` line a command gives (issue 21 N17).
        more = f" (and {len(errors) - 1} more model(s), see the report)" if len(errors) > 1 else ""
        return errors[0].exit_code, f"{errors[0].name}: {errors[0].failed_stage}: {errors[0].error}{more}"
    return 0, None
