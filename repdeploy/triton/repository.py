"""Write Triton model repositories: one model directory per packaged model, several per repository.

    REPO/<name>/config.pbtxt     derived from the graph (config.py)
    REPO/<name>/labels.txt       class names (the ONNX metadata, or --labels)
    REPO/<name>/1/model.onnx     or 1/model_sm86.plan, ... one TensorRT plan per compute capability
    REPO/<name>/manifest.json    what repdeploy wrote here (Triton ignores it)

A model directory follows the run-directory rules of rundir.py: it is staged beside its target and
swapped in whole, and an existing one is replaced only when its repdeploy manifest lists every
file in it (else `--force`, which keeps the foreign files). Other directories of the repository,
repdeploy's or not, are never touched: re-packaging one model leaves the others as they were.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import ExportError, InputError
from ..progress import status, warn
from ..rundir import (MANIFEST, TOOL, OutputSet, check_owned, foreign_files, read_manifest,
                      refuse_overwriting_inputs)
from ..version import __version__
from .config import LABELS_FILE, VERSION_DIR, ModelPlan, plan_model, render
from ..metadata import read_labels
from .signature import META_CLASS_NAMES, read_onnx
from .stamp import engine_stamp

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
MODEL_KIND = "triton-model"  # manifest.json "kind": tells a model directory from a pipeline run directory
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ModelSource:
    """One file to package, under the Triton model name `name` (None: derived from the path)."""

    path: Path
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelSource":
        """`PATH` or `NAME=PATH` (a path that exists as written is never split)."""
        if "=" in text and not Path(text).exists():
            name, _, path = text.partition("=")
            return cls(Path(path), name)
        return cls(Path(text))


@dataclass
class PackagedModel:
    name: str
    directory: Path
    sources: list[str]
    platform: str
    max_batch_size: int
    precision: str
    labels: bool
    checked: bool  # parsed with Triton's schema and cross-checked against the graph

    def to_dict(self) -> dict:
        return {**self.__dict__, "directory": str(self.directory)}


@dataclass
class Repository:
    path: Path
    models: list[PackagedModel] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"repository": str(self.path), "models": [m.to_dict() for m in self.models]}


def default_name(path: Path) -> str:
    """`runs/demo/repvgg_mini/model_int8_ort.onnx` -> `repvgg_mini_int8_ort` (folder + file stem)."""
    stem = path.stem.removeprefix("model_").removeprefix("model")
    parent = path.resolve().parent.name
    name = f"{parent}_{stem}" if stem and parent else (stem or parent or "model")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-") or "model"


def _check_name(name: str, path: Path) -> str:
    if not _NAME.match(name):
        raise InputError(f"model name {name!r} (for {path}): use letters, digits, '_', '.' and '-', not starting with "
                         "'.' or '-' (Triton's model directory name)")
    return name


def plan_repository(sources: Sequence[ModelSource], *, labels: str | Path | None = None,
                    max_batch_size: int | None = None, kind: str | None = None, instances: int = 1,
                    tensorrt_accelerator: bool = False, compute_capability: str | None = None,
                    tensorrt_version: str | None = None) -> list[ModelPlan]:
    """Group the files by model name and decide every config; nothing is written."""
    if not sources:
        raise InputError("no model given; name ONNX files or TensorRT plans to package")
    label_file = tuple(read_labels(labels)) if labels is not None else None  # the one labels-file reader
    groups: dict[str, list[Path]] = {}
    for src in sources:
        name = _check_name(src.name or default_name(src.path), src.path)
        groups.setdefault(name, []).append(src.path)
    plans = []
    for name, paths in groups.items():
        engines = [p for p in paths if p.suffix.lower() in ENGINE_SUFFIXES]
        if len(paths) > 1 and len(engines) != len(paths):
            raise InputError(f"model name {name!r} is given to {', '.join(map(str, paths))}; only TensorRT plans "
                             "for different GPUs share a model: name the others apart with NAME=PATH")
        stamps = [engine_stamp(p, compute_capability=compute_capability, tensorrt_version=tensorrt_version)
                  for p in engines]
        if len({s.compute_capability for s in stamps}) != len(stamps):
            raise InputError(f"model {name!r}: two plans for the same compute capability "
                             f"({', '.join(f'{s.engine}: {s.compute_capability}' for s in stamps)}); give one per GPU")
        if len({s.tensorrt_version for s in stamps}) > 1:
            raise InputError(f"model {name!r}: plans from different TensorRT versions "
                             f"({', '.join(sorted({s.tensorrt_version for s in stamps}))}); one Triton release "
                             "runs one TensorRT version: rebuild them with it")
        sig = read_onnx(stamps[0].onnx if stamps else paths[0])
        for s in stamps[1:]:
            other = read_onnx(s.onnx)
            if (other.inputs, other.outputs) != (sig.inputs, sig.outputs):
                raise InputError(f"model {name!r}: {s.engine} and {stamps[0].engine} were built from graphs with "
                                 "different inputs or outputs; package them under different names")
        names = sig.class_names
        if label_file is not None:
            if names is not None and names != label_file:
                raise InputError(f"--labels {labels} disagrees with the class names {sig.path} records "
                                 f"(metadata {META_CLASS_NAMES}); drop --labels or re-export the model")
            names = label_file
        plans.append(plan_model(name, sig, stamps=stamps, max_batch_size=max_batch_size, kind=kind,
                                instances=instances, tensorrt_accelerator=tensorrt_accelerator, labels=names))
    return plans


def package_models(sources: Sequence[ModelSource | str | Path], repository: str | Path, *,
                   labels: str | Path | None = None, max_batch_size: int | None = None, kind: str | None = None,
                   instances: int = 1, tensorrt_accelerator: bool = False, compute_capability: str | None = None,
                   tensorrt_version: str | None = None, force: bool = False) -> Repository:
    """Package ONNX files and TensorRT plans into the Triton model repository `repository`.

    >>> package_models(["runs/demo/repvgg_mini/model_int8_ort.onnx"], "triton/")   # doctest: +SKIP
    Repository(path=PosixPath('triton'), models=[PackagedModel(name='repvgg_mini_int8_ort', ...)])
    """
    from ..io import ensure_writable_dir
    from .check import schema_available

    srcs = [s if isinstance(s, ModelSource) else ModelSource.parse(str(s)) for s in sources]
    plans = plan_repository(srcs, labels=labels, max_batch_size=max_batch_size, kind=kind, instances=instances,
                            tensorrt_accelerator=tensorrt_accelerator, compute_capability=compute_capability,
                            tensorrt_version=tensorrt_version)
    repo = Path(repository)
    inputs = [labels, *(f for p in plans for f in p.model_files().values()), *(p.signature.path for p in plans)]
    refuse_overwriting_inputs(inputs, directories=[repo / p.name for p in plans])
    for p in plans:  # every directory is checked before the first is written
        check_owned(repo / p.name, force=force)
        manifest = read_manifest(repo / p.name)
        if manifest is not None and manifest.get("kind") != MODEL_KIND:
            raise InputError(f"{repo / p.name} is a repdeploy run directory, not a Triton model; give -o the "
                             "repository's own folder (e.g. runs/x/triton), not the runs folder")
        if force and (repo / p.name / VERSION_DIR).exists() and VERSION_DIR not in (manifest or {}).get("artifacts", []):
            raise InputError(f"{repo / p.name / VERSION_DIR} is not repdeploy's, and --force keeps what is not ours; "
                             "move it away or give the model another name (NAME=PATH)")
    repo = ensure_writable_dir(repo)
    checked = schema_available()
    result = Repository(repo)
    for plan in plans:
        if plan.labels is None:
            warn(f"{plan.signature.path} records no class names (metadata {META_CLASS_NAMES}): {plan.name} is "
                 "packaged without labels.txt; give --labels FILE (one class name per line) to add it")
        status(f"  {plan.name}: {', '.join(plan.model_files().values())}")
        target = repo / plan.name
        with OutputSet(target, force=force) as staging:
            _write_model(plan, staging, checked)
            if force and foreign_files(target) and (target / VERSION_DIR).is_dir():
                # --force updates in place, file by file (foreign files stay); a directory cannot
                # be renamed over a non-empty one, so the old version folder (the manifest check
                # above made sure it is ours) goes first.
                shutil.rmtree(target / VERSION_DIR)
        result.models.append(PackagedModel(
            name=plan.name, directory=repo / plan.name, sources=list(plan.model_files().values()),
            platform="tensorrt_plan" if plan.is_plan else "onnxruntime_onnx", max_batch_size=plan.max_batch_size,
            precision=plan.signature.precision, labels=plan.labels is not None, checked=checked))
    return result


def _write_model(plan: ModelPlan, staging: Path, check: bool) -> None:
    from ..io import write_json_atomic

    (staging / "config.pbtxt").write_text(render(plan), encoding="utf-8")
    artifacts = ["config.pbtxt", VERSION_DIR]
    if plan.labels is not None:
        (staging / LABELS_FILE).write_text("".join(f"{n}\n" for n in plan.labels), encoding="utf-8")
        artifacts.append(LABELS_FILE)
    version = staging / VERSION_DIR
    version.mkdir()
    for dest, src in plan.model_files().items():
        shutil.copyfile(src, version / dest)
    if check:
        from .check import cross_check, parse_config

        problems = cross_check(parse_config(staging / "config.pbtxt"), plan.signature, staging)
        if problems:  # a writer bug: never hand Triton a config that contradicts its model
            raise ExportError(f"the config written for {plan.name} contradicts {plan.signature.path}: "
                              f"{'; '.join(problems)}; please report this")
    write_json_atomic(staging / MANIFEST, {
        "tool": TOOL, "version": __version__, "kind": MODEL_KIND,
        "sources": list(plan.model_files().values()), "artifacts": sorted([*artifacts, MANIFEST])})
