"""The summary table of a report: its columns, one formatted cell per figure, and the table as
plain text (logs, pipes), on a terminal (rich) and in markdown. csv, md, html and the end-of-run
table all show these columns, so they agree cell for cell.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

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
    if key == "speedup" and is_number(value) and ci and all(is_number(v) for v in ci):
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


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
