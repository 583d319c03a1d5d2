"""ONNX Runtime CPU runner: FP32 or INT8 QDQ graphs, with settable thread pools."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import ExportError, InputError
from ..metadata import META_SESSION_CONFIG, SESSION_CONFIG_KEYS, onnx_metadata, session_config_in, set_metadata_prop
from .base import InputMetadata, Runner


def default_threads() -> int:
    """The intra-op thread count for ORT sessions not given one: torch's, so one setting rules both.

    ORT on its own sizes every session to all physical cores; a process that limited torch
    (`torch.set_num_threads`, OMP_NUM_THREADS, a test worker) would still oversubscribe the CPU.
    A process without torch loaded (the serving runtime) gets 0: ORT's own default.
    """
    import sys

    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else 0


# The recorded session config (metadata `repdeploy.ort_session_config`, META_SESSION_CONFIG) and
# the keys a model may set (SESSION_CONFIG_KEYS) live in metadata.py, beside the other metadata
# keys, so the torch-free serving runtime reads them as the runners do.


def session_options(threads: int | None = None, *, inter_op_threads: int | None = None, optimize: bool = True,
                    config: Mapping[str, str] | None = None):
    """The `onnxruntime.SessionOptions` every repdeploy session uses (runners, parity, evaluation).

    `config`: session config entries to add (`recorded_session_config` of the model, for runners).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    if inter_op_threads:
        options.inter_op_num_threads = inter_op_threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # ORT's warnings about unused initializers are noise here
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return options


def record_session_config(model, config: Mapping[str, str]) -> None:
    """Record `config` in an in-memory onnx.ModelProto's metadata (replacing an earlier record)."""
    unknown = sorted(set(config) - SESSION_CONFIG_KEYS)
    if unknown:
        raise ExportError(f"{unknown[0]} is not a session config entry a repdeploy model may record "
                          f"(allowed: {sorted(SESSION_CONFIG_KEYS)})")
    set_metadata_prop(model, META_SESSION_CONFIG, json.dumps(dict(config), sort_keys=True))


def recorded_session_config(path: str | Path) -> dict[str, str]:
    """The session config entries an ONNX file records (empty when it records none).

    Entries outside `SESSION_CONFIG_KEYS` are left out with a warning: a model file may tune how
    ORT schedules it, not make it write files or change its results.

    >>> recorded_session_config("runs/a0/model_int8_ort.onnx")    # doctest: +SKIP
    {'session.intra_op.spin_duration_us': '100'}
    """
    try:
        props = onnx_metadata(path)
    except (OSError, ValueError):  # an unreadable file is reported by the session that opens it
        return {}
    return session_config_in(props, str(path))


#: the entry `--ort-spin-us` sets: how long ORT's idle intra-op threads spin before they sleep
SPIN_KEY = "session.intra_op.spin_duration_us"


@dataclass(frozen=True)
class SharedSessionConfig:
    """One set of ORT session config entries for every model of a latency comparison, and where it
    came from, so that neither side of a speed-up gets a scheduling setting the other lacks."""

    config: dict[str, str]
    source: str  # "recorded by <file>", "--ort-spin-us N" or "ORT defaults"

    def describe(self) -> str:
        entries = ", ".join(f"{k}={v}" for k, v in sorted(self.config.items())) or "ORT defaults"
        return f"{entries} ({self.source}; the same for every model)"

    def to_dict(self) -> dict:
        return {"config": dict(self.config), "source": self.source, "applied_to": "every model"}

    def apply(self, runner: Runner) -> Runner:
        """Give an inactive ORT runner this config (other engines have none); returns the runner."""
        if isinstance(runner, OrtRunner):
            runner.session_config = dict(self.config)
        return runner


def shared_session_config(paths, spin_us: str | int | None = None) -> SharedSessionConfig:
    """The session config entries that every model of one comparison runs with.

    `spin_us` None or "recorded": what the ONNX files record (`recorded_session_config`: the
    INT8 `ort` layout records a 100 us spin bound), merged and applied to every model, the FP32
    one included; files that record different values for one entry are refused. "default": no
    entries, ORT's own defaults for every model. An integer N: `session.intra_op.spin_duration_us`
    = N for every model. docs/benchmarks.md, "ORT session settings for services", says why.

    >>> shared_session_config(["model_fp32.onnx", "model_int8_ort.onnx"]).config     # doctest: +SKIP
    {'session.intra_op.spin_duration_us': '100'}
    """
    if spin_us is None or spin_us == "recorded":
        merged: dict[str, str] = {}
        owners: dict[str, str] = {}
        for path in paths:
            if not str(path).endswith(".onnx"):
                continue
            for key, value in recorded_session_config(path).items():
                if key in merged and merged[key] != value:
                    raise InputError(f"{owners[key]} records ORT {key}={merged[key]} but {Path(path).name} records "
                                     f"{value}; time them under one setting with --ort-spin-us N (or default)")
                merged[key], owners[key] = value, Path(path).name
        if not merged:
            return SharedSessionConfig({}, "no model records a session setting")
        return SharedSessionConfig(merged, "recorded by " + ", ".join(sorted(set(owners.values()))))
    if spin_us == "default":
        return SharedSessionConfig({}, "--ort-spin-us default")
    try:
        value = int(spin_us)
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value <= 1_000_000 or isinstance(spin_us, bool):
        raise InputError(f"--ort-spin-us {spin_us!r}: give microseconds as an integer 0-1000000, "
                         "'recorded' (the models' own setting, for every model) or 'default' (ORT's)")
    return SharedSessionConfig({SPIN_KEY: str(value)}, f"--ort-spin-us {value}")


