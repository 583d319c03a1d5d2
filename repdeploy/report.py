"""Per-model records -> report.json, report.csv, report.md and a self-contained report.html.

A record is the plain dict of one model's pipeline row (pipeline.ModelRow.to_dict()). The HTML
embeds its plots as base64 PNGs so the one file can be mailed or archived and still show them:
accuracy drop vs speed-up for every model, and per model the per-layer weight statistics and
per-layer SQNR from the PTQ diagnostics when the record carries them.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from .io import atomic_path, ensure_writable_dir, write_bytes_atomic, write_json_atomic

#: (key, header, format) of the summary columns shared by csv, md, html and the terminal table
COLUMNS: list[tuple[str, str, str]] = [
    ("name", "model", "{}"),
    ("arch", "arch", "{}"),
    ("status", "status", "{}"),
    ("parity", "parity", "{}"),
    ("eval_images", "eval imgs", "{}"),
    ("fp32_top1", "FP32 top-1 %", "{:.2f}"),
    ("int8_top1", "INT8 top-1 %", "{:.2f}"),
    ("top1_drop", "drop (pts)", "{:+.2f}"),
    ("top1_agreement", "agree %", "{:.1f}"),
    ("sqnr_db", "SQNR dB", "{:.1f}"),
    ("fp32_ms", "FP32 ms", "{:.3f}"),
    ("int8_ms", "INT8 ms", "{:.3f}"),
    ("speedup", "speed-up", "{:.2f}x"),
    ("qat_top1", "QAT top-1 %", "{:.2f}"),
    ("qat_drop", "QAT drop", "{:+.2f}"),
    ("notes", "notes", "{}"),
]
OPTIONAL_COLUMNS = {"qat_top1", "qat_drop"}  # shown only when some model has them (pipeline --qat)
CSV_EXTRA = ["allow_mismatch", "fp32_top5", "int8_top5", "engine", "target", "bench_batch", "threads", "failed_stage", "error", "run_dir"]


@dataclass
class ReportPaths:
    json: Path
    csv: Path
    md: Path
    html: Path

    def to_dict(self) -> dict:
        return {k: str(v) for k, v in self.__dict__.items()}


def notes(record: dict) -> str:
    """The short flags of a record's warnings (the full sentences are listed under the table)."""
    flags = [w.get("flag", "") if isinstance(w, dict) else str(w) for w in record.get("warnings") or []]
    return "; ".join(f for f in flags if f)


def warning_messages(record: dict) -> list[str]:
    return [w.get("message", "") if isinstance(w, dict) else str(w) for w in record.get("warnings") or []]


def verdict_lines(record: dict) -> list[str]:
    return [v.get("line") or str(v) for v in record.get("verdicts") or []]


def cell(record: dict, key: str, fmt: str) -> str:
    """One formatted table cell; '-' for a missing or non-finite value."""
    value = notes(record) if key == "notes" else record.get(key)
    if value == "":
        return "-"
    ci = record.get("speedup_ci")
    if key == "speedup" and _is_number(value) and ci and all(_is_number(v) for v in ci):
        return f"{value:.2f}x [{ci[0]:.2f}-{ci[1]:.2f}]"  # the ratio and its 95 % interval
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "inf" if value == math.inf else "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def columns(records: Sequence[dict]) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if c[0] not in OPTIONAL_COLUMNS or any(r.get(c[0]) is not None for r in records)]


