"""report.html: one self-contained page with the settings in words, the table, failures,
warnings, verdicts, the plots (embedded) and the environment, so the one file can be mailed or
archived and still show everything.
"""

from __future__ import annotations

import html
from typing import Sequence

from .plots import (layer_diagnostics, plot_drop_vs_speedup, plot_latency, plot_layer_diagnostics,
                           sensitive_layers, shared_layer_limits)
from .table import columns, table_rows, warning_messages

#: settings keys -> readable labels, in the order shown; others follow with their key as label
SETTING_LABELS = {
    "data": "evaluation data", "calib_data": "calibration data", "calib_samples": "calibration images",
    "calib_method": "calibration method", "engine": "runtime", "target": "INT8 layout", "max_drop": "max top-1 drop",
    "fallback_float": "float fallback", "allow_mismatch": "allow mismatch", "bench_batch": "latency batch",
    "threads": "threads", "warmup": "warm-up", "duration": "min. duration per model", "iterations": "min. iterations",
    "max_duration": "max. duration per model", "eval_limit": "evaluation limit", "mean": "mean", "std": "std",
    "resize": "resize", "seed": "seed", "qat": "QAT", "qat_epochs": "QAT epochs", "qat_lr": "QAT learning rate",
    "train_data": "QAT training data", "ort_session": "ORT session settings (latency)",
}


def _used_counts(records: Sequence[dict], path: tuple[str, ...]) -> list[tuple[str, object]]:
    """(model name, the value at `path` in its record) for every record that has one."""
    out = []
    for r in records:
        value = r
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            out.append((str(r.get("name", "?")), value))
    return out


def _per_model(requested, used: list[tuple[str, object]], what: str) -> str:
    """A count as used: one value when every model used the same, else per model; the request too
    when it differs (512 calibration images asked of a 64-image folder uses 64)."""
    values = {str(v) for _, v in used}
    text = next(iter(values)) if len(values) == 1 else ", ".join(f"{name} {v}" for name, v in used)
    if requested is not None and values != {str(requested)}:
        text += f" ({requested} {what})"
    return text


def session_settings(records: Sequence[dict]) -> str | None:
    """The ORT session config entries the latency pairs ran with, in words; None without latency."""
    seen = {}
    for r in records:
        for b in r.get("bench") or []:
            runner = b.get("runner") or {}
            if "session_config" in runner:
                config = runner["session_config"] or {}
                seen[tuple(sorted(config.items()))] = config
    if not seen:
        return None
    texts = [", ".join(f"{k}={v}" for k, v in key) or "ORT defaults" for key in seen]
    same = " (the same for FP32 and INT8)" if len(seen) == 1 else " (differs between models)"
    return "; ".join(texts) + same


