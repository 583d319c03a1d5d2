"""No dead code in repdeploy/: vulture at confidence 60, with the whitelist of names that are used
where vulture cannot see it (tools/vulture_whitelist.py says by whom)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import vulture

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["vulture"]  # what `vulture` alone runs


def _unused(*extra: Path) -> list[str]:
    v = vulture.Vulture()
    v.scavenge([str(ROOT / p) for p in CONFIG["paths"]] + [str(p) for p in extra])
    # 60 covers unused functions, methods, classes, attributes and record fields
    return [f"{item.filename}:{item.first_lineno}: {item.message}"
            for item in v.get_unused_code(min_confidence=CONFIG["min_confidence"])]


def test_repdeploy_has_no_dead_code():
    assert not _unused(), "dead code (delete it, or whitelist it in tools/vulture_whitelist.py saying who uses it):\n" \
        + "\n".join(_unused())


def test_a_planted_unused_function_and_method_are_found(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("class Record:\n    def never_read(self):\n        return 1\n\n\n"
                       "def never_called():\n    return Record()\n")
    found = _unused(planted)
    assert any("never_called" in f for f in found) and any("never_read" in f for f in found), found
