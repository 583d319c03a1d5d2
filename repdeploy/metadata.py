"""What an ONNX file repdeploy writes says about itself: its metadata_props, one writer, one reader.

Every ONNX repdeploy writes (FP32, FP16, both INT8 layouts; from export, quantize, qat, pipeline)
carries these keys, so a service (serving/, a Triton repository) needs nothing but the file:

| key | value |
|---|---|
| `repdeploy.preprocessing` | the preprocessing record, JSON (`preprocess.Preprocessing.to_dict`) |
| `repdeploy.class_names` | the class names, a JSON list of strings, one per logit |
| `repdeploy.input_size` | the nominal input size (the graph's height and width are dynamic) |
| `repdeploy.precision` | `fp32`, `fp16`, `int8-ort` or `int8-tensorrt` (the INT8 QDQ layout) |
| `repdeploy.input_format` | `float` (NCHW, preprocessed), `uint8-nhwc` or `uint8-nchw` (raw pixels; the graph normalises) |
| `repdeploy.ort_session_config` | ORT session config entries the model was measured with, JSON (scheduling keys only) |

Reading needs neither torch nor the onnx package (the serving runtime has neither): the top-level
fields of the ModelProto are stepped over by their lengths and only field 14 is decoded.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Mapping, Sequence

from .errors import InputError

META_PREPROCESSING = "repdeploy.preprocessing"
META_CLASS_NAMES = "repdeploy.class_names"
META_INPUT_SIZE = "repdeploy.input_size"
META_PRECISION = "repdeploy.precision"
META_INPUT_FORMAT = "repdeploy.input_format"
#: ORT session config entries (a JSON object, config key -> value) the model is meant to run with;
#: runtime/ort.py and serving/ apply them, so every user gets the settings it was measured with.
META_SESSION_CONFIG = "repdeploy.ort_session_config"

PRECISIONS = ("fp32", "fp16", "int8-ort", "int8-tensorrt")
INPUT_FORMATS = ("float", "uint8-nhwc", "uint8-nchw")
#: Config entries a recorded model may set: only scheduling knobs, which change speed and never
#: results. Anything else in a file (a key that writes files, say) is not applied.
SESSION_CONFIG_KEYS = frozenset({
    "session.intra_op.allow_spinning", "session.intra_op.spin_duration_us", "session.intra_op.spin_backoff_max",
    "session.inter_op.allow_spinning", "session.inter_op.spin_duration_us", "session.inter_op.spin_backoff_max",
    "session.dynamic_block_base", "session.force_spinning_stop",
})


# -- writing ---------------------------------------------------------------------------------------


def set_metadata_prop(model, key: str, value: str) -> None:
    """Set one metadata_props entry of an in-memory onnx.ModelProto, replacing an earlier one."""
    for prop in list(model.metadata_props):
        if prop.key == key:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def stamp(model, *, preprocessing=None, class_names: Sequence[str] | None = None, input_size: int | None = None,
          precision: str | None = None, input_format: str | None = None) -> None:
    """Write the given facts into an in-memory onnx.ModelProto (None leaves a key as it is).

    The one writer of repdeploy's ONNX metadata: export/onnx.py, export/qdq.py and the in-graph
    preprocessing writer all call it.
    """
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if input_format is not None and input_format not in INPUT_FORMATS:
        raise ValueError(f"input format {input_format!r} is not one of {INPUT_FORMATS}")
    if preprocessing is not None:
        set_metadata_prop(model, META_PREPROCESSING, json.dumps(preprocessing.to_dict(), sort_keys=True))
    if class_names is not None:
        set_metadata_prop(model, META_CLASS_NAMES, json.dumps([str(c) for c in class_names]))
    if input_size is not None:
        set_metadata_prop(model, META_INPUT_SIZE, str(int(input_size)))
    if precision is not None:
        set_metadata_prop(model, META_PRECISION, precision)
    if input_format is not None:
        set_metadata_prop(model, META_INPUT_FORMAT, input_format)


def read_labels(path: str | Path) -> list[str]:
    """Class names from a labels file: one name per line (blank lines at the end ignored)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--labels {p}: cannot be read ({exc}); give a UTF-8 text file, one class name a line") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names or any(not n for n in names):
        raise InputError(f"--labels {p}: {'is empty' if not names else 'has a blank line'}; "
                         "give one class name per line")
    return names


