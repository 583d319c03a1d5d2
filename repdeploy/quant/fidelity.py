"""Fidelity of an exported INT8 ONNX: what PTQ and QAT check before they call a model deployable.

On the same images, in ONNX Runtime: the FP32 ONNX against the torch FP32 model, the INT8 ONNX
against the torch fake-quant model (parity: the graph computes what was calibrated or trained)
and against the FP32 ONNX (fidelity: SQNR and top-1 agreement); with labelled data, top-1/top-5
of both ONNX files. The verdicts and their tolerances are the one comparison's
(repdeploy/tolerance.py); ORT INT8 is judged as a deployment of the fake-quant model, fed as its
own metadata says (so a wrong mean/std in the deployed file shows), plus a check that the graph
quantizes every layer the simulation quantizes. Verification images are held out of calibration
(`verification_split`) unless the user's own eval set is given.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..models.plain import PlainNet
from .quantizer import QuantPlainNet

VERIFY_IMAGES = 256  # images used for torch-vs-ORT parity and FP32-vs-INT8 fidelity (at <= 64 px)
# (scaled down with the pixels, never below tolerance.MIN_VERIFY_IMAGES: the deployment rule's sign test)
VERIFY_BATCH = 32  # images per torch forward, and per ORT run at <= 64 px (fewer at larger inputs: `ort_batch`)


def images_for(input_size: int, count: int, floor: int) -> int:
    """Scale an image count set for <= 64 px inputs down with the pixel count (A0 at 224: 1/12).

    Verification and diagnostics run the fake-quant torch model, whose cost grows with the
    pixels; at 224 px the full counts took minutes on 2 cores for figures that settle sooner.
    """
    scale = min(1.0, (64.0 / max(1, input_size)) ** 2)
    return max(floor, min(count, int(round(count * scale))))


def ort_batch(x: torch.Tensor) -> int:
    """Images per ONNX Runtime run for NCHW images `x`: VERIFY_BATCH at <= 64 px, scaled down with
    the pixels to 8 at 224 px, so a progress step stays short (a run of 32 took RepVGG-B1g4 many
    seconds on 2 busy cores). Torch keeps batches of VERIFY_BATCH: on the CPU it ran 64 images at
    224 px 3-10x slower in batches of 3 than of 32 under load; its bar steps per layer instead."""
    return images_for(max(x.shape[-2:]), VERIFY_BATCH, 8)


def run_ort(path: Path, x: torch.Tensor, description: str | None = None) -> np.ndarray:
    """Logits of an ONNX file on ONNX Runtime for NCHW images `x`, in batches (with a progress bar
    on a terminal: `description`, or the file's name)."""
    from ..export.onnx import ort_session
    from ..progress import track

    session = ort_session(path)
    name = session.get_inputs()[0].name
    chunks = x.split(ort_batch(x))
    return np.concatenate([session.run(None, {name: chunk.numpy()})[0]
                           for chunk in track(chunks, description or f"ONNX Runtime: {Path(path).name}", len(chunks))])


def verification_split(dataset, calib_samples: int, n_verify: int, seed: int = 0):
    """Seeded (calibration pool, verification images) that share no image.

    The images a calibration sample of `calib_samples` leaves over are verified on, up to
    `n_verify`; when too few are left, up to half of the set is held out of calibration instead.
    """
    import numpy as np

    total = len(dataset)
    spare = total - min(calib_samples, total)
    k = min(n_verify, max(spare, total // 2))
    if k < 1 or total - k < 1:
        return dataset, None
    perm = np.random.default_rng(seed + 2).permutation(total)  # a stream of its own (splits.py uses seed, seed + 1)
    return dataset.subset(np.sort(perm[k:])), dataset.subset(np.sort(perm[:k]))


def as_deployed(x: torch.Tensor, fed, deployed) -> torch.Tensor:
    """Images normalised with record `fed`, renormalised as the deployed file's record says.

    A service feeds the deployed model as its metadata says; a record that differs from the one
    the model was calibrated with shows up here as a deviation instead of going unseen.
    """
    if fed is None or deployed is None or (fed.mean, fed.std) == (deployed.mean, deployed.std):
        return x
    if len(fed.mean) != len(deployed.mean) or len(fed.mean) != x.shape[1]:
        return x  # a channel mismatch fails the runtime's own shape check instead
    shape = (1, -1, 1, 1)
    raw = x * torch.tensor(fed.std).reshape(shape) + torch.tensor(fed.mean).reshape(shape)
    return (raw - torch.tensor(deployed.mean).reshape(shape)) / torch.tensor(deployed.std).reshape(shape)


def graph_verdict(qnet: QuantPlainNet, int8_onnx: Path):
    """Whether the INT8 graph holds what was calibrated: it quantizes (activation and weight
    through DequantizeLinear) as many convs/gemms as the simulation does, and every activation
    scale, weight scale and int8 weight in it is the simulation's own. A missing Q/DQ pair, a
    doubled range or a per-tensor weight scale can change the logits less than integer rounding
    does (docs/quantization.md, confusion table), so they are compared, not measured."""
    import onnx

    from ..tolerance import Verdict

    graph = onnx.load(str(int8_onnx)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    float_nodes = [n.name or n.output[0] for n in weighted
                   if not (producer.get(n.input[0]) == "DequantizeLinear" and producer.get(n.input[1]) == "DequantizeLinear")]
    wanted = sum(1 for q in qnet.layers().values() if q.input_quantizer.enabled and q.weight_quantizer.enabled)
    quantized = len(weighted) - len(float_nodes)
    differ = parameters_differ(qnet, graph)
    detail = (f"{quantized} of {len(weighted)} convs/gemms read int8 activations and weights, the simulation "
              f"quantizes {wanted}" + (f"; in float: {', '.join(float_nodes[:4])}" if quantized != wanted else ""))
    detail += (f"; {len(differ)} quantization parameters differ from calibration's: {'; '.join(differ[:3])}"
               if differ else "; every scale and int8 weight is calibration's")
    return Verdict("int8_graph", "torch fake-quant", f"INT8 ONNX ({int8_onnx.name})", "structure", 0.0, 0.0,
                   quantized == wanted and not differ, mismatched=abs(wanted - quantized) + len(differ), detail=detail)


# A graph weight may sit one int8 step from the simulation's where the FP32 ONNX stores the
# weight a float rounding away from the module's (export/qdq.py allows rtol 1e-5 between them);
# a transposed or re-scaled kernel moves most of its entries.
WEIGHT_STEP_SHARE = 1e-4


@torch.no_grad()
def parameters_differ(qnet: QuantPlainNet, graph) -> list[str]:
    """Where the QDQ graph's scales or int8 weights are not what `qnet` calibrated, one line each.

    Found through the export's node names (export/qdq.py names every Q/DQ after its quantizer):
    `<quantizer>.DQ` (`<quantizer>.pooled.DQ` before the classifier) for activations,
    `<layer>.weight.DQ` for weights.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    quantizers = {q.name: q for q in qnet.quantizers()}
    layers = qnet.layers()
    out: list[str] = []

    def value(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not node.name.endswith(".DQ") or node.name.endswith(".bias.DQ"):
            continue
        scale = value(node.input[1])
        if node.name.endswith(".weight.DQ"):
            name = node.name[: -len(".weight.DQ")]
            layer = layers.get(name)
            if layer is None:
                out.append(f"{name}: a weight the simulation does not quantize")
                continue
            wq = layer.weight_quantizer
            want = wq.scale().to(torch.float32)
            if scale is None or scale.shape != tuple(want.shape) or not np.array_equal(scale, want.numpy()):
                out.append(f"{name}: weight scales are not the per-channel ones calibration measured")
                continue
            want_int = wq.integers((layer.conv if hasattr(layer, "conv") else layer.linear).weight.detach()).numpy()
            got = value(node.input[0])
            if got is not None and got.ndim == 4 and got.shape[1] > want_int.shape[1] and not got[:, want_int.shape[1]:].any():
                got = got[:, : want_int.shape[1]]  # the ort layout's zero-padded stem channels
            if got is None or got.shape != want_int.shape:
                out.append(f"{name}: int8 weights of shape {None if got is None else got.shape}, "
                           f"the simulation's are {want_int.shape}")
                continue
            diff = np.abs(got.astype(np.int32) - want_int.astype(np.int32))
            moved = int(np.count_nonzero(diff))
            if diff.max() > 1 or moved > max(1, WEIGHT_STEP_SHARE * diff.size):
                out.append(f"{name}: {moved} of {diff.size} int8 weights differ from the simulation's")
            continue
        name = node.name[: -len(".DQ")].removesuffix(".pooled")
        q = quantizers.get(name)
        if q is None:
            out.append(f"{name}: a quantizer the simulation does not have")
            continue
        want = np.float32(float(q.scale()))
        if scale is None or scale.size != 1 or np.float32(scale.reshape(-1)[0]) != want:
            got = "none" if scale is None else f"{float(scale.reshape(-1)[0]):.4g}"
            out.append(f"{name}: activation scale {got}, calibration measured {float(want):.4g}")
    return out


@torch.no_grad()
def int8_verdicts(ref, fake, qnet: QuantPlainNet, fp32_onnx: Path, int8_onnx: Path, x: torch.Tensor,
                  record=None, fp32_name: str = "torch FP32", fake_name: str = "torch fake-quant",
                  fp32_ort: np.ndarray | None = None) -> tuple[list, dict]:
    """The verdicts on the exported pair, given the torch FP32 and fake-quant logits on `x`:
    ORT FP32 vs torch FP32, ORT INT8 (fed as its metadata says) as a deployment of the fake-quant
    model, and the INT8 graph's quantized layers. Returns (verdicts, the ORT logits by name).
    `fp32_ort`: the FP32 ONNX's logits on `x` when already computed."""
    from ..recorded import preprocessing_of
    from ..tolerance import judge, judge_deployment

    fp32 = run_ort(fp32_onnx, x, "verify: ONNX Runtime FP32") if fp32_ort is None else fp32_ort
    int8 = run_ort(int8_onnx, as_deployed(x, record, preprocessing_of(int8_onnx)), "verify: ONNX Runtime INT8")
    verdicts = [judge("ort_fp32", ref, fp32, reference_name=fp32_name, candidate_name="ORT FP32"),
                judge_deployment("ort_int8", ref, fake, int8, fp32_name=fp32_name, simulated_name=fake_name,
                                 deployed_name="ORT INT8"),
                graph_verdict(qnet, int8_onnx)]
    return verdicts, {"fp32": fp32, "int8": int8}


@torch.no_grad()
def verify_int8(plain: PlainNet, qnet: QuantPlainNet, fp32_onnx: Path, int8_onnx: Path, x: torch.Tensor,
                target: str, device: torch.device = torch.device("cpu"), record=None, lead: int = 0) -> dict:
    """Fidelity of the deployed INT8 ONNX vs FP32, and its verdicts (`int8_verdicts`).

    The torch models run on `device` and are back on the CPU afterwards. Each runs the images
    once, in the same batches and order: hooks entered around this call (the per-layer
    diagnostics' `SQNRProbe`) read both passes. `lead`: images of the first batch (the
    diagnostics' sample, so their hooks keep whole batches instead of copying part of one).
    """
    from ..evaluate import sqnr_db, top1_agreement
    from ..progress import module_steps

    quantized = qnet.layers()
    floats = dict(plain.named_modules())

    def logits(model, name: str) -> np.ndarray:
        # Batched: a whole verification set at 224 px through one forward would need gigabytes.
        model.to(device)
        chunks = (x[:lead], *x[lead:].split(VERIFY_BATCH)) if 0 < lead < len(x) else x.split(VERIFY_BATCH)
        layers = list(quantized.values()) if model is qnet else [floats[n] for n in quantized]
        try:
            with module_steps(layers, f"verify: {name}", len(chunks)):
                return np.concatenate([model(chunk.to(device)).float().cpu().numpy() for chunk in chunks])
        finally:
            model.cpu()

    ref = logits(plain, "torch FP32")
    fake = logits(qnet, "torch fake-quant")
    verdicts, ort = int8_verdicts(ref, fake, qnet, fp32_onnx, int8_onnx, x, record)
    fp32, int8 = ort["fp32"], ort["int8"]
    int8_verdict = verdicts[1]
    parity = {"max_abs_diff": int8_verdict.max_abs_diff, "max_rel_diff": int8_verdict.max_rel_diff,
              "top1_agreement": int8_verdict.top1_agreement, "images": int(x.shape[0]), "passed": int8_verdict.passed}
    record = {
        "verify_images": int(x.shape[0]),
        "sqnr_db": _json_float(sqnr_db(fp32, int8)),
        "top1_agreement": top1_agreement(fp32, int8),
        "torch_sqnr_db": _json_float(sqnr_db(ref, fake)),
        "torch_top1_agreement": top1_agreement(ref, fake),
        "ort_parity": parity,
        "fp32_ort_parity_max_abs_diff": verdicts[0].max_abs_diff,
        "verdicts": [v.to_dict() for v in verdicts],
    }
    if target == "tensorrt":
        record["note"] = ("tensorrt layout: ONNX Runtime runs it unfused (in float) only to verify it; "
                          "it is not meant for ORT deployment")
    return record


def onnx_accuracy(fp32_onnx: Path, int8_onnx: Path, dataset, limit: int | None) -> dict:
    """Top-1/top-5 of the FP32 and the INT8 ONNX on a labelled dataset, and their drops."""
    from ..defaults import EVAL_BATCH_SIZE
    from ..evaluate import evaluate
    from ..runtime import open_runner

    # Batches scaled with the pixels (8 at 224 px) as ort_batch does: each bar step stays short.
    size = getattr(dataset, "image_size", None)
    batch = images_for(size, EVAL_BATCH_SIZE, 8) if isinstance(size, int) else EVAL_BATCH_SIZE
    with open_runner(fp32_onnx, "ort", name="fp32") as r:
        fp32 = evaluate(r, dataset, limit=limit, batch_size=batch)
    with open_runner(int8_onnx, "ort", name="int8") as r:
        int8 = evaluate(r, dataset, limit=limit, batch_size=batch)
    rec = {"eval_data": dataset.source, "eval_images": fp32.images, "fp32_top1": fp32.top1,
           "int8_top1": int8.top1, "top1_drop": fp32.top1 - int8.top1,
           "fp32_top5": fp32.top5, "int8_top5": int8.top5}
    rec["top5_drop"] = fp32.top5 - int8.top5 if fp32.top5 is not None and int8.top5 is not None else None
    return rec


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None