def table_rows(records: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    cols = columns(records)
    return [h for _, h, _ in cols], [[cell(r, k, f) for k, _, f in cols] for r in records]


def plain_table(records: Sequence[dict]) -> str:
    """Fixed-width text table (logs, pipes, CI), one line per model, errors beneath."""
    headers, rows = table_rows(records)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
    for r in records:
        if r.get("error"):
            out.append(f"{r.get('name')}: {r.get('status')} at {r.get('failed_stage') or 'gate'}: {r['error']}")
    return "\n".join(out)


def print_table(records: Sequence[dict], *, tty: bool | None = None) -> None:
    """The end-of-run table: rich on a terminal, plain text otherwise."""
    import sys

    if tty is None:
        tty = sys.stdout.isatty()
    if not tty:
        print(plain_table(records))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    text = plain_table(records)
    if console.width < max(len(line) for line in text.splitlines()[:2]) + 3 * len(columns(records)):
        print(text)  # a boxed table this wide would squeeze every number into '…'
        return
    headers, rows = table_rows(records)
    table = Table(title="repdeploy pipeline")
    for i, h in enumerate(headers):
        # names and statuses must stay readable; numbers are short already
        table.add_column(h, justify="left" if i < 3 else "right", no_wrap=i < 3,
                         min_width=max([len(h)] + [len(r[i]) for r in rows]) if i < 3 else None)
    style = {"PASSED": "green", "FAILED": "red", "ERROR": "red"}
    keys = [k for k, _, _ in columns(records)]
    for r, cells in zip(records, rows):
        cells = [escape(c) for c in cells]
        cells[2] = f"[{style.get(r.get('status'), 'white')}]{cells[2]}[/]"
        for i, key in enumerate(keys):  # a mismatch in red, warnings and noisy figures in yellow
            if key == "parity" and cells[i].startswith("MISMATCH"):
                cells[i] = f"[red]{cells[i]}[/]"
            elif (key == "notes" and cells[i] != "-") or (key == "speedup" and r.get("latency_noisy")):
                cells[i] = f"[yellow]{cells[i]}[/]"
        table.add_row(*cells)
    console.print(table)
    for r in records:
        if r.get("error"):
            console.print(f"[red]{escape(str(r.get('name')))}[/]: {r.get('status')} at {r.get('failed_stage') or 'gate'}: "
                          f"{escape(str(r['error']))}", highlight=False)


def markdown_table(records: Sequence[dict]) -> str:
    headers, rows = table_rows(records)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


# -- PTQ diagnostics ----------------------------------------------------------------------------
def layer_diagnostics(record: dict) -> list[dict]:
    """Per-layer diagnostics rows ({'layer': name, <numeric fields>...}) from a record, or [].

    The PTQ report keeps them under `diagnostics.layers` (or `layers` / `per_layer`); any numeric
    field is plotted, so new statistics show up without touching the report.
    """
    diag = record.get("diagnostics") or {}
    if isinstance(diag, dict):
        layers = diag.get("layers") or diag.get("per_layer") or []
    else:
        layers = diag
    rows = []
    for i, layer in enumerate(layers if isinstance(layers, list) else []):
        if isinstance(layer, dict):
            name = layer.get("layer") or layer.get("name") or str(i)
            rows.append({"layer": str(name), **{k: v for k, v in layer.items() if _is_number(v)}})
    return rows


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# -- plots -----------------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_drop_vs_speedup(records: Sequence[dict], max_drop: float | None = None) -> str | None:
    """INT8 top-1 change (points, better is up) against INT8 speed-up with its 95 % interval.

    Noisy speed-ups are drawn hollow and labelled; the x axis always shows 1.0x (no speed-up)
    and at least +-0.1x around the points, so noise never looks like a trend.
    """
    points = [r for r in records if _is_number(r.get("top1_drop")) and _is_number(r.get("speedup"))]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = [1.0]
    for r in points:
        colour = "tab:red" if r.get("status") in ("FAILED", "ERROR") else "tab:blue"
        x, y = r["speedup"], -r["top1_drop"]
        ci = r.get("speedup_ci")
        xerr = None
        if ci and all(_is_number(v) for v in ci):
            xerr = [[max(0.0, x - ci[0])], [max(0.0, ci[1] - x)]]
            xs += list(ci)
        xs.append(x)
        noisy = bool(r.get("latency_noisy"))
        ax.errorbar([x], [y], xerr=xerr, fmt="o", color=colour, mfc="white" if noisy else colour, capsize=4,
                    markersize=7)
        label = r.get("name", "?") + (" (noisy)" if noisy else "")
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    lo, hi = min(xs), max(xs)
    pad = max(0.1, 0.15 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)
    ys = [-r["top1_drop"] for r in points] + [0.0] + ([-max_drop] if max_drop is not None else [])
    ypad = max(0.5, 0.15 * (max(ys) - min(ys)))
    ax.set_ylim(min(ys) - ypad, max(ys) + ypad)
    if max_drop is not None:
        ax.axhline(-max_drop, color="tab:red", linestyle="--", linewidth=1, label=f"gate: drop {max_drop:g} pts")
        ax.legend(fontsize=8, loc="lower right")
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("INT8 speed-up over FP32 (x), 95 % interval")
    ax.set_ylabel("INT8 - FP32 top-1 (points; up is better)")
    ax.set_title("Accuracy change vs speed-up (better: up and right)")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_latency(records: Sequence[dict]) -> str | None:
    """FP32 and INT8 median latency per model, with the bootstrap 95 % interval as error bars and
    the IQR as a thin bar beside them; noisy models are labelled."""
    rows = [r for r in records if _is_number(r.get("fp32_ms")) and _is_number(r.get("int8_ms"))]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(rows) + 2), 3.8))
    width = 0.36
    for j, (label, colour) in enumerate((("fp32", "tab:grey"), ("int8", "tab:blue"))):
        xs, meds, err, iqr = [], [], [[], []], []
        for i, r in enumerate(rows):
            med = r[f"{label}_ms"]
            ci = r.get(f"{label}_ms_ci") or [med, med]
            stats = next((b.get("stats", {}) for b in r.get("bench") or [] if b.get("precision") == label), {})
            xs.append(i + (j - 0.5) * width)
            meds.append(med)
            err[0].append(max(0.0, med - ci[0]))
            err[1].append(max(0.0, ci[1] - med))
            iqr.append(stats.get("iqr_ms"))
        ax.bar(xs, meds, width * 0.9, yerr=err, capsize=5, color=colour, alpha=0.8, label=f"{label.upper()} median")
        for x, m, q in zip(xs, meds, iqr):
            if _is_number(q):
                ax.vlines(x + width * 0.3, m - q / 2, m + q / 2, color="black", linewidth=1)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r.get("name", "?") + ("\n(noisy)" if r.get("latency_noisy") else "") for r in rows], fontsize=8)
    ax.set_ylim(0, None)
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency: median, 95 % interval (caps), IQR (thin bar)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