def check_class_names(names: Sequence[str] | None, num_classes: int, source: str) -> list[str] | None:
    """`names` when there is one per logit; a clear error when a user's list does not fit the model."""
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise InputError(f"{source} names {len(names)} classes but the model predicts {num_classes}; "
                         "give one name per class, in the order of the logits")
    return names


# -- reading ---------------------------------------------------------------------------------------


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's metadata_props, read without parsing its graph (or importing onnx).

    Every ORT runner activation and every `preprocessing_of` reads them; `onnx.load` would parse
    all weights first (0.6 s for B1's FP32 file). Raises ValueError on a file that is not a ModelProto.
    """
    import mmap

    props: dict[str, str] = {}
    with open(path, "rb") as f:
        if not f.seek(0, 2):
            raise ValueError(f"{path} is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            pos, end = 0, len(buf)
            while pos < end:
                key, pos = _varint(buf, pos)
                field, wire = key >> 3, key & 7
                if wire == 0:
                    _, pos = _varint(buf, pos)
                elif wire == 1 or wire == 5:
                    pos += 8 if wire == 1 else 4
                elif wire == 2:
                    length, pos = _varint(buf, pos)
                    if field == 14:
                        try:
                            k, v = _string_entry(buf[pos:pos + length])
                        except ValueError as exc:
                            raise ValueError(f"{path}: unreadable metadata entry at byte {pos}") from exc
                        props[k] = v
                    pos += length
                else:
                    raise ValueError(f"{path} is not an ONNX model (wire type {wire} at byte {pos})")
            if pos != end:
                raise ValueError(f"{path} is truncated")
    return props


def _string_entry(data: bytes) -> tuple[str, str]:
    """A StringStringEntryProto: field 1 the key, field 2 the value (both length-delimited)."""
    fields = {1: "", 2: ""}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire != 2:
            raise ValueError(f"wire type {wire} in a string entry")
        length, pos = _varint(data, pos)
        if pos + length > len(data):
            raise ValueError("string past the entry's end")
        if field in fields:
            try:
                fields[field] = data[pos:pos + length].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(str(exc)) from exc
        pos += length
    return fields[1], fields[2]


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or invalid varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def class_names_in(props: Mapping[str, str], source: str) -> list[str] | None:
    """The class names a metadata map records (None when it records none)."""
    raw = props.get(META_CLASS_NAMES)
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{source} metadata {META_CLASS_NAMES} is not a JSON list of strings; re-export the model")
    return names


def session_config_in(props: Mapping[str, str], source: str) -> dict[str, str]:
    """The session config entries a metadata map records (empty when it records none).

    Entries outside `SESSION_CONFIG_KEYS` are left out with a warning: a model file may tune how
    ORT schedules it, not make it write files or change its results.
    """
    raw = props.get(META_SESSION_CONFIG)
    if raw is None:
        return {}
    try:
        entries = json.loads(raw)
    except ValueError:
        entries = None
    if not isinstance(entries, dict):
        warnings.warn(f"{source}: metadata {META_SESSION_CONFIG} is not a JSON object; ORT defaults apply")
        return {}
    ignored = sorted(k for k in entries if k not in SESSION_CONFIG_KEYS)
    if ignored:
        warnings.warn(f"{source}: ignoring recorded session config {ignored} (not a scheduling setting)")
    return {str(k): str(v) for k, v in entries.items() if k in SESSION_CONFIG_KEYS}
