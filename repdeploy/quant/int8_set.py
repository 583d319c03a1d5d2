"""The one export -> verify -> commit step of a quantized model, shared by `quantize` and `qat`.

An INT8 deployment set is fused.pt, model_fp32.onnx, model_int8_<target>.onnx (and its uint8-input
copy with --input-format), calib.json and report.json. `write_int8_set` writes them into a scratch
directory, runs every check on the written files (ORT vs torch verdicts, the TensorRT layout rules,
ORT's integer kernels, accuracy on the eval images), lets the command finish its report, and moves
the set into place as one commit with report.json last (rundir.commit_files): a failure leaves the
previous set or nothing, never a mix. The verdicts never raise here: the report's `status` says
what they found, and the caller (the CLI) decides the exit code.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..io import write_json_atomic
from ..models.plain import PlainNet
from ..rundir import commit_files, make_scratch_dir
from .calib_cache import CalibrationCache
from .quantizer import QuantPlainNet

#: The files of a set, by role, in the order they are committed (report.json last).
ROLES = ("fused", "fp32", "int8", "int8_pixels", "calib", "report")


def set_names(target: str, input_format: str = "float") -> dict[str, str]:
    """The file name of each role of a set for `target` (and `input_format`)."""
    names = {"fused": "fused.pt", "fp32": "model_fp32.onnx", "int8": f"model_int8_{target}.onnx",
             "calib": "calib.json", "report": "report.json"}
    if input_format != "float":
        names["int8_pixels"] = f"model_int8_{target}_{input_format.replace('-', '_')}.onnx"
    return names


@dataclass(frozen=True)
class Int8Set:
    """What a set is written from, and the images and data it is judged on."""

    float_model: PlainNet  # the weights the FP32 ONNX holds (QAT: the tuned ones)
    qnet: QuantPlainNet  # the fake-quant model the INT8 ONNX must compute
    cache: CalibrationCache  # the ranges, saved as calib.json
    target: str
    x_verify: torch.Tensor  # verification images, as the model is fed them
    record: Any = None  # preprocess.Preprocessing the model is fed with (None: in-memory data)
    class_names: list[str] | None = None
    fused_extra: dict = field(default_factory=dict)  # what fused.pt records beside the weights
    input_format: str = "float"
    eval_set: Any = None  # labelled images the FP32 and INT8 accuracy is measured on
    eval_limit: int | None = None
    device: torch.device = torch.device("cpu")  # where the torch side of the verification runs
    stage_name: str = "set"  # names the scratch directory (a killed run's is cleaned by its kind)
    diagnostics: str = "off"  # per-layer figures (quant/diagnostics.py), taken off the verification's passes


def write_int8_set(out: Path, names: dict[str, str], s: Int8Set, finish: Callable[[dict, dict], dict],
                   timings: dict[str, float]) -> dict:
    """Write, check and commit the set `names` into `out`; returns its report.

    `finish(figures, timings)` turns the checks' figures into the command's report.json (it must
    set `status`); it runs before the commit, so a report is never committed without its files.
    The figures include the per-layer diagnostics (`diagnostics`, `layers_summary`, `layers`),
    taken by hooks on the verification's own torch passes.
    """
    from ..progress import timed
    from .ptq_report import diagnostics_probe, diagnostics_record

    stage = make_scratch_dir(out, "set", s.stage_name)
    try:
        _export(stage, names, s, timings)
        t0 = time.perf_counter()
        with diagnostics_probe(s.float_model, s.qnet, s.x_verify, s.diagnostics) as probe:
            figures = _check(stage, names, s, lead=probe.images)
        timings["verify_s"] = time.perf_counter() - t0 - probe.seconds
        with timed(timings, "diagnostics_s"):
            figures.update(diagnostics_record(s.float_model, s.qnet, s.x_verify, s.diagnostics, probe))
        timings["diagnostics_s"] += probe.seconds
        if s.eval_set is not None:
            from .fidelity import onnx_accuracy

            with timed(timings, "eval_s", f"evaluating FP32 and INT8 on {s.eval_set.source}"):
                figures.update(onnx_accuracy(stage / names["fp32"], stage / names["int8"], s.eval_set, s.eval_limit))
        report = finish(figures, timings)
        write_json_atomic(stage / names["report"], report)
        commit_files(stage, out, [names[k] for k in ROLES if k in names])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _export(stage: Path, names: dict, s: Int8Set, timings: dict) -> None:
    from ..checkpoints import save_fused
    from ..export.onnx import export_onnx
    from ..export.qdq import export_qdq
    from ..progress import timed, waiting

    spec = s.float_model.spec
    # Each of these is one call that reports nothing (the QDQ graph alone took 7 s for B1g4 on a
    # busy machine): a ticking line says the work is alive.
    with timed(timings, "export_s"):
        with waiting("exporting fused.pt and the FP32 ONNX", announce=True):
            save_fused(s.float_model, stage / names["fused"],
                       extra={**s.fused_extra, "preprocessing": s.record.to_dict() if s.record is not None else None,
                              "class_names": s.class_names})
            export_onnx(s.float_model, stage / names["fp32"], input_size=spec.input_size,
                        in_channels=spec.in_channels, preprocessing=s.record, class_names=s.class_names)
        with waiting(f"writing the INT8 QDQ graph ({s.target} layout)", announce=True):
            export_qdq(s.qnet, stage / names["fp32"], stage / names["int8"], target=s.target)
            s.cache.save(stage / names["calib"])


def _check(stage: Path, names: dict, s: Int8Set, lead: int = 0) -> dict:
    """The verdicts and figures of the written graphs (fidelity.verify_int8), the TensorRT layout
    rules and ORT's integer kernels. `lead`: the diagnostics' sample, run as the first batch."""
    from ..errors import InputError
    from ..export.qdq import check_tensorrt_qdq, count_fused_nodes, integer_node_count
    from ..ingraph import pixels_from_inputs, write_checked
    from ..progress import status
    from .fidelity import verify_int8

    status(f"verifying ONNX Runtime against torch on {len(s.x_verify)} images")
    figures = verify_int8(s.float_model, s.qnet, stage / names["fp32"], stage / names["int8"], s.x_verify, s.target,
                          s.device, record=s.record, lead=lead)
    if "int8_pixels" in names:  # the real verification images, as the 8-bit pixels they came from
        if s.record is None:
            raise InputError(f"--input-format {s.input_format} needs a preprocessing record; in-memory data carries "
                             "none: pass preprocessing=")
        figures["verdicts"].append(write_checked(stage / names["int8"], stage / names["int8_pixels"], s.record,
                                                 s.input_format, pixels_from_inputs(s.x_verify.numpy(), s.record))
                                   .to_dict())
    if s.target == "tensorrt":
        import onnx

        figures["tensorrt_rule_violations"] = check_tensorrt_qdq(onnx.load(str(stage / names["int8"])))
    fused_nodes = count_fused_nodes(stage / names["int8"])
    figures["ort_fused_nodes"] = fused_nodes
    figures["ort_integer_nodes"] = integer_node_count(fused_nodes)
    return figures


def judge_set(figures: dict, allow_mismatch: bool, gate_failures: list[str]) -> dict:
    """`status` and `failures` of a set from its verdicts and the gates' failures (ptq_report.status_word)."""
    from ..verify import failed
    from .ptq_report import status_word

    mismatches = failed(figures["verdicts"])
    return {"status": status_word(mismatches, allow_mismatch, gate_failures),
            "failures": mismatches + gate_failures, "verification_failures": mismatches,
            "gate_failures": list(gate_failures), "allow_mismatch": allow_mismatch}
