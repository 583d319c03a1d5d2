"""The serving runtime, run where torch cannot be imported, against `repdeploy eval` on the same JPEGs.

1. With repdeploy's full install (this interpreter): `repdeploy quantize` a zoo model to INT8 (ORT
   layout, plus its uint8-nhwc copy), write labelled digits as JPEG files in an ImageFolder, and run
   `repdeploy eval` on that folder (its top-1), and OrtRunner on the same images (each image's class).
2. With `--serving-python PY` (a venv holding numpy, onnxruntime and Pillow and repdeploy installed
   with `pip install --no-deps`: `make serving-check` builds one): classify every JPEG with
   `repdeploy.serving.Model`, with torch, onnx, click, rich and matplotlib blocked from importing.
3. The runtime's top-1 must equal eval's, image by image, for both model files.

    .venv/bin/python tools/serving_check.py --serving-python /tmp/serve-venv/bin/python --work /tmp/serving-check

The test suite runs `check()` with its own interpreter (imports blocked the same way); `make
serving-check` runs it in a venv that has no torch at all. Prints one JSON object; exit 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

#: what the serving runtime must never import (docs/serving.md)
BLOCKED = ("torch", "onnx", "click", "rich", "matplotlib", "torchvision")

SERVING_SIDE = r"""
import importlib.abc, json, sys
BLOCKED = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} imported by the serving runtime")
        return None

sys.meta_path.insert(0, Block())
from repdeploy.serving import Model

out = {}
for model_file in sys.argv[3:]:
    model = Model(model_file, threads=1)
    files = json.loads(open(sys.argv[2]).read())
    with open(files[0], "rb") as f:
        as_bytes = model.predict(f.read(), top_k=1)[0].index  # bytes and paths decode alike
    top = [model.predict(p, top_k=3) for p in files]
    out[model_file] = {"top1": [t[0].index for t in top], "names": [t[0].name for t in top],
                       "bytes_top1": as_bytes, "input_format": model.input_format, "precision": model.precision}
out["loaded"] = sorted(m for m in BLOCKED if m in sys.modules)
print(json.dumps(out))
"""


def prepare(work: Path, images: int = 60) -> dict:
    """Quantize a zoo model and write labelled JPEGs; eval's top-1 and each image's ORT class."""
    import numpy as np
    from PIL import Image

    from repdeploy.data import builtin_path, open_dataset
    from repdeploy.recorded import preprocessing_of
    from repdeploy.quant.ptq import quantize
    from repdeploy.runtime.ort import OrtRunner
    from repdeploy.zoo import builtin_zoo

    work.mkdir(parents=True, exist_ok=True)
    entry = builtin_zoo()[0]
    out = work / "int8"
    result = quantize(str(entry.file), output_dir=out, calib_samples=64, input_format="uint8-nhwc", device="cpu")
    models = [result.int8_onnx, out / f"model_int8_{result.target}_uint8_nhwc.onnx"]
    archive = np.load(builtin_path())
    folder = work / "val"
    for i, (image, label) in enumerate(zip(archive["val_images"][:images], archive["val_labels"][:images])):
        path = folder / str(int(label)) / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert("RGB").save(path, quality=90)
    dataset = open_dataset(folder, image_size=entry.input_size, channels=3, preprocessing=preprocessing_of(models[0]))
    # the ImageFolder order (data/folders.py): class folders sorted, the files of each sorted
    files = [str(p) for c in dataset.classes for p in sorted((folder / c).rglob("*.jpg"))]
    runner = OrtRunner(models[0], intra_op_threads=1)
    with runner:
        reference = np.concatenate([runner.infer(x.numpy()).argmax(1) for x, _ in dataset.batches(32)])
    evaluated = subprocess.run([sys.executable, "-m", "repdeploy", "eval", str(models[0]), "--eval-data", str(folder),
                                "--json", "-q"], capture_output=True, text=True, check=True)
    return {"models": [str(m) for m in models], "files": files, "labels": dataset.labels.tolist(),
            "eval_top1": json.loads(evaluated.stdout)["top1"], "ort_top1": reference.tolist()}


def classify(python: str, models: list[str], files: list[str], work: Path) -> dict:
    listing = work / "files.json"
    listing.write_text(json.dumps(files))
    run = subprocess.run([python, "-c", SERVING_SIDE, ",".join(BLOCKED), str(listing), *models],
                         capture_output=True, text=True, cwd=str(work))
    if run.returncode:
        raise RuntimeError(f"the serving runtime failed in {python}:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout)


def check(python: str, work: Path) -> dict:
    """Everything above; `passed` says whether the runtime matched eval on every image."""
    prepared = prepare(work)
    served = classify(python, prepared["models"], prepared["files"], work)
    labels = prepared["labels"]
    summary = {"python": python, "images": len(labels), "eval_top1": prepared["eval_top1"],
               "loaded_blocked_modules": served["loaded"], "models": {}}
    passed = not served["loaded"]
    for model in prepared["models"]:
        got = served[model]["top1"]
        top1 = 100.0 * sum(int(g == y) for g, y in zip(got, labels)) / len(labels)
        same = got == prepared["ort_top1"]
        summary["models"][Path(model).name] = {"serving_top1": top1, "same_class_as_eval_every_image": same,
                                               "input_format": served[model]["input_format"],
                                               "precision": served[model]["precision"]}
        passed &= same and abs(top1 - prepared["eval_top1"]) < 1e-9
    summary["passed"] = bool(passed)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serving-python", default=sys.executable, help="interpreter of the torch-free venv")
    ap.add_argument("--work", type=Path, default=Path("runs/serving-check"))
    args = ap.parse_args()
    # absolute, not resolved: a venv's python is a symlink whose target is outside the venv
    python = os.path.abspath(args.serving_python) if os.sep in args.serving_python else args.serving_python
    summary = check(python, args.work.absolute())
    print(json.dumps(summary, indent=2))
    sys.exit(0 if summary["passed"] else 1)


if __name__ == "__main__":
    main()
