"""Read a config.pbtxt with Triton's own schema and hold it against the model it serves.

The schema is `model_config.proto` as tritonclient ships it (`tritonclient/grpc/model_config_pb2.py`).
It is loaded from that file directly, so the plain `tritonclient` wheel is enough (its `grpc`
extra would pull grpcio and pin an older protobuf than onnx uses here). Without tritonclient,
`schema_available()` is False and `repdeploy package` writes the repository unchecked; the test
suite always checks.

`cross_check` re-derives what the config must say from the ONNX graph on its own (names, types,
dims, batch, labels, warm-up, plan files) rather than trusting the writer: a writer bug and a
hand-edited config fail it alike.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from ..errors import InputError
from .signature import Signature


@functools.lru_cache(maxsize=1)
def _schema() -> Any | None:
    try:
        from tritonclient.grpc import model_config_pb2  # the grpc extra installed: the normal import

        return model_config_pb2
    except Exception:  # noqa: BLE001 - tritonclient without grpc raises RuntimeError on import
        pass
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("repdeploy_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def schema_available() -> bool:
    return _schema() is not None


def parse_config(path: str | Path) -> Any:
    """config.pbtxt -> Triton's `inference.ModelConfig` message; InputError when it does not parse."""
    schema = _schema()
    if schema is None:
        raise InputError("checking a Triton config needs tritonclient's schema: pip install tritonclient")
    from google.protobuf import text_format

    p = Path(path)
    try:
        return text_format.Parse(p.read_text(encoding="utf-8"), schema.ModelConfig())
    except text_format.ParseError as exc:
        raise InputError(f"{p} does not parse as a Triton ModelConfig: {exc}") from exc


def _dims_agree(config: tuple[int, ...], graph: tuple[int | None, ...]) -> bool:
    """Config dims against graph dims: a fixed graph dim must be matched exactly, a dynamic one by
    a positive size or -1."""
    return len(config) == len(graph) and all(
        (g is None and (c == -1 or c > 0)) or c == g for c, g in zip(config, graph))


def cross_check(config: Any, sig: Signature, model_dir: Path | None = None) -> list[str]:
    """What in a parsed config contradicts the model (an empty list: nothing).

    `model_dir` (the config's folder) also checks the label file and the model files.
    """
    problems = []
    mbs = config.max_batch_size
    if mbs < 0:
        problems.append(f"max_batch_size {mbs} is negative")
    if mbs > 0 and not sig.dynamic_batch:
        problems.append(f"max_batch_size {mbs} but the graph's batch axis is fixed at {sig.inputs[0].shape[0]}")
    plan = config.platform == "tensorrt_plan" or config.backend == "tensorrt"
    if not plan and (config.backend, config.platform) not in (("onnxruntime", "onnxruntime_onnx"),
                                                              ("onnxruntime", ""), ("", "onnxruntime_onnx")):
        problems.append(f"backend {config.backend!r} / platform {config.platform!r} is not ONNX Runtime's")

    def against(entries, tensors, kind: str) -> None:
        names = [e.name for e in entries]
        if names != [t.name for t in tensors]:
            problems.append(f"{kind} names {names} differ from the graph's {[t.name for t in tensors]}")
            return
        for e, t in zip(entries, tensors):
            graph_dims = t.shape[1:] if mbs > 0 else t.shape
            declared_type = _schema().DataType.Name(e.data_type)
            if declared_type != t.triton_type:
                problems.append(f"{kind} {t.name!r} is declared {declared_type} but the graph's type is {t.triton_type}")
            if not _dims_agree(tuple(e.dims), graph_dims):
                problems.append(f"{kind} {t.name!r} dims {list(e.dims)} disagree with the graph's "
                                f"{['?' if d is None else d for d in graph_dims]}"
                                + (" (max_batch_size > 0: dims exclude the batch)" if mbs > 0 else ""))

    against(config.input, sig.inputs, "input")
    against(config.output, sig.outputs, "output")
    declared = {e.name: tuple(e.dims) for e in config.input}
    for w in config.model_warmup:
        if w.batch_size < 1 or (mbs > 0 and w.batch_size > mbs) or (mbs == 0 and w.batch_size != 1):
            problems.append(f"warm-up {w.name!r} batch {w.batch_size} is outside what max_batch_size {mbs} allows")
        for name, value in w.inputs.items():
            want = declared.get(name)
            if want is None:
                problems.append(f"warm-up {w.name!r} feeds {name!r}, which is not an input")
            elif not _dims_agree(tuple(value.dims), tuple(None if d == -1 else d for d in want)) or -1 in value.dims:
                problems.append(f"warm-up {w.name!r} dims {list(value.dims)} do not fit input {name!r} {list(want)}")
    if model_dir is not None:
        for out in config.output:
            if out.label_filename:
                labels = model_dir / out.label_filename
                if not labels.is_file():
                    problems.append(f"label file {out.label_filename} is missing")
                else:
                    n = len(labels.read_text(encoding="utf-8").splitlines())
                    if out.dims and out.dims[-1] != n:
                        problems.append(f"{out.label_filename} has {n} lines for {out.dims[-1]} classes")
        version = model_dir / "1"
        files = list(config.cc_model_filenames.values()) if plan else [config.default_model_filename or "model.onnx"]
        if plan and not files:
            problems.append("a TensorRT model without cc_model_filenames (plans are per compute capability)")
        problems += [f"model file 1/{f} is missing" for f in files if not (version / f).is_file()]
    return problems
