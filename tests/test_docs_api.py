"""docs/api.md runs as written: every ```python block, in order, in one namespace, in a temp dir."""

from __future__ import annotations

import logging
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_api_page_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 4, "docs/api.md lost its examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_api"}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"docs/api.md block {i + 1}", "exec"), namespace)  # noqa: S102 - our own doc
    finally:  # the page's logging.basicConfig must not outlive this test
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    out = capsys.readouterr().out
    assert "top-1" in out and "model_int8_ort.onnx" in out and "256 256" in out
    assert (tmp_path / "out" / "model_int8_ort.onnx").is_file() and (tmp_path / "calib.json").is_file()
