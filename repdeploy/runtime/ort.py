"""ONNX Runtime CPU runner: FP32 or INT8 QDQ graphs, with settable thread pools."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import ExportError, InputError
from ..preprocess import onnx_metadata, set_metadata_prop
from .base import InputMetadata, Runner


def default_threads() -> int:
    """The intra-op thread count for ORT sessions not given one: torch's, so one setting rules both.

    ORT on its own sizes every session to all physical cores; a process that limited torch
    (`torch.set_num_threads`, OMP_NUM_THREADS, a test worker) would still oversubscribe the CPU.
    """
    import torch

    return torch.get_num_threads()


#: ONNX metadata key under which an exporter records the ORT session config entries (a JSON
#: object, config key -> value) its model is meant to run with; `OrtRunner` applies them, so
#: `repdeploy bench`, `eval` and API users get the settings the model was measured with.
META_SESSION_CONFIG = "repdeploy.ort_session_config"

#: Config entries a recorded model may set: only scheduling knobs, which change speed and never
#: results. Anything else in a file (a key that writes files, say) is not applied.
SESSION_CONFIG_KEYS = frozenset({
    "session.intra_op.allow_spinning", "session.intra_op.spin_duration_us", "session.intra_op.spin_backoff_max",
    "session.inter_op.allow_spinning", "session.inter_op.spin_duration_us", "session.inter_op.spin_backoff_max",
    "session.dynamic_block_base", "session.force_spinning_stop",
})


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
        raw = onnx_metadata(path).get(META_SESSION_CONFIG)
    except (OSError, ValueError):  # an unreadable file is reported by the session that opens it
        return {}
    if raw is None:
        return {}
    try:
        entries = json.loads(raw)
    except ValueError:
        entries = None
    if not isinstance(entries, dict):
        warnings.warn(f"{path}: metadata {META_SESSION_CONFIG} is not a JSON object; ORT defaults apply")
        return {}
    ignored = sorted(k for k in entries if k not in SESSION_CONFIG_KEYS)
    if ignored:
        warnings.warn(f"{path}: ignoring recorded session config {ignored} (not a scheduling setting)")
    return {str(k): str(v) for k, v in entries.items() if k in SESSION_CONFIG_KEYS}


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
        self._input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32

    def deactivate_impl(self) -> None:
        self._session = None

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        if self._input_dtype is np.float16:  # an FP16 graph: fp16 in, fp16 logits out
            return self._session.run(None, {self._input_name: x.astype(np.float16)})[0].astype(np.float32)
        return self._session.run(None, {self._input_name: x})[0]

    def get_input_metadata_impl(self) -> InputMetadata:
        meta = self._session.get_inputs()[0]
        shape = tuple(d if isinstance(d, int) else None for d in meta.shape)
        from ..preprocess import META_INPUT_SIZE

        nominal = self._session.get_modelmeta().custom_metadata_map.get(META_INPUT_SIZE)
        dtype = "float16" if self._input_dtype is np.float16 else "float32"
        return InputMetadata(meta.name, shape, dtype, int(nominal) if nominal and nominal.isdigit() else None)

    def describe(self) -> dict:
        threads = self._session.get_session_options().intra_op_num_threads if self._session else None
        return {"engine": self.engine, "name": self.name, "intra_op_threads": self.intra_op_threads or threads,
                "inter_op_threads": self.inter_op_threads, "session_config": dict(self.session_config or {})}
