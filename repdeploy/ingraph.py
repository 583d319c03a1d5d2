"""Preprocessing inside the graph, on request: a uint8 pixel input that the ONNX normalises itself.

`export --input-format uint8-nhwc` (or `uint8-nchw`, or `quantize --input-format ...`) puts, in
front of the graph's first node (the first QuantizeLinear of an INT8 graph):

    pixels (uint8, N x H x W x C) -> Cast(float) -> [Transpose to NCHW] -> Sub(low) -> Div(high - low)
                                  -> Sub(mean) -> Div(std) [-> Cast(float16)] -> the old input

The nodes compute exactly what the host does (pixels.normalise: the same float32 operations in the
same order), so the logits equal those of the float graph fed host-preprocessed pixels; the check
here proves it on every file written (tolerance.judge, the table's `input_graph` entry). The normalisation stays
its own nodes: folding it into the first conv would be wrong at padded borders, where the conv
sees zeros of the normalised image, not normalised zeros. Resize and centre crop stay on the host
(the record still says how); the serving runtime does them (serving/).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ExportError, InputError
from .metadata import INPUT_FORMATS, onnx_metadata, stamp

PIXEL_INPUT = "pixels"
#: images the in-graph normalisation is checked on (seeded uint8 pixels of the nominal size)
CHECK_IMAGES = 4


def check_input_format(value: str) -> str:
    if value not in INPUT_FORMATS:
        raise InputError(f"--input-format {value}: choose one of {', '.join(INPUT_FORMATS)}")
    return value


def add_pixel_input(model, record, input_format: str) -> None:
    """Put the normalisation of `record` in front of an in-memory onnx.ModelProto (in place)."""
    from onnx import TensorProto, helper, numpy_helper

    check_input_format(input_format)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(f"in-graph preprocessing needs a graph with one image input, not {len(inputs)}")
    old = inputs[0]
    elem = old.type.tensor_type.elem_type
    if elem not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise InputError("--input-format: this graph takes uint8 pixels already; give the float-input ONNX")
    dims = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]  # N, C, H, W
    channels = dims[1]
    if channels != record.channels:
        raise ExportError(f"the graph takes {channels} channels but the preprocessing record gives {record.channels}")
    if tuple(record.value_range) != (0.0, 255.0):
        raise InputError(f"--input-format {input_format} takes 8-bit pixels, but the model is fed pixels in the range "
                         f"{record.value_range}; export it with --input-format float")
    shape = [dims[0], dims[2], dims[3], dims[1]] if input_format == "uint8-nhwc" else dims
    lo, hi = record.value_range
    consts = {
        "low": np.array(lo, np.float32), "range": np.array(hi - lo, np.float32),
        "mean": np.asarray(record.mean, np.float32).reshape(1, -1, 1, 1),
        "std": np.asarray(record.std, np.float32).reshape(1, -1, 1, 1),
    }
    name = lambda s: f"{PIXEL_INPUT}.{s}"  # noqa: E731
    graph.initializer.extend(numpy_helper.from_array(v, name(k)) for k, v in consts.items())
    nodes = [helper.make_node("Cast", [PIXEL_INPUT], [name("float")], to=TensorProto.FLOAT, name=name("Cast"))]
    x = name("float")
    if input_format == "uint8-nhwc":
        nodes.append(helper.make_node("Transpose", [x], [name("nchw")], perm=[0, 3, 1, 2], name=name("Transpose")))
        x = name("nchw")
    steps = (("Sub", "low", "shifted"), ("Div", "range", "unit"), ("Sub", "mean", "centred"))
    for op, const, out in steps:
        nodes.append(helper.make_node(op, [x, name(const)], [name(out)], name=name(op + "_" + const)))
        x = name(out)
    last = old.name if elem == TensorProto.FLOAT else name("normalised")
    nodes.append(helper.make_node("Div", [x, name("std")], [last], name=name("Div_std")))
    if elem == TensorProto.FLOAT16:
        nodes.append(helper.make_node("Cast", [last], [old.name], to=TensorProto.FLOAT16, name=name("Cast_fp16")))
    new_input = helper.make_tensor_value_info(PIXEL_INPUT, TensorProto.UINT8, shape)
    kept = [i for i in graph.input if i.name != old.name]
    del graph.input[:]
    graph.input.extend([new_input, *kept])
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body)
    stamp(model, input_format=input_format, preprocessing=record)


def write_pixel_input(source: str | Path, output: str | Path, record, input_format: str) -> Path:
    """`source` ONNX (float input) -> `output` with the normalisation inside (atomically, checked)."""
    import onnx

    from .export.onnx_graph import saved_and_checked

    model = onnx.load(str(source))
    add_pixel_input(model, record, input_format)
    with saved_and_checked(model, output, f"{output} with in-graph preprocessing"):
        pass
    return Path(output)


def host_and_graph_inputs(pixels_nhwc: np.ndarray, record, input_format: str) -> tuple[np.ndarray, np.ndarray]:
    """The same uint8 images as the host feeds a float graph, and as a pixel graph takes them."""
    from .pixels import normalise

    host = np.stack([normalise(p, record.value_range, record.mean, record.std) for p in pixels_nhwc])
    graph = pixels_nhwc if input_format == "uint8-nhwc" else np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2))
    return host, graph


def check_pixel_input(float_onnx: str | Path, pixel_onnx: str | Path, record, pixels_nhwc: np.ndarray | None = None,
                      *, threads: int = 1):
    """The verdict on a pixel-input graph: its logits against the float graph's on host-preprocessed
    pixels (`pixels_nhwc`, uint8 N x size x size x C; seeded random images when None). FP32-vs-FP32:
    the tight relative bound of the tolerance table (tolerance.py `input_graph`)."""
    import onnxruntime as ort

    from .runtime.ort import session_options
    from .tolerance import judge, tolerance

    input_format = onnx_metadata(pixel_onnx).get("repdeploy.input_format", "float")
    if pixels_nhwc is None:
        rng = np.random.default_rng(0)
        pixels_nhwc = rng.integers(0, 256, (CHECK_IMAGES, record.input_size, record.input_size, record.channels),
                                   dtype=np.uint8)
    host, graph = host_and_graph_inputs(pixels_nhwc, record, input_format)
    logits, fp16 = [], False
    for path, x in ((float_onnx, host), (pixel_onnx, graph)):
        session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        if inp.type == "tensor(float16)":
            x, fp16 = x.astype(np.float16), True
        logits.append(session.run(None, {inp.name: x})[0].astype(np.float32))
    # An FP16 graph: ORT's CPU runs fp16 convs through fp32 and drops the graph's fp32 -> fp16 ->
    # fp32 cast pair, so the graph's normalised input skips the fp16 rounding the host's has; the
    # fp16 bound is the one `repdeploy export --precision fp16` gates ORT against torch with.
    return judge("input_" + input_format.replace("-", "_"), logits[0], logits[1],
                 reference_name="float input, host preprocessing",
                 candidate_name=f"{input_format} input, preprocessing in the graph",
                 rule=tolerance("ort_fp16" if fp16 else "input_graph"))


def pixels_from_inputs(x: np.ndarray, record) -> np.ndarray:
    """Normalised NCHW inputs (real images a run already holds) back to their uint8 NHWC pixels."""
    lo, hi = record.value_range
    a = np.asarray(x, np.float32).transpose(0, 2, 3, 1)
    raw = (a * np.asarray(record.std, np.float32) + np.asarray(record.mean, np.float32)) * (hi - lo) + lo
    return np.clip(np.rint(raw), 0, 255).astype(np.uint8)


def write_checked(float_onnx: str | Path, output: str | Path, record, input_format: str,
                  pixels_nhwc: np.ndarray | None = None):
    """Write the pixel-input copy of `float_onnx` to `output` and return its verdict (the one place
    export, quantize and pipeline judge it; the caller decides what a failed verdict stops)."""
    write_pixel_input(float_onnx, output, record, input_format)
    return check_pixel_input(float_onnx, output, record, pixels_nhwc)