_NOT_WEIGHT_STATS = {"index", "out_channels", "in_channels", "groups", "stride", "activation_amax"}


def _layer_panels(layers: list[dict]) -> tuple[list[dict], list[tuple[list[str], str, bool]]]:
    rows = [dict(r) for r in layers]
    for r in rows:  # one magnitude instead of a signed min and max, so a log axis can show it
        if _is_number(r.get("weight_min")) and _is_number(r.get("weight_max")):
            r["weight_absmax"] = max(abs(r.pop("weight_min")), abs(r.pop("weight_max")))
    keys = sorted({k for r in rows for k in r if k != "layer" and _is_number(r[k])} - _NOT_WEIGHT_STATS)
    sqnr = [k for k in keys if "sqnr" in k.lower()]
    magnitude = [k for k in keys if k not in sqnr and (k.endswith("std") or k.endswith("absmax") or k.endswith("_max")
                                                        or k.endswith("_min"))]
    ratios = [k for k in keys if k not in sqnr and k not in magnitude]
    panels = [(magnitude, "weight magnitude", True), (ratios, "ratio", False), (sqnr, "SQNR (dB)", False)]
    return rows, [p for p in panels if p[0]]


def shared_layer_limits(records: Sequence[dict]) -> dict[str, tuple[float, float]]:
    """One y-range per diagnostics panel across every model, so RepVGG and RepOpt-VGG plots
    compare at a glance (a taller curve is a larger value, not a different axis)."""
    limits: dict[str, list[float]] = {}
    for record in records:
        rows, panels = _layer_panels(layer_diagnostics(record))
        for ks, label, log in panels:
            values = [r[k] for r in rows for k in ks if _is_number(r.get(k)) and math.isfinite(r[k])
                      and (not log or r[k] > 0)]
            if values:
                lo, hi = limits.setdefault(label, [math.inf, -math.inf])
                limits[label] = [min(lo, *values), max(hi, *values)]
    out = {}
    for label, (lo, hi) in limits.items():
        if label == "weight magnitude":
            out[label] = (lo / 1.5, hi * 1.5)
        else:
            pad = max(1e-6, 0.06 * (hi - lo))
            out[label] = (lo - pad, hi + pad)
    return out


def sensitive_layers(record: dict) -> list[str]:
    """The most sensitive layers (PTQ diagnostics: lowest isolated SQNR first), or []."""
    diag = record.get("diagnostics") if isinstance(record.get("diagnostics"), dict) else {}
    summary = (diag or {}).get("summary") or record.get("layers_summary") or {}
    return [str(x) for x in summary.get("most_sensitive_layers") or []]


def plot_layer_diagnostics(name: str, layers: list[dict], *, limits: dict | None = None,
                           highlight: Sequence[str] = ()) -> str | None:
    """Per-layer weight magnitudes (log scale), shape ratios, and SQNR for one model.

    Weight magnitudes: |w| max (from weight_min/weight_max), std, centre-tap std. Ratios: the
    centre tap's share of the kernel and the per-channel range spread (RepVGG's outliers show up
    in both). SQNR: every `*sqnr*` field. Other numeric fields join the ratios panel. `limits`
    (shared_layer_limits) fixes each panel's y-range; `highlight` layers get a red band and label.
    """
    if not layers:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, panels = _layer_panels(layers)
    x = list(range(len(rows)))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.4 * len(rows) + 2), 2.6 * len(panels)), sharex=True,
                             squeeze=False)
    marked = [i for i, r in enumerate(rows) if r["layer"] in set(highlight)]
    for ax, (ks, label, log) in zip(axes[:, 0], panels):
        for i in marked:
            ax.axvspan(i - 0.4, i + 0.4, color="tab:red", alpha=0.12, linewidth=0)
        for k in ks:
            ax.plot(x, [r.get(k, math.nan) for r in rows], marker="o", markersize=3, label=k)
        ax.set_ylabel(label)
        if log and all(r.get(k, 1) > 0 for r in rows for k in ks if _is_number(r.get(k))):
            ax.set_yscale("log")
        if limits and label in limits:
            ax.set_ylim(*limits[label])
        ax.legend(fontsize=7, ncol=3)
        ax.grid(alpha=0.3)
    title = f"{name}: per-layer quantization diagnostics"
    if marked:
        title += " (red: most sensitive)"
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xticks(x)
    axes[-1, 0].set_xticklabels([r["layer"] for r in rows], rotation=60, ha="right", fontsize=7)
    for i, tick in enumerate(axes[-1, 0].get_xticklabels()):
        if i in marked:
            tick.set_color("tab:red")
            tick.set_fontweight("bold")
    return _png(fig)


