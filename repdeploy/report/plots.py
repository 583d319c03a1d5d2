"""The report's plots, as base64 PNGs for the self-contained HTML: accuracy change vs speed-up
for every model, latency with its spread, and per model the per-layer weight statistics and
per-layer SQNR from the PTQ diagnostics when the record carries them.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Sequence

from .table import is_number


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
            rows.append({"layer": str(name), **{k: v for k, v in layer.items() if is_number(v)}})
    return rows


# -- plots -----------------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


#: a top-1 no better than this many times chance (100 / classes) says nothing about quantization
CHANCE_FACTOR = 1.5


def top1_meaningful(record: dict) -> bool:
    """Whether a record's top-1 figures can show an accuracy change: labelled data (a drop was
    measured) and an FP32 top-1 clearly above chance. Otherwise agreement or SQNR must speak."""
    if not (is_number(record.get("top1_drop")) and is_number(record.get("fp32_top1"))):
        return False
    classes = record.get("num_classes")
    chance = 100.0 / classes if is_number(classes) and classes > 0 else 0.0
    return record["fp32_top1"] > CHANCE_FACTOR * chance


def scatter_metric(records: Sequence[dict]) -> tuple[str, str] | None:
    """(record key, axis label) the accuracy-vs-speed-up plot uses for these records: the top-1
    change where every model's top-1 means something, else INT8-vs-FP32 top-1 agreement, else SQNR."""
    timed = [r for r in records if is_number(r.get("speedup"))]
    if not timed:
        return None
    if all(top1_meaningful(r) for r in timed):
        return "top1_drop", "INT8 - FP32 top-1 (points; up is better)"
    if all(is_number(r.get("top1_agreement")) for r in timed):
        return "top1_agreement", "INT8 top-1 agreement with FP32 (%; up is better)"
    if all(is_number(r.get("sqnr_db")) for r in timed):
        return "sqnr_db", "INT8 SQNR against FP32 (dB; up is better)"
    return None


def plot_drop_vs_speedup(records: Sequence[dict], max_drop: float | None = None) -> str | None:
    """INT8 accuracy against INT8 speed-up (FP32 time / INT8 time) with its 95 % interval.

    The y axis is the top-1 change when every model has labels and a top-1 above chance, else
    top-1 agreement with FP32, else SQNR (`scatter_metric`), and says which. Every model has its
    own marker and colour, named in a legend beside the axes, so names never overprint however
    close the points are. Noisy speed-ups are drawn hollow and say so in the legend; the x axis
    always shows 1.0x (no speed-up) and at least +-0.1x around the points.
    """
    metric = scatter_metric(records)
    if metric is None:
        return None
    key, ylabel = metric
    points = [r for r in records if is_number(r.get("speedup")) and is_number(r.get(key))]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    xs = [1.0]
    markers = "osD^v<>ph*"
    colours = plt.get_cmap("tab10").colors
    ys = [0.0] if key == "top1_drop" else []
    for i, r in enumerate(points):
        x = r["speedup"]
        y = -r[key] if key == "top1_drop" else r[key]
        ys.append(y)
        ci = r.get("speedup_ci")
        xerr = None
        if ci and all(is_number(v) for v in ci):
            xerr = [[max(0.0, x - ci[0])], [max(0.0, ci[1] - x)]]
            xs += list(ci)
        xs.append(x)
        noisy = bool(r.get("latency_noisy"))
        failed = r.get("status") in ("FAILED", "ERROR")
        colour = colours[i % len(colours)]
        label = f"{r.get('name', '?')}: {x:.2f}x" + (" (noisy)" if noisy else "") + (f" {r['status']}" if failed else "")
        ax.errorbar([x], [y], xerr=xerr, fmt=markers[i % len(markers)], color=colour,
                    mfc="white" if noisy else colour, capsize=4, markersize=8, label=label)
    lo, hi = min(xs), max(xs)
    pad = max(0.1, 0.08 * (hi - lo))
    ax.set_xlim(max(0.0, lo - pad), hi + pad)
    if key == "top1_drop" and max_drop is not None:
        ys.append(-max_drop)
        ax.axhline(-max_drop, color="tab:red", linestyle="--", linewidth=1, label=f"gate: drop {max_drop:g} pts")
    ypad = max(0.5, 0.15 * (max(ys) - min(ys)))
    ax.set_ylim(min(ys) - ypad, max(ys) + ypad)
    ax.axvline(1.0, color="grey", linewidth=0.8)
    if key == "top1_drop":
        ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    ax.set_xlabel("INT8 speed-up = FP32 time / INT8 time (x), 95 % interval")
    ax.set_ylabel(ylabel)
    what = {"top1_drop": "top-1 change", "top1_agreement": "top-1 agreement", "sqnr_db": "SQNR"}[key]
    ax.set_title(f"INT8 {what} vs speed-up (better: up and right)", fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_latency(records: Sequence[dict]) -> str | None:
    """FP32 and INT8 median latency per model, with the bootstrap 95 % interval as error bars and
    the IQR as a thin bar beside them; noisy models are labelled."""
    rows = [r for r in records if is_number(r.get("fp32_ms")) and is_number(r.get("int8_ms"))]
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
            if is_number(q):
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
        if is_number(r.get("weight_min")) and is_number(r.get("weight_max")):
            r["weight_absmax"] = max(abs(r.pop("weight_min")), abs(r.pop("weight_max")))
    keys = sorted({k for r in rows for k in r if k != "layer" and is_number(r[k])} - _NOT_WEIGHT_STATS)
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
            values = [r[k] for r in rows for k in ks if is_number(r.get(k)) and math.isfinite(r[k])
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
        if log and all(r.get(k, 1) > 0 for r in rows for k in ks if is_number(r.get(k))):
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