def readable_settings(settings: dict, records: Sequence[dict] = ()) -> list[tuple[str, str]]:
    """(label, value) pairs for people: defaults spelled out, units added, unset options left out.

    With the `records`, counts are the ones the models actually used (calibration images from
    each record's `calibration.samples`), and the ORT session settings of the latency pairs are
    named."""
    s = dict(settings or {})
    used_calib = _used_counts(records, ("calibration", "samples"))
    if used_calib:
        s["calib_samples"] = _per_model(s.get("calib_samples"), used_calib, "requested")
    sessions = session_settings(records)
    if sessions:
        s["ort_session"] = sessions
    defaults = {"calib_data": "train split of the evaluation data" if s.get("data") else None,
                "calib_method": "the family's PTQ default", "threads": "runtime default",
                "mean": "the model's record, else the data's own", "std": "the model's record, else the data's own",
                "resize": "the model's record, else the data's own", "qat_lr": "qat's default"}
    units = {"max_drop": " pts", "warmup": " s", "duration": " s", "max_duration": " s"}
    out = []
    for key in list(SETTING_LABELS) + [k for k in s if k not in SETTING_LABELS]:
        if key not in s:
            continue
        value = s[key]
        if key in ("qat_epochs", "qat_lr", "train_data") and not s.get("qat"):
            continue
        if value is None:
            if key not in defaults or defaults[key] is None:
                continue
            text = defaults[key]
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, (list, tuple)):
            text = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        elif isinstance(value, float):
            text = f"{value:g}{units.get(key, '')}"
        else:
            text = f"{value}{units.get(key, '')}"
        out.append((SETTING_LABELS.get(key, key.replace("_", " ")), text))
    return out


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+3){text-align:left}.PASSED{color:#17803d;font-weight:600}
.FAILED,.ERROR{color:#b42318;font-weight:600}img{max-width:100%}code{background:#f6f6f6;padding:1px 3px}
.warn{color:#9a6700;font-weight:600}table.settings th{text-align:left}table.settings td{text-align:left}
li.ok{color:#17803d}li.FAILED{color:#b42318}.legend{color:#555;font-size:90%}
"""


def render_html(doc: dict, *, title: str = "repdeploy report") -> str:
    """One self-contained HTML page: settings, the table, failures, plots (base64 PNG), environment."""
    esc = html.escape
    records = doc["models"]
    s = doc.get("settings", {})
    headers, rows = table_rows(records)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
             f"<p>Created {esc(doc['created'])} by repdeploy {esc(str(doc.get('version')))}.</p>"]
    readable = readable_settings(s, records)
    if readable:
        parts.append("<h2>Settings</h2><table class='settings'>" + "".join(
            f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in readable) + "</table>")
    parts.append("<h2>Models</h2><table id='models'><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers)
                 + "</tr></thead><tbody>")
    keys = [k for k, _, _ in columns(records)]
    for r, cells in zip(records, rows):
        tds = []
        for key, c in zip(keys, cells):
            cls = ""
            if key == "status":
                cls = str(r.get("status"))
            elif key == "parity" and c.startswith("MISMATCH"):
                cls = "FAILED"
            elif key == "notes" and c != "-":
                cls = "warn"
            elif key == "speedup" and r.get("latency_noisy"):
                cls = "warn"
            tds.append(f"<td class='{esc(cls)}'>{esc(c)}</td>" if cls else f"<td>{esc(c)}</td>")
        parts.append(f"<tr>{''.join(tds)}</tr>")
    parts.append("</tbody></table>")
    parts.append("<p class='legend'>Latency: median at the given batch; speed-up = FP32 / INT8 median with its "
                 "95 % interval over fresh sessions and interleaved rounds; <b>noisy</b> = an interval wider "
                 "than &plusmn;5 %. eval imgs: the images each accuracy is measured on.</p>")
    errors = [r for r in records if r.get("error")]
    if errors:
        parts.append("<h2>Failures</h2><ul>" + "".join(
            f"<li><b>{esc(str(r.get('name')))}</b> ({esc(str(r.get('status')))} at "
            f"{esc(str(r.get('failed_stage') or 'gate'))}): {esc(str(r['error']))}</li>" for r in errors) + "</ul>")
    warned = [r for r in records if r.get("warnings")]
    if warned:
        parts.append("<h2>Warnings</h2><ul class='warnings'>" + "".join(
            f"<li><b>{esc(str(r.get('name')))}</b>: {esc(m)}</li>" for r in warned for m in warning_messages(r))
            + "</ul>")
    checked = [r for r in records if r.get("verdicts")]
    if checked:
        parts.append("<h2>Verification</h2><p>Every numeric hand-off against its tolerance (max difference "
                     "relative to the largest |logit| of the reference, SQNR in dB, top-1 agreement).</p>"
                     "<ul class='verdicts'>" + "".join(
                         f"<li class='{'ok' if v.get('passed') else 'FAILED'}'><b>{esc(str(r.get('name')))}</b>: "
                         f"{esc(str(v.get('line')))}</li>" for r in checked for v in r["verdicts"]) + "</ul>")
    scatter = plot_drop_vs_speedup(records, s.get("max_drop"))
    if scatter:
        parts.append("<h2>Accuracy change vs speed-up</h2>"
                     f"<img alt='accuracy change vs speed-up' src='data:image/png;base64,{scatter}'>")
    latency = plot_latency(records)
    if latency:
        parts.append(f"<h2>Latency</h2><img alt='latency with spread' src='data:image/png;base64,{latency}'>")
    diag_parts = []
    limits = shared_layer_limits(records)
    for r in records:
        png = plot_layer_diagnostics(str(r.get("name")), layer_diagnostics(r), limits=limits,
                                     highlight=sensitive_layers(r))
        if png:
            diag_parts.append(f"<h3>{esc(str(r.get('name')))}</h3>"
                              f"<img alt='per-layer diagnostics of {esc(str(r.get('name')))}' src='data:image/png;base64,{png}'>")
    if diag_parts:
        parts.append("<h2>Per-layer quantization diagnostics</h2>"
                     "<p>Weight statistics per fused layer and the SQNR of each layer's INT8 output against FP32 "
                     "(RepVGG's outlier centre taps show up as wide weight ranges and low SQNR). Every model's "
                     "plot has the same y-scales; the most sensitive layers (lowest isolated SQNR) are in red.</p>")
        parts += diag_parts
    env = doc.get("environment") or {}
    if env:
        parts.append("<h2>Environment</h2><table>" + "".join(
            f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in env.items()) + "</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