class OrtRunner(Runner):
    """Run an ONNX file on ONNX Runtime's CPU execution provider.

    `intra_op_threads` is the thread count a user means by "threads" (parallelism inside one
    operator); `inter_op_threads` only matters with parallel execution mode, which these
    sequential conv stacks do not benefit from, so it is left to ORT unless set.
    `session_config`: config entries for the session; None (the default) applies what the model
    records (`recorded_session_config`), {} runs ORT's defaults.
    """

    engine = "ort"

    def __init__(self, path: str | Path, *, name: str | None = None, intra_op_threads: int | None = None,
                 inter_op_threads: int | None = None, optimize: bool = True,
                 session_config: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        super().__init__(name or self.path.name)
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.optimize = optimize
        self.session_config = None if session_config is None else dict(session_config)
        self._session = None
        self._input_name = ""

    def activate_impl(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise InputError(f"ONNX model {self.path} does not exist; export one with `repdeploy export`")
        if self.session_config is None:
            self.session_config = recorded_session_config(self.path)
        options = session_options(self.intra_op_threads, inter_op_threads=self.inter_op_threads,
                                  optimize=self.optimize, config=self.session_config)
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types; all mean a bad file
            raise InputError(f"{self.path} is not a loadable ONNX model ({str(exc).splitlines()[0]}); "
                             "re-export it with `repdeploy export`") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise InputError(f"{self.path} has {len(inputs)} inputs; repdeploy runs single-image-input classifiers")
        self._input_name = inputs[0].name
        if inputs[0].type == "tensor(uint8)":
            raise InputError(f"{self.path} takes uint8 pixels and normalises them in its graph (--input-format); "
                             "evaluate, benchmark or compare the float-input ONNX beside it, or serve it with "
                             "repdeploy.serving")
        batch = inputs[0].shape[0] if inputs[0].shape else None
        self._fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self._input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32

    def deactivate_impl(self) -> None:
        self._session = None

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        if getattr(self, "_fixed_batch", None) and x.shape[0] != self._fixed_batch:
            raise InputError(f"{self.path} has a fixed batch of {self._fixed_batch} and was given {x.shape[0]} images; "
                             f"use --batch-size {self._fixed_batch} (eval) or --batches {self._fixed_batch} (bench), "
                             "or re-export it with a dynamic batch (`repdeploy export`)")
        if self._input_dtype is np.float16:  # an FP16 graph: fp16 in, fp16 logits out
            return self._session.run(None, {self._input_name: x.astype(np.float16)})[0].astype(np.float32)
        return self._session.run(None, {self._input_name: x})[0]

    def get_input_metadata_impl(self) -> InputMetadata:
        meta = self._session.get_inputs()[0]
        shape = tuple(d if isinstance(d, int) else None for d in meta.shape)
        from ..metadata import META_INPUT_SIZE

        nominal = onnx_metadata(self.path).get(META_INPUT_SIZE)  # the one reader (metadata.py)
        dtype = "float16" if self._input_dtype is np.float16 else "float32"
        size = int(nominal) if nominal and nominal.isdigit() else None
        if size is not None:
            from ..validate import input_size

            try:
                input_size(f"{self.path} metadata {META_INPUT_SIZE}", size)  # 100000 would ask for terabytes
            except InputError as exc:
                raise InputError(f"{exc}; re-export the model with `repdeploy export`") from None
        return InputMetadata(meta.name, shape, dtype, size)

    def describe(self) -> dict:
        threads = self._session.get_session_options().intra_op_num_threads if self._session else None
        return {"engine": self.engine, "name": self.name, "intra_op_threads": self.intra_op_threads or threads,
                "inter_op_threads": self.inter_op_threads, "session_config": dict(self.session_config or {})}
