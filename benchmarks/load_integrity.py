"""Cost of verifying a checkpoint's zip CRCs before loading it (issue 13's integrity check).

`checkpoints.files.read_file` runs `zipfile.testzip` (every member's CRC-32) before
`torch.load`. This times `torch.load` alone and `verify_zip` alone on the same file, interleaved
in rounds so machine noise hits both alike, and prints one JSON line per figure: the median of
each and their ratio
(`crc_over_load`: the extra load time the check adds, 0.25 = +25 %).

    .venv/bin/python benchmarks/load_integrity.py [--variant RepVGG-A0] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="RepVGG-A0")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    from repdeploy.checkpoints.files import verify_zip
    from repdeploy.models import build, get_spec

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pth"
        torch.save(build(get_spec(args.variant), "train").state_dict(), path)
        load_s, crc_s = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            torch.load(path, map_location="cpu", weights_only=True)
            load_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            verify_zip(path)
            crc_s.append(time.perf_counter() - t0)
        size_mb = path.stat().st_size / 1e6
    load, crc = statistics.median(load_s), statistics.median(crc_s)
    common = {"variant": args.variant, "file_mb": round(size_mb, 1), "rounds": args.rounds}
    print(json.dumps({"figure": "torch_load_s", "value": round(load, 4), **common}))
    print(json.dumps({"figure": "crc_verify_s", "value": round(crc, 4), **common}))
    print(json.dumps({"figure": "crc_over_load", "value": round(crc / load, 3), **common}))


if __name__ == "__main__":
    main()