# -- writers --------------------------------------------------------------------------------------
def write_report(records: Sequence[dict], output_dir: str | Path, *, settings: dict | None = None,
                 environment: dict | None = None, title: str = "repdeploy report") -> ReportPaths:
    """Write report.json, report.csv, report.md and report.html into `output_dir` (atomically)."""
    from .version import __version__

    out = ensure_writable_dir(output_dir)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    doc = {"tool": "repdeploy", "version": __version__, "created": created, "settings": settings or {},
           "environment": environment or {}, "models": list(records)}
    paths = ReportPaths(out / "report.json", out / "report.csv", out / "report.md", out / "report.html")
    write_json_atomic(paths.json, doc)
    _write_csv(paths.csv, records)
    write_bytes_atomic(paths.md, render_markdown(doc).encode())
    write_bytes_atomic(paths.html, render_html(doc, title=title).encode())
    return paths


def _write_csv(path: Path, records: Iterable[dict]) -> None:
    keys = [k for k, _, _ in COLUMNS] + CSV_EXTRA
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            row = {k: r.get(k, "") if r.get(k) is not None else "" for k in keys}
            row["notes"] = notes(r)
            writer.writerow(row)


def render_markdown(doc: dict) -> str:
    records = doc["models"]
    s = doc.get("settings", {})
    env = doc.get("environment", {})
    lines = [f"# repdeploy report ({doc['created']})", "",
             f"Engine `{s.get('engine', '-')}`, INT8 target `{s.get('target', '-')}`, data `{s.get('data', '-')}`, "
             f"latency median at batch {s.get('bench_batch', '-')} (speed-up with its 95 % interval; noisy: wider "
             "than +-5 %)"
             + (f", max drop {s['max_drop']:g} pts" if s.get("max_drop") is not None else "") + ".", "",
             markdown_table(records), ""]
    errors = [r for r in records if r.get("error")]
    if errors:
        lines += ["## Failures", ""] + [f"- **{r['name']}** ({r['status']} at {r.get('failed_stage') or 'gate'}): {r['error']}"
                                        for r in errors] + [""]
    warned = [r for r in records if r.get("warnings")]
    if warned:
        lines += ["## Warnings", ""] + [f"- **{r['name']}**: {m}" for r in warned for m in warning_messages(r)] + [""]
    checked = [r for r in records if r.get("verdicts")]
    if checked:
        lines += ["## Verification", "",
                  "Every numeric hand-off against its tolerance (max difference relative to the largest |logit| of "
                  "the reference, SQNR in dB, top-1 agreement).", ""]
        lines += [f"- **{r['name']}**: {line}" for r in checked for line in verdict_lines(r)] + [""]
    if env:
        lines += ["## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()] + [""]
    return "\n".join(lines)


#: settings keys -> readable labels, in the order shown; others follow with their key as label
SETTING_LABELS = {
    "data": "evaluation data", "calib_data": "calibration data", "calib_samples": "calibration images",
    "calib_method": "calibration method", "engine": "runtime", "target": "INT8 layout", "max_drop": "max top-1 drop",
    "fallback_float": "float fallback", "allow_mismatch": "allow mismatch", "bench_batch": "latency batch",
    "threads": "threads", "warmup": "warm-up", "duration": "min. duration per model", "iterations": "min. iterations",
    "max_duration": "max. duration per model", "eval_limit": "evaluation limit", "mean": "mean", "std": "std",
    "resize": "resize", "seed": "seed", "qat": "QAT", "qat_epochs": "QAT epochs", "qat_lr": "QAT learning rate",
    "train_data": "QAT training data",
}


def readable_settings(settings: dict) -> list[tuple[str, str]]:
    """(label, value) pairs for people: defaults spelled out, units added, unset options left out."""
    s = dict(settings or {})
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
    readable = readable_settings(s)
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
