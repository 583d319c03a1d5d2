"""`Model`: one ONNX file repdeploy wrote, opened for a service (numpy, onnxruntime, Pillow only).

Everything the service needs comes from the file's metadata (metadata.py): the preprocessing
record, the class names, the input format (float NCHW, or uint8 pixels the graph normalises) and
the ORT session settings the model was measured with. One `onnxruntime.InferenceSession` per
model; `InferenceSession.run` may be called from several threads at once (ONNX Runtime documents
it as thread-safe), and the rest of a request (decoding, preprocessing, top-k) touches no shared
state, so one `Model` serves concurrent callers without a lock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..metadata import (META_INPUT_FORMAT, META_INPUT_SIZE, META_PRECISION, class_names_in, onnx_metadata,
                        session_config_in)
from ..pixels import to_input, to_pixels
from ..metadata import META_PREPROCESSING
from ..preprocess import Preprocessing
from .images import decode


@dataclass(frozen=True)
class Prediction:
    """One class of a top-k answer: its index (the logit's position), name and softmax score."""

    index: int
    name: str
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


class Model:
    """A classifier ONNX opened for serving.

    `threads`: ORT intra-op threads (None: ORT's default, one per physical core; a service running
    several workers gives each a share). `spin_us`: how long an idle ORT pool thread spins before it
    sleeps (None: what the model records, e.g. 100 us for the `ort` INT8 layout; 0: never spin, the
    choice for a machine shared with other work). `session_config`: further ORT session config
    entries, which override the recorded ones. `preprocessing`: a record for a file that carries
    none. `warmup`: run one nominal-size batch now, so the first request does not pay for ORT's
    lazy initialisation.

    >>> model = Model("out/model_int8_ort.onnx", threads=2)                      # doctest: +SKIP
    >>> model.predict("cat.jpg", top_k=3)                                        # doctest: +SKIP
    [Prediction(index=281, name='tabby', score=0.62), ...]
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, spin_us: int | None = None,
                 session_config: Mapping[str, str] | None = None, preprocessing: Preprocessing | None = None,
                 warmup: bool = True) -> None:
        import onnxruntime as ort

        from ..runtime.ort import session_options

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"model {self.path} does not exist; give an ONNX file from `repdeploy export` or "
                             "`repdeploy quantize`")
        try:
            meta = onnx_metadata(self.path)
        except ValueError as exc:
            raise InputError(f"{self.path} is not an ONNX model ({exc}); give an ONNX file repdeploy wrote") from exc
        self.metadata = meta
        raw = meta.get(META_PREPROCESSING)
        self.preprocessing = preprocessing or (
            Preprocessing.from_dict(__import__("json").loads(raw), f"{self.path} metadata") if raw else None)
        if self.preprocessing is None:
            raise InputError(f"{self.path} carries no preprocessing record; re-export it with repdeploy, or pass "
                             "preprocessing=Preprocessing(...)")
        self.input_format = meta.get(META_INPUT_FORMAT, "float")
        self.precision = meta.get(META_PRECISION)
        size = meta.get(META_INPUT_SIZE, "")
        self.input_size = int(size) if size.isdigit() else self.preprocessing.input_size
        config = session_config_in(meta, str(self.path))
        if spin_us is not None:
            if isinstance(spin_us, bool) or not isinstance(spin_us, int) or spin_us < 0:
                raise InputError(f"spin_us={spin_us!r}: give a whole number of microseconds >= 0")
            config["session.intra_op.spin_duration_us"] = str(spin_us)
            config["session.intra_op.allow_spinning"] = "0" if spin_us == 0 else "1"
        config.update({str(k): str(v) for k, v in (session_config or {}).items()})
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads={threads!r}: give a positive number of threads (or None for ORT's default)")
        self.session_config = config
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads or 0, config=config),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; all mean a bad file
            raise InputError(f"{self.path} is not a loadable ONNX model ({str(exc).splitlines()[0]})") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InputError(f"{self.path} has {len(inputs)} inputs; repdeploy serves single-image-input classifiers")
        self.input_name = inputs[0].name
        self._dtype = {"tensor(float16)": np.float16, "tensor(uint8)": np.uint8}.get(inputs[0].type, np.float32)
        outputs = self.session.get_outputs()
        self.num_classes = outputs[0].shape[-1] if isinstance(outputs[0].shape[-1], int) else None
        names = class_names_in(meta, str(self.path))
        self.class_names: list[str] = names or [str(i) for i in range(self.num_classes or 0)]
        if warmup:
            self.warmup()

    def warmup(self, iterations: int = 2) -> None:
        """Run nominal-size zero images through the session (ORT allocates and picks kernels on first use)."""
        if self.input_format == "float":
            shape = (1, self.preprocessing.channels, self.input_size, self.input_size)
        elif self.input_format == "uint8-nhwc":
            shape = (1, self.input_size, self.input_size, self.preprocessing.channels)
        else:
            shape = (1, self.preprocessing.channels, self.input_size, self.input_size)
        batch = np.zeros(shape, dtype=self._dtype)
        for _ in range(max(1, iterations)):
            self.session.run(None, {self.input_name: batch})

    def inputs(self, images: Sequence) -> np.ndarray:
        """Images (paths, bytes, PIL images, uint8 arrays) -> the batch this model's input takes."""
        decoded = [decode(im) for im in images]
        if self.input_format == "float":
            return to_input(decoded, self.preprocessing).astype(self._dtype, copy=False)
        pixels = to_pixels(decoded, self.preprocessing)
        return pixels if self.input_format == "uint8-nhwc" else np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's logits for a batch `inputs` made, as float32."""
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)

    def classify(self, batch: np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
        """Top-k classes of each image of a preprocessed batch: the step after `inputs`."""
        return self.rank(self.logits(batch), top_k)

    def rank(self, logits: np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
        """Logits (N, classes) -> each row's top-k classes with names and softmax scores."""
        k = max(1, min(int(top_k), logits.shape[-1]))
        top = np.argpartition(-logits, k - 1, axis=-1)[:, :k] if k < logits.shape[-1] else \
            np.tile(np.arange(logits.shape[-1]), (len(logits), 1))
        rows = np.arange(len(logits))[:, None]
        top = np.take_along_axis(top, np.argsort(-logits[rows, top], axis=-1, kind="stable"), axis=-1)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        scores = np.exp(shifted)
        scores /= scores.sum(axis=-1, keepdims=True)
        names = self.class_names
        return [[Prediction(int(i), names[i] if i < len(names) else str(i), float(row[i])) for i in idx]
                for idx, row in zip(top, scores)]

    def predict(self, image, top_k: int = 5) -> list[Prediction]:
        """The top-k classes of one image (a path, bytes, a PIL image or a uint8 array)."""
        return self.classify(self.inputs([image]), top_k)[0]

    def predict_batch(self, images: Sequence, top_k: int = 5) -> list[list[Prediction]]:
        """The top-k classes of each image, run as one batch."""
        if not len(images):
            raise InputError("predict_batch: no images given")
        return self.classify(self.inputs(list(images)), top_k)

    def describe(self) -> dict:
        """What was read from the file and how the session runs (for a service's health endpoint)."""
        opts = self.session.get_session_options()
        return {"model": str(self.path), "precision": self.precision, "input_format": self.input_format,
                "input_name": self.input_name, "input_size": self.input_size, "classes": len(self.class_names),
                "preprocessing": self.preprocessing.to_dict(), "intra_op_threads": opts.intra_op_num_threads,
                "session_config": dict(self.session_config)}
