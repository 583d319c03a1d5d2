"""Per-model records -> report.json, report.csv, report.md and a self-contained report.html.

A record is the plain dict of one model's pipeline row (pipeline.ModelRow.to_dict()). The HTML
embeds its plots as base64 PNGs so the one file can be mailed or archived and still show them:
accuracy drop vs speed-up for every model, and per model the per-layer weight statistics and
per-layer SQNR from the PTQ diagnostics when the record carries them.

This module writes the files; the table is table.py, the plots plots.py and the
page html.py. Their public names are re-exported here, where callers import them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from ..io import atomic_path, ensure_writable_dir, write_bytes_atomic, write_json_atomic
from .html import SETTING_LABELS, readable_settings, render_html
from .plots import (layer_diagnostics, plot_drop_vs_speedup, plot_latency, plot_layer_diagnostics,
                           sensitive_layers, shared_layer_limits)
from .table import (COLUMNS, CSV_EXTRA, OPTIONAL_COLUMNS, cell, columns, markdown_table, notes, plain_table,
                           print_table, table_rows, verdict_lines, warning_messages)

__all__ = [
    "ReportPaths", "write_report", "render_markdown", "render_html", "readable_settings", "SETTING_LABELS",
    "COLUMNS", "OPTIONAL_COLUMNS", "CSV_EXTRA", "cell", "columns", "table_rows", "plain_table", "print_table",
    "markdown_table", "notes", "warning_messages", "verdict_lines", "layer_diagnostics", "plot_drop_vs_speedup",
    "plot_latency", "plot_layer_diagnostics", "sensitive_layers", "shared_layer_limits",
]


@dataclass
class ReportPaths:
    json: Path
    csv: Path
    md: Path
    html: Path

    def to_dict(self) -> dict:
        return {k: str(v) for k, v in self.__dict__.items()}


# -- writers --------------------------------------------------------------------------------------
def write_report(records: Sequence[dict], output_dir: str | Path, *, settings: dict | None = None,
                 environment: dict | None = None, title: str = "repdeploy report") -> ReportPaths:
    """Write report.json, report.csv, report.md and report.html into `output_dir` (atomically)."""
    from ..version import __version__

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
