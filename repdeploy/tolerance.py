"""The one comparison of two models' outputs: its figures, the named tolerance of every hand-off, the verdict.

Every step that hands numbers to the next (fusion, torch -> ONNX Runtime FP32 or FP16, torch
fake-quant -> ONNX Runtime INT8 in either layout, ONNX Runtime -> TensorRT, `repdeploy compare`)
is judged here, against its entry in `TOLERANCES`, and gets a `Verdict`. Each figure has one
definition:

- `max_abs_diff`: max |candidate - reference| over all logits;
- `max_rel_diff`: `max_abs_diff` over the largest |reference logit| (the logit scale), so one
  near-zero logit cannot blow it up;
- `sqnr_db`: 10 log10(sum ref^2 / sum (ref - cand)^2), None when identical (infinite);
- `top1_agreement`: fraction (0-1) of images where both pick the same class.

Three rules (docs/quantization.md, "Verification gates", has the numbers behind them):

- `relative`: two computations of the same function in (nearly) the same precision, where only
  summation order or fp16/TF32 rounding differs: max_rel_diff (and max_abs_diff) bounded.
- `deployment`: a reduced-precision engine against the simulation it was calibrated as (torch
  fake-quant, or the verified QDQ graph for TensorRT), judged by the measurement itself, not by a
  fixed floor. Given the FP32 logits R, the simulated S and the deployed D on the same images:
  the deviation rms(D - S) may be at most `max_deviation` of the quantization noise rms(S - R)
  (catches gross errors); the deployed SQNR vs FP32 may sit at most `min_loss_db` below the
  simulated SQNR vs FP32, measured on the same images (the deployment may not be less faithful to
  FP32 than the simulation the user chose it by); and the images where the simulation picks FP32's class but the deployment does not ("lost") may
  outnumber those the other way round ("gained") only within a one-sided binomial (sign) test at
  `alpha`: near-tied logits flip either way in a correct deployment, a broken one loses.
- `structure`: the INT8 graph quantizes exactly the layers the simulation quantizes (counted).
- `allclose`: numpy's rule per logit, |a - b| <= atol + rtol |a| (Polygraphy's, for `compare`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from .errors import DataError, InputError


@dataclass(frozen=True)
class Tolerance:
    """The bound one hand-off is judged against."""

    check: str
    compares: str  # what against what, for the docs and the report
    rule: str  # relative | deployment | allclose
    max_rel: float | None = None  # relative: on max_rel_diff
    max_abs: float | None = None  # relative: on max_abs_diff (a garbage logit scale passes a relative bound)
    max_deviation: float | None = None  # deployment: rms(D - S) / rms(S - R)
    alpha: float | None = None  # deployment: level of the sign test on lost vs gained images
    min_loss_db: float | None = None  # deployment: SQNR loss vs FP32 (dB) below the simulation's tolerated
    atol: float | None = None  # allclose
    rtol: float | None = None



#: Deployed-vs-simulation deviation allowed, as a fraction of the quantization noise (rms): a gross
#: error is as large as the noise itself. Correct real-size deployments measured 0.07-0.45 (A0 at
#: 224, 3 seeds, both layouts): they round another way, not worse (the 0.45 one was 0.13 dB *more*
#: faithful to FP32 than its simulation). docs/quantization.md has the table.
DEPLOYMENT_DEVIATION = 1.0
#: SQNR loss vs the simulation's SQNR tolerated: correct real-size deployments measured -0.13..0.00 dB
#: (the same images, so the two estimates share their sampling noise); the planted faults caught 0.15-14 dB.
DEPLOYMENT_MIN_LOSS_DB = 0.1
#: Sign-test level: a correct deployment is failed by chance about once in a thousand runs.
DEPLOYMENT_ALPHA = 1e-3
#: Fewer verification images and the sign test cannot reject at DEPLOYMENT_ALPHA (it needs >= 10
#: discordant images; real-size 1000-class models have 15-30 % of images near-tied).
MIN_VERIFY_IMAGES = 64

TOLERANCES: dict[str, Tolerance] = {t.check: t for t in (
    # fp32 fusion errs by 1e-8..5e-5 upstream; the absolute bound refuses a damaged file whose
    # 1.2e25 error passed the relative bound on a 1e29 logit scale.
    Tolerance("fusion", "fused PlainNet vs the trained form (seeded input)", "relative", max_rel=1e-4, max_abs=1e-2),
    # The same function in the same precision: only summation order differs (measured <= 1.2e-6).
    Tolerance("ort_fp32", "ONNX Runtime FP32 vs torch FP32", "relative", max_rel=1e-4),
    # fp16 keeps 11 significant bits in every activation: A0 at 224 measured 1.0-1.7e-3.
    Tolerance("ort_fp16", "ONNX Runtime FP16 vs torch FP32", "relative", max_rel=1e-2),
    # Preprocessing in the graph (uint8 input) against the host's: the same FP32 function, only the
    # order of the normalisation's float operations differs. An FP16 graph is judged by ort_fp16.
    Tolerance("input_graph", "uint8-input graph vs float graph on host-preprocessed pixels", "relative",
              max_rel=1e-4),
    Tolerance("ort_int8", "ONNX Runtime INT8 vs torch fake-quant (vs torch FP32)", "deployment",
              max_deviation=DEPLOYMENT_DEVIATION, alpha=DEPLOYMENT_ALPHA, min_loss_db=DEPLOYMENT_MIN_LOSS_DB),
    # A missing Q/DQ pair moves the logits less than integer rounding may: counted, not measured.
    Tolerance("int8_graph", "INT8 ONNX vs torch fake-quant: convs/gemms quantized", "structure"),
    # TensorRT may run FP32 layers in TF32 (10-bit mantissa) on Ampere and later.
    Tolerance("trt_fp32", "TensorRT FP32 vs ONNX Runtime FP32", "relative", max_rel=1e-2),
    Tolerance("trt_fp16", "TensorRT FP16 vs ONNX Runtime FP32", "relative", max_rel=1e-2),
    # TensorRT's fused INT8 kernels round differently from ORT's: judged like ORT INT8, with the
    # verified QDQ graph on ONNX Runtime as the simulation and ORT FP32 as the reference.
    Tolerance("trt_int8", "TensorRT INT8 vs ONNX Runtime INT8 (vs ONNX Runtime FP32)", "deployment",
              max_deviation=DEPLOYMENT_DEVIATION, alpha=DEPLOYMENT_ALPHA, min_loss_db=DEPLOYMENT_MIN_LOSS_DB),
    Tolerance("compare", "MODEL_B vs MODEL_A (repdeploy compare, Polygraphy's defaults)", "allclose",
              atol=1e-5, rtol=1e-5),
)}


def tolerance(check: str) -> Tolerance:
    """The tolerance of `check`; a qat_ prefix (pipeline --qat) judges like the check it names."""
    key = check[len("qat_"):] if check.startswith("qat_") else check
    return TOLERANCES[key]


# -- figures --------------------------------------------------------------------------------------
def _pair(reference, candidate) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise DataError(f"cannot compare logits of shapes {ref.shape} and {cand.shape}: the models differ in classes")
    return ref, cand


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum ref^2 / sum (ref - cand)^2).

    inf when identical; higher is closer (8-bit quantization of a well-behaved trained network
    lands around 20-40 dB on the logits, a random-weight real-size one around 12-18 dB).
    """
    ref, cand = _pair(reference, candidate)
    noise = float(np.sum((ref - cand) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction (0-1) of rows where both logit arrays pick the same class."""
    ref, cand = _pair(reference, candidate)
    return float((ref.argmax(1) == cand.argmax(1)).mean())


def figures(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """max_abs_diff, mean_abs_diff, max_rel_diff, logit_scale, sqnr_db (None: identical), top1_agreement, images."""
    ref, cand = _pair(reference, candidate)
    finite = bool(np.isfinite(ref).all() and np.isfinite(cand).all())
    diff = float(np.abs(ref - cand).max()) if ref.size and finite else (0.0 if not ref.size else math.inf)
    scale = float(np.abs(ref).max()) if ref.size and finite else (0.0 if not ref.size else math.inf)
    rel = diff / scale if scale > 0 and math.isfinite(scale) else (0.0 if diff == 0 else math.inf)
    sq = sqnr_db(ref, cand) if finite else -math.inf
    mean = float(np.abs(ref - cand).mean()) if ref.size and finite else (0.0 if not ref.size else math.inf)
    return {"max_abs_diff": diff, "mean_abs_diff": mean, "max_rel_diff": rel, "logit_scale": scale,
            "sqnr_db": None if sq == math.inf else sq,
            "top1_agreement": top1_agreement(ref, cand) if ref.ndim == 2 and len(ref) else None,
            "images": int(ref.shape[0]) if ref.ndim else None, "finite": finite}


def sign_test_p(lost: int, gained: int) -> float:
    """One-sided binomial p: the chance of at least `lost` of lost + gained when either is as likely."""
    n = lost + gained
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2.0 ** n


# -- the verdict ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """The outcome of one comparison: what was compared, its figures, its tolerance, passed or not."""

    check: str
    reference: str
    candidate: str
    rule: str
    max_abs_diff: float
    max_rel_diff: float
    passed: bool
    tolerance: float | None = None  # relative: the bound on max_rel_diff
    images: int | None = None
    top1_agreement: float | None = None  # candidate vs reference, 0-1
    sqnr_db: float | None = None  # candidate vs reference; None when identical
    # deployment: the FP32 reference, the simulated model's fidelity and the deployed one's
    fp32: str | None = None
    simulated_sqnr_db: float | None = None  # simulation vs FP32
    deployed_sqnr_db: float | None = None  # deployment vs FP32
    min_sqnr_db: float | None = None  # simulated - the allowed loss
    max_sqnr_loss_db: float | None = None  # the allowed loss
    deviation: float | None = None  # rms(D - S) / rms(S - R)
    max_deviation: float | None = None
    simulated_agreement: float | None = None  # with FP32, 0-1
    deployed_agreement: float | None = None
    lost: int | None = None  # images the simulation gets right (= FP32's class) and the deployment not
    gained: int | None = None
    sign_p: float | None = None
    alpha: float | None = None
    mismatched: int | None = None  # allclose: logits outside atol + rtol |a|
    atol: float | None = None
    rtol: float | None = None
    detail: str | None = None  # structure: what was counted

    def line(self) -> str:
        """One readable line: the figures against their bounds, then passed / FAILED."""
        parts = []
        if self.rule == "relative":
            if not math.isfinite(self.max_rel_diff):
                parts.append("non-finite logits")
            else:
                sign = "<=" if self.max_rel_diff <= (self.tolerance or 0.0) else ">"
                parts.append(f"max rel diff {self.max_rel_diff:.1e} {sign} {self.tolerance:.0e}")
        elif self.rule == "deployment":
            dep, mn = _inf(self.deployed_sqnr_db), _inf(self.min_sqnr_db)
            parts.append(f"SQNR vs FP32 {dep:.2f} dB {'>=' if dep >= mn else '<'} {mn:.2f} "
                         f"(simulated {_inf(self.simulated_sqnr_db):.2f} dB)")
            dev = self.deviation if self.deviation is not None else 0.0
            parts.append(f"deviation {dev:.3f} {'<=' if dev <= self.max_deviation else '>'} "
                         f"{self.max_deviation:g} of the quantization noise")
            p = self.sign_p if self.sign_p is not None else 1.0
            parts.append(f"top-1 with FP32 {_pct(self.deployed_agreement)} vs simulated {_pct(self.simulated_agreement)}"
                         f" ({self.lost} lost, {self.gained} gained, p {p:.2g} {'>=' if p >= self.alpha else '<'} "
                         f"{self.alpha:g})")
        elif self.rule == "structure":
            parts.append(self.detail or "")
        else:
            parts.append(f"{self.mismatched} logits outside atol {self.atol:g} + rtol {self.rtol:g}")
        if self.images is not None and self.rule != "structure":
            parts.append(f"{self.images} images")
        return f"{self.check} ({self.candidate} vs {self.reference}): {', '.join(parts)}: " + (
            "passed" if self.passed else "FAILED")

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["passed"] = self.passed
        d["line"] = self.line()
        return d


def _inf(v: float | None) -> float:
    return math.inf if v is None else v


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def judge(check: str, reference: np.ndarray, candidate: np.ndarray, *, reference_name: str,
          candidate_name: str, rule: Tolerance | None = None) -> Verdict:
    """Judge `candidate` against `reference` (same inputs, same order) on a `relative` or `allclose` rule."""
    rule = rule or tolerance(check)
    f = figures(reference, candidate)
    common = dict(check=check, reference=reference_name, candidate=candidate_name, rule=rule.rule,
                  max_abs_diff=f["max_abs_diff"], max_rel_diff=f["max_rel_diff"], images=f["images"],
                  top1_agreement=f["top1_agreement"], sqnr_db=f["sqnr_db"])
    if rule.rule == "relative":
        passed = (f["finite"] and f["max_rel_diff"] <= rule.max_rel
                  and (rule.max_abs is None or f["max_abs_diff"] <= rule.max_abs))
        return Verdict(passed=passed, tolerance=rule.max_rel, **common)
    if rule.rule == "allclose":
        bad = mismatched(reference, candidate, atol=rule.atol, rtol=rule.rtol)
        return Verdict(passed=bad == 0, mismatched=bad, atol=rule.atol, rtol=rule.rtol, **common)
    raise ValueError(f"{check}: a deployment rule needs the FP32 and simulated logits (judge_deployment)")


def mismatched(reference: np.ndarray, candidate: np.ndarray, *, atol: float, rtol: float) -> int:
    """How many logits break |a - b| <= atol + rtol |a| (a non-finite pair always does)."""
    if not (math.isfinite(atol) and math.isfinite(rtol)) or atol < 0 or rtol < 0:
        raise InputError(f"--atol {atol} / --rtol {rtol}: give non-negative numbers")
    ref, cand = _pair(reference, candidate)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(ref - cand) <= atol + rtol * np.abs(ref))
    return int(bad.sum())


def allclose_rule(atol: float, rtol: float) -> Tolerance:
    """`compare`'s entry with the user's tolerances."""
    return replace(TOLERANCES["compare"], atol=atol, rtol=rtol)


def judge_deployment(check: str, fp32: np.ndarray, simulated: np.ndarray, deployed: np.ndarray, *,
                     fp32_name: str, simulated_name: str, deployed_name: str,
                     rule: Tolerance | None = None) -> Verdict:
    """Judge a deployed engine by the fidelity its simulation has to FP32 on the same images."""
    rule = rule or tolerance(check)
    if rule.rule != "deployment":
        raise ValueError(f"{check} is judged by the {rule.rule} rule, not as a deployment")
    r, s, d = (np.asarray(a, dtype=np.float64) for a in (fp32, simulated, deployed))
    f = figures(s, d)
    _pair(r, s)
    sim_sq, dep_sq = sqnr_db(r, s), sqnr_db(r, d) if f["finite"] else -math.inf
    noise = math.sqrt(float(np.mean((s - r) ** 2)))
    dev_rms = math.sqrt(float(np.mean((d - s) ** 2))) if f["finite"] else math.inf
    # No quantization noise at all (everything left in float): the deployment must then match exactly.
    deviation = dev_rms / noise if noise > 0 else (0.0 if dev_rms == 0 else math.inf)
    max_loss = rule.min_loss_db
    min_sq = sim_sq - max_loss
    sim_ok, dep_ok = r.argmax(1) == s.argmax(1), r.argmax(1) == d.argmax(1)
    lost, gained = int((sim_ok & ~dep_ok).sum()), int((~sim_ok & dep_ok).sum())
    p = sign_test_p(lost, gained)
    passed = bool(f["finite"] and deviation <= rule.max_deviation and dep_sq >= min_sq and p >= rule.alpha)
    finite_or_none = lambda v: None if v == math.inf else v  # noqa: E731  identical: no noise to report
    return Verdict(
        check=check, reference=simulated_name, candidate=deployed_name, rule="deployment",
        max_abs_diff=f["max_abs_diff"], max_rel_diff=f["max_rel_diff"], passed=passed, images=f["images"],
        top1_agreement=f["top1_agreement"], sqnr_db=f["sqnr_db"], fp32=fp32_name,
        simulated_sqnr_db=finite_or_none(sim_sq), deployed_sqnr_db=finite_or_none(dep_sq),
        min_sqnr_db=finite_or_none(min_sq), max_sqnr_loss_db=max_loss, deviation=deviation, max_deviation=rule.max_deviation,
        simulated_agreement=float(sim_ok.mean()), deployed_agreement=float(dep_ok.mean()),
        lost=lost, gained=gained, sign_p=p, alpha=rule.alpha)


__all__ = ["DEPLOYMENT_ALPHA", "DEPLOYMENT_DEVIATION", "DEPLOYMENT_MIN_LOSS_DB", "MIN_VERIFY_IMAGES", "TOLERANCES", "Tolerance", "Verdict",
           "allclose_rule", "figures", "judge", "judge_deployment", "mismatched", "sign_test_p", "sqnr_db",
           "tolerance", "top1_agreement"]
