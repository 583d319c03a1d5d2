"""A test double of the `tensorrt` Python module (10.x API), for machines without TensorRT or a GPU.

It implements the part of TensorRT's documented Python API that repdeploy and Polygraphy's
loaders and TrtRunner use, and checks how it is called, as the bindings do:

- names and signatures: only what TensorRT 10.13 defines, with signatures its type stubs accept
  (tests/test_trt_stubs.py checks this against the `tensorrt-stubs` package); objects TensorRT
  gives no Python constructor are made by the double's own factories only;
- argument types (a wrong type raises TypeError, like pybind11's "incompatible function
  arguments"); enums are pybind11-like, one type per enum with the stubs' values, so an enum
  argument must be the right enum and two enums never compare equal;
- rules TensorRT enforces: precision builder flags are refused on strongly typed networks,
  a network with dynamic inputs needs an optimization profile covering each of them with
  min <= opt <= max, a profile given for a static dimension must fix it (min = opt = max = its
  size), `set_input_shape` must stay inside the profile, and `execute_async_v3` needs every
  input shape and every I/O address (or an output allocator) set first. A plan records the
  exact TensorRT version and the GPU compute capability (the CUDA double's device) it was built
  for, and `deserialize_cuda_engine` refuses it anywhere else. A broken rule is reported through
  the logger as an error and the call returns False / None, as in TensorRT; it is also appended
  to `VIOLATIONS` so a test can assert none.

Engines are real enough to run: the "parser" keeps the ONNX bytes, the "builder" serializes
them with a header (I/O tensors, dtypes, profile, flags), and the execution context reads its
inputs from the addresses it was given, runs the graph in ONNX Runtime and writes the outputs
to the allocator's memory; an engine built from an FP32 network with the FP16 flag runs its
graph in fp16. Device memory is host memory here (see ../cuda_runtime.py, which
plays cudart for Polygraphy), so pointers are plain addresses.

`CALLS` records (method, details) in order, for tests of call order.
Set FAKE_TENSORRT_VERSION=11.0.0 before import to get the 11.x surface (no precision builder
flags, no STRONGLY_TYPED creation flag: every network is strongly typed).
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
from typing import Any

import numpy as np

__version__ = os.environ.get("FAKE_TENSORRT_VERSION", "10.13.0.35")
_MAJOR = int(__version__.split(".")[0])
IS_FAKE = True
_bool = builtins.bool  # `bool` below is TensorRT's DataType alias, as in the real module

CALLS: list[tuple[str, Any]] = []
VIOLATIONS: list[str] = []
_MAGIC = b"FAKETRT-ENGINE/1\n"
_CACHE_MAGIC = b"FAKETRT-TIMING/1\n"


def reset() -> None:
    """Clear the call log and the violations (between tests)."""
    CALLS.clear()
    VIOLATIONS.clear()


def _make(cls: type, *args: Any) -> Any:
    """Make one of TensorRT's objects that have no Python constructor (pybind11 refuses
    `trt.ITensor()`): only the double's own factories (builder, parser, runtime) call this."""
    obj = object.__new__(cls)
    obj._init(*args)
    return obj


def _call(name: str, detail: Any = None) -> None:
    CALLS.append((name, detail))


def _expect(value: Any, types: Any, where: str) -> None:
    if not isinstance(value, types) or (types in (int, (int,)) and type(value) is type(True)):
        names = types.__name__ if isinstance(types, type) else " | ".join(t.__name__ for t in types)
        raise TypeError(f"{where}(): incompatible function arguments: expected {names}, got {type(value).__name__}")


def _dims_arg(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list, Dims)) or not all(isinstance(d, (int, np.integer)) for d in value):
        raise TypeError(f"{where}(): incompatible function arguments: expected Dims (a sequence of int), got {value!r}")
    return tuple(int(d) for d in value)


# ------------------------------------------------------------------------------ enums


class _PybindEnum:
    """An enum as pybind11 binds TensorRT's: one type per enum, members equal only to members of
    the same type (never to an int or to another enum's member of the same value), hashable,
    int() and index() give the value, no arithmetic. Python's IntEnum would make
    `DataType.FLOAT == TensorIOMode.NONE` true and hide a wrong-enum bug."""

    __members__: dict[str, "_PybindEnum"] = {}

    def __init__(self, value: int) -> None:
        _expect(value, int, f"{type(self).__name__}.__init__")
        self._value = int(value)

    @property
    def name(self) -> str:
        return next((k for k, v in type(self).__members__.items() if v._value == self._value), "???")

    @property
    def value(self) -> int:
        return self._value

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __hash__(self) -> int:
        return self._value

    def __eq__(self, other: Any) -> _bool:
        return type(other) is type(self) and other._value == self._value

    def __ne__(self, other: Any) -> _bool:
        return not self == other

    def __getstate__(self) -> int:
        return self._value

    def __setstate__(self, state: int) -> None:
        self._value = int(state)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self._value}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


def _members(cls: type, values: dict[str, int]) -> type:
    """Give `cls` its members, as class attributes and in `__members__` (values: the stubs')."""
    cls.__members__ = {}
    for name, value in values.items():
        member = cls(value)
        setattr(cls, name, member)
        cls.__members__[name] = member
    return cls


class DataType(_PybindEnum):
    @property
    def itemsize(self) -> int:
        return {0: 4, 1: 2, 2: 1, 3: 4, 4: 1, 5: 1, 6: 1, 7: 2, 8: 8}.get(self._value, 1)


_members(DataType, {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "FP8": 6, "BF16": 7,
                    "INT64": 8, "INT4": 9, "FP4": 10, "E8M0": 11})
float32, float16, int8, int32 = DataType.FLOAT, DataType.HALF, DataType.INT8, DataType.INT32
bool, uint8, fp8, bfloat16, int64, int4 = (DataType.BOOL, DataType.UINT8, DataType.FP8, DataType.BF16,  # noqa: A001
                                           DataType.INT64, DataType.INT4)


def nptype(trt_type: DataType) -> type:
    """numpy type of a TensorRT DataType (tensorrt.nptype)."""
    _expect(trt_type, DataType, "nptype")
    return {0: np.float32, 1: np.float16, 2: np.int8, 3: np.int32, 4: np.bool_, 5: np.uint8,
            8: np.int64}[trt_type._value]


class _Severity(_PybindEnum):
    # TensorRT's severities are ordered (the stubs give them __lt__/__ge__...): loggers filter on them.
    def __lt__(self, other: "_Severity") -> _bool:
        _expect(other, _Severity, "Severity.__lt__")
        return self._value < other._value

    def __le__(self, other: "_Severity") -> _bool:
        _expect(other, _Severity, "Severity.__le__")
        return self._value <= other._value

    def __gt__(self, other: "_Severity") -> _bool:
        _expect(other, _Severity, "Severity.__gt__")
        return self._value > other._value

    def __ge__(self, other: "_Severity") -> _bool:
        _expect(other, _Severity, "Severity.__ge__")
        return self._value >= other._value


_Severity.__name__ = _Severity.__qualname__ = "Severity"
_members(_Severity, {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4})


class NetworkDefinitionCreationFlag(_PybindEnum):
    pass


_members(NetworkDefinitionCreationFlag, {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2,
                                         "PREFER_AOT_PYTHON_PLUGINS": 3} if _MAJOR < 11 else
         {"PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3})


class BuilderFlag(_PybindEnum):
    pass


_flags = {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
          "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "OBEY_PRECISION_CONSTRAINTS": 9, "PREFER_PRECISION_CONSTRAINTS": 10,
          "DIRECT_IO": 11, "REJECT_EMPTY_ALGORITHMS": 12, "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14,
          "FP8": 15, "ERROR_ON_TIMING_CACHE_MISS": 16, "BF16": 17, "DISABLE_COMPILATION_CACHE": 18, "WEIGHTLESS": 19,
          "REFIT_IDENTICAL": 20, "WEIGHT_STREAMING": 21, "INT4": 22, "REFIT_INDIVIDUAL": 23, "STRICT_NANS": 24,
          "MONITOR_MEMORY": 25, "FP4": 26, "EDITABLE_TIMING_CACHE": 27, "DISTRIBUTIVE_INDEPENDENCE": 28}
_PRECISION_FLAGS = {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4"}
_members(BuilderFlag, {k: v for k, v in _flags.items() if _MAJOR < 11 or k not in _PRECISION_FLAGS})


class MemoryPoolType(_PybindEnum):
    pass


_members(MemoryPoolType, {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2, "DLA_GLOBAL_DRAM": 3,
                          "TACTIC_DRAM": 4, "TACTIC_SHARED_MEMORY": 5})


class TacticSource(_PybindEnum):
    pass


_members(TacticSource, {"CUBLAS": 0, "CUBLAS_LT": 1, "CUDNN": 2, "EDGE_MASK_CONVOLUTIONS": 3, "JIT_CONVOLUTIONS": 4})


class PreviewFeature(_PybindEnum):
    pass


_members(PreviewFeature, {"PROFILE_SHARING_0806": 0, "ALIASED_PLUGIN_IO_10_03": 1, "RUNTIME_ACTIVATION_RESIZE_10_10": 2})


class QuantizationFlag(_PybindEnum):
    pass


_members(QuantizationFlag, {"CALIBRATE_BEFORE_FUSION": 0})


class DeviceType(_PybindEnum):
    pass


_members(DeviceType, {"GPU": 0, "DLA": 1})


class ProfilingVerbosity(_PybindEnum):
    pass


_members(ProfilingVerbosity, {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})


class EngineCapability(_PybindEnum):
    pass


_members(EngineCapability, {"STANDARD": 0, "SAFETY": 1, "DLA_STANDALONE": 2})


class LayerType(_PybindEnum):
    pass


_members(LayerType, {"CONVOLUTION": 0, "CAST": 1, "ACTIVATION": 2, "POOLING": 3, "SCALE": 5, "SOFTMAX": 6,
                     "ELEMENTWISE": 9, "UNARY": 11, "SHUFFLE": 13, "REDUCE": 14, "MATRIX_MULTIPLY": 17,
                     "CONSTANT": 19, "IDENTITY": 20, "SHAPE": 23, "QUANTIZE": 32, "DEQUANTIZE": 33, "PLUGIN": 10})


class TensorIOMode(_PybindEnum):
    pass


_members(TensorIOMode, {"NONE": 0, "INPUT": 1, "OUTPUT": 2})


class TensorFormat(_PybindEnum):
    pass


_members(TensorFormat, {"LINEAR": 0, "CHW2": 1, "HWC8": 2, "CHW4": 3, "CHW16": 4, "CHW32": 5, "DHWC8": 6,
                        "CDHW32": 7, "HWC": 8, "DLA_LINEAR": 9, "DLA_HWC4": 10, "HWC16": 11, "DHWC": 12})


class TensorLocation(_PybindEnum):
    pass


_members(TensorLocation, {"DEVICE": 0, "HOST": 1})


class OnnxParserFlag(_PybindEnum):
    pass


_members(OnnxParserFlag, {"NATIVE_INSTANCENORM": 0, "ENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA": 1})


class ExecutionContextAllocationStrategy(_PybindEnum):
    pass


_members(ExecutionContextAllocationStrategy, {"STATIC": 0, "ON_PROFILE_CHANGE": 1, "USER_MANAGED": 2})


class Dims(tuple):
    """TensorRT's Dims: a tuple of int, -1 for a dynamic dimension."""

    def __new__(cls, dims=()):
        return super().__new__(cls, (int(d) for d in dims))


class Permutation(tuple):
    pass


# ------------------------------------------------------------------------------ logging


class ILogger:
    """Base for application loggers; subclasses implement log(severity, msg)."""

    Severity = _Severity
    INTERNAL_ERROR = _Severity.INTERNAL_ERROR
    ERROR = _Severity.ERROR
    WARNING = _Severity.WARNING
    INFO = _Severity.INFO
    VERBOSE = _Severity.VERBOSE

    def __init__(self) -> None:
        pass

    def log(self, severity: _Severity, msg: str) -> None:
        raise NotImplementedError


class Logger(ILogger):
    def __init__(self, min_severity: _Severity = _Severity.WARNING) -> None:
        super().__init__()
        _expect(min_severity, _Severity, "Logger.__init__")
        self.min_severity = min_severity
        self._messages: list[tuple[_Severity, str]] = []

    def log(self, severity: _Severity, msg: str) -> None:
        self._messages.append((severity, msg))


def _error(logger: ILogger, message: str) -> None:
    VIOLATIONS.append(message)
    logger.log(Logger.ERROR, message)


def init_libnvinfer_plugins(logger: ILogger, namespace: str) -> bool:
    _expect(logger, ILogger, "init_libnvinfer_plugins")
    _expect(namespace, str, "init_libnvinfer_plugins")
    return True


def get_plugin_registry():
    return None


class IHostMemory(bytearray):
    """Serialized data (an engine, a timing cache); supports the buffer protocol and `with`."""

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> DataType:
        return DataType.UINT8

    def __enter__(self) -> "IHostMemory":
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        pass


# ------------------------------------------------------------------------------ network


_ONNX_DTYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64,
                2: DataType.UINT8, 9: DataType.BOOL, 16: DataType.BF16}
_LAYER_TYPES = {"Conv": LayerType.CONVOLUTION, "Relu": LayerType.ACTIVATION, "Sigmoid": LayerType.ACTIVATION,
                "GlobalAveragePool": LayerType.POOLING, "ReduceMean": LayerType.REDUCE,
                "Gemm": LayerType.MATRIX_MULTIPLY, "MatMul": LayerType.MATRIX_MULTIPLY,
                "Flatten": LayerType.SHUFFLE, "Reshape": LayerType.SHUFFLE, "Mul": LayerType.ELEMENTWISE,
                "Add": LayerType.ELEMENTWISE, "QuantizeLinear": LayerType.QUANTIZE,
                "DequantizeLinear": LayerType.DEQUANTIZE, "Constant": LayerType.CONSTANT, "Cast": LayerType.CAST}


class ITensor:
    def _init(self, name: str, shape: Dims, dtype: DataType) -> None:
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.is_shape_tensor = False
        self.is_network_input = False
        self.is_network_output = False


class ILayer:
    def _init(self, name: str, type: LayerType, inputs: list[str], outputs: list[str]) -> None:  # noqa: A002
        self.name = name
        self.type = type
        self.num_inputs = len(inputs)
        self.num_outputs = len(outputs)
        self.precision = DataType.FLOAT
        self.precision_is_set = False


class INetworkDefinition:
    def _init(self, flags: int) -> None:
        self.flags = flags
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._layers: list[ILayer] = []
        self._onnx_bytes: bytes | None = None
        self.name = "network"

    @property
    def _strongly_typed(self) -> bool:
        if _MAJOR >= 11:
            return True
        return _bool(self.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)))

    def get_flag(self, flag: NetworkDefinitionCreationFlag) -> bool:
        _expect(flag, NetworkDefinitionCreationFlag, "INetworkDefinition.get_flag")
        return _bool(self.flags & (1 << int(flag)))

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    def get_input(self, index: int) -> ITensor:
        _expect(index, int, "INetworkDefinition.get_input")
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        _expect(index, int, "INetworkDefinition.get_output")
        return self._outputs[index]

    def get_layer(self, index: int) -> ILayer:
        _expect(index, int, "INetworkDefinition.get_layer")
        return self._layers[index]

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, arg0: int) -> ILayer:
        return self._layers[arg0]


class _ParserError:
    def __init__(self, desc: str) -> None:
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return f"In node -1 (parse): INVALID_GRAPH: {self._desc}"


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        _expect(network, INetworkDefinition, "OnnxParser.__init__")
        _expect(logger, ILogger, "OnnxParser.__init__")
        self._network = network
        self._logger = logger
        self.flags = 1 << int(OnnxParserFlag.NATIVE_INSTANCENORM)
        self._errors: list[_ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> _ParserError:
        _expect(index, int, "OnnxParser.get_error")
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors.clear()

    def set_flag(self, flag: OnnxParserFlag) -> None:
        _expect(flag, OnnxParserFlag, "OnnxParser.set_flag")
        self.flags |= 1 << int(flag)

    def clear_flag(self, flag: OnnxParserFlag) -> None:
        _expect(flag, OnnxParserFlag, "OnnxParser.clear_flag")
        self.flags &= ~(1 << int(flag))

    def get_flag(self, flag: OnnxParserFlag) -> bool:
        _expect(flag, OnnxParserFlag, "OnnxParser.get_flag")
        return _bool(self.flags & (1 << int(flag)))

    def parse_from_file(self, model: str) -> bool:
        _expect(model, str, "OnnxParser.parse_from_file")
        _call("OnnxParser.parse_from_file", model)
        try:
            with open(model, "rb") as f:
                data = f.read()
        except OSError as exc:
            self._errors.append(_ParserError(f"cannot read {model}: {exc}"))
            return False
        return self._parse(data)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        _expect(model, (bytes, bytearray, memoryview), "OnnxParser.parse")
        _call("OnnxParser.parse", path)
        return self._parse(bytes(model))

    def _parse(self, data: bytes) -> bool:
        import onnx

        try:
            model = onnx.load_from_string(data)
            onnx.checker.check_model(model)
        except Exception as exc:
            self._errors.append(_ParserError(str(exc).splitlines()[0]))
            return False
        net = self._network
        initializers = {t.name for t in model.graph.initializer}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            t = value.type.tensor_type
            dims = Dims(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            tensor = _make(ITensor, value.name, dims, _ONNX_DTYPES.get(t.elem_type, DataType.FLOAT))
            tensor.is_network_input = True
            net._inputs.append(tensor)
        for value in model.graph.output:
            t = value.type.tensor_type
            dims = Dims(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            tensor = _make(ITensor, value.name, dims, _ONNX_DTYPES.get(t.elem_type, DataType.FLOAT))
            tensor.is_network_output = True
            net._outputs.append(tensor)
        for i, node in enumerate(model.graph.node):
            net._layers.append(_make(ILayer, node.name or f"node_{i}", _LAYER_TYPES.get(node.op_type, LayerType.PLUGIN),
                                      list(node.input), list(node.output)))
        if net._strongly_typed and any(t.data_type == onnx.TensorProto.UINT8 for t in model.graph.initializer
                                      if t.name.endswith("zero_point")):
            self._errors.append(_ParserError("uint8 zero points are not supported: TensorRT needs int8 Q/DQ"))
            return False
        net._onnx_bytes = data
        return True


# ------------------------------------------------------------------------------ builder


class IOptimizationProfile:
    def _init(self) -> None:
        self._shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
        _expect(input, str, "IOptimizationProfile.set_shape")
        lo, mid, hi = (Dims(_dims_arg(d, "IOptimizationProfile.set_shape")) for d in (min, opt, max))
        _call("IOptimizationProfile.set_shape", (input, lo, mid, hi))
        self._shapes[input] = (lo, mid, hi)

    def get_shape(self, input: str) -> list[Dims]:  # noqa: A002
        _expect(input, str, "IOptimizationProfile.get_shape")
        return list(self._shapes.get(input, (Dims(), Dims(), Dims())))

    def set_shape_input(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002
        raise TypeError("set_shape_input is for shape tensors; these networks have none")

    def __bool__(self) -> bool:
        return True


class ITimingCache:
    def _init(self, entries: dict[str, float] | None = None) -> None:
        self._entries = dict(entries or {})

    def serialize(self) -> IHostMemory:
        return IHostMemory(_CACHE_MAGIC + json.dumps(self._entries, sort_keys=True).encode())

    def combine(self, input_cache: "ITimingCache", ignore_mismatch: bool) -> bool:
        _expect(input_cache, ITimingCache, "ITimingCache.combine")
        _expect(ignore_mismatch, type(True), "ITimingCache.combine")
        for k, v in input_cache._entries.items():
            self._entries.setdefault(k, v)
        return True

    def reset(self) -> bool:
        self._entries.clear()
        return True


class IBuilderConfig:
    def _init(self) -> None:
        self._flags: set[BuilderFlag] = {BuilderFlag.TF32} if "TF32" in BuilderFlag.__members__ else set()
        self._pools: dict[MemoryPoolType, int] = {MemoryPoolType.WORKSPACE: 1 << 34}
        self._profiles: list[IOptimizationProfile] = []
        self._timing_cache: ITimingCache | None = None
        self._tactic_sources = 0b11111
        self._preview: set[PreviewFeature] = set()
        self._quant_flags: set[QuantizationFlag] = set()
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.engine_capability = EngineCapability.STANDARD
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.builder_optimization_level = 3
        self.max_aux_streams = -1
        self.int8_calibrator = None
        self.algorithm_selector = None
        self.progress_monitor = None

    def set_flag(self, flag: BuilderFlag) -> None:
        _expect(flag, BuilderFlag, "IBuilderConfig.set_flag")
        _call("IBuilderConfig.set_flag", flag.name)
        self._flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        _expect(flag, BuilderFlag, "IBuilderConfig.clear_flag")
        _call("IBuilderConfig.clear_flag", flag.name)
        self._flags.discard(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        _expect(flag, BuilderFlag, "IBuilderConfig.get_flag")
        return flag in self._flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        _expect(pool, MemoryPoolType, "IBuilderConfig.set_memory_pool_limit")
        _expect(pool_size, int, "IBuilderConfig.set_memory_pool_limit")
        _call("IBuilderConfig.set_memory_pool_limit", (pool.name, pool_size))
        self._pools[pool] = pool_size

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        _expect(pool, MemoryPoolType, "IBuilderConfig.get_memory_pool_limit")
        return self._pools.get(pool, 0)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        _expect(profile, IOptimizationProfile, "IBuilderConfig.add_optimization_profile")
        _call("IBuilderConfig.add_optimization_profile", dict(profile._shapes))
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def create_timing_cache(self, serialized_timing_cache: Any) -> ITimingCache:
        _expect(serialized_timing_cache, (bytes, bytearray, memoryview), "IBuilderConfig.create_timing_cache")
        data = bytes(serialized_timing_cache)
        _call("IBuilderConfig.create_timing_cache", len(data))
        if not data:
            return _make(ITimingCache)
        if not data.startswith(_CACHE_MAGIC):
            raise RuntimeError("invalid timing cache")
        return _make(ITimingCache, json.loads(data[len(_CACHE_MAGIC):]))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        _expect(cache, ITimingCache, "IBuilderConfig.set_timing_cache")
        _expect(ignore_mismatch, type(True), "IBuilderConfig.set_timing_cache")
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing_cache

    def set_tactic_sources(self, tactic_sources: int) -> bool:
        _expect(tactic_sources, int, "IBuilderConfig.set_tactic_sources")
        self._tactic_sources = tactic_sources
        return True

    def get_tactic_sources(self) -> int:
        return self._tactic_sources

    def set_preview_feature(self, feature: PreviewFeature, enable: bool) -> None:
        _expect(feature, PreviewFeature, "IBuilderConfig.set_preview_feature")
        (self._preview.add if enable else self._preview.discard)(feature)

    def get_preview_feature(self, feature: PreviewFeature) -> bool:
        _expect(feature, PreviewFeature, "IBuilderConfig.get_preview_feature")
        return feature in self._preview

    def set_quantization_flag(self, flag: QuantizationFlag) -> None:
        _expect(flag, QuantizationFlag, "IBuilderConfig.set_quantization_flag")
        self._quant_flags.add(flag)

    def clear_quantization_flag(self, flag: QuantizationFlag) -> None:
        _expect(flag, QuantizationFlag, "IBuilderConfig.clear_quantization_flag")
        self._quant_flags.discard(flag)

    def get_quantization_flag(self, flag: QuantizationFlag) -> bool:
        _expect(flag, QuantizationFlag, "IBuilderConfig.get_quantization_flag")
        return flag in self._quant_flags


def _require_device(logger: ILogger, what: str) -> None:
    """Real TensorRT initialises CUDA in Builder() and Runtime(): with no device visible it logs the
    failure and the pybind factory returns nullptr, which Python sees as a TypeError."""
    try:
        import cuda_runtime
    except ImportError:
        return
    runtime = cuda_runtime.active()
    if runtime is not None and not runtime.device_count:
        logger.log(ILogger.Severity.ERROR, "CUDA initialization failure with error: 100")
        raise TypeError(f"pybind11::init(): factory function returned nullptr ({what})")


class Builder:
    def __init__(self, logger: ILogger) -> None:
        _expect(logger, ILogger, "Builder.__init__")
        _call("Builder.__init__")
        _require_device(logger, "Builder")
        self.logger = logger
        self.num_DLA_cores = 0
        self.platform_has_fast_fp16 = True
        self.platform_has_fast_int8 = True
        self.platform_has_tf32 = True
        self.max_threads = 1

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        _expect(flags, int, "Builder.create_network")
        _call("Builder.create_network", flags)
        return _make(INetworkDefinition, flags)

    def create_builder_config(self) -> IBuilderConfig:
        _call("Builder.create_builder_config")
        return _make(IBuilderConfig)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return _make(IOptimizationProfile)

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        _expect(network, INetworkDefinition, "Builder.build_serialized_network")
        _expect(config, IBuilderConfig, "Builder.build_serialized_network")
        _call("Builder.build_serialized_network")
        if network._onnx_bytes is None:
            _error(self.logger, "Network must have at least one output (nothing was parsed into it)")
            return None
        precision = sorted(f.name for f in config._flags if f.name in _PRECISION_FLAGS)
        if network._strongly_typed and precision:
            _error(self.logger, f"BuilderFlag::k{precision[0]} is not allowed for a strongly typed network: "
                                "the network's types decide precision")
            return None
        profile = config._profiles[0] if config._profiles else None
        for tensor in network._inputs:
            dynamic = any(d < 0 for d in tensor.shape)
            if not dynamic and (profile is None or tensor.name not in profile._shapes):
                continue  # a static input needs no profile; one it is given must match it (below)
            if profile is None or tensor.name not in profile._shapes:
                _error(self.logger, f"Network has dynamic or shape inputs, but no optimization profile has been "
                                    f"defined for input {tensor.name}")
                return None
            lo, mid, hi = profile._shapes[tensor.name]
            ranks = {len(lo), len(mid), len(hi), len(tensor.shape)}
            if len(ranks) != 1 or not all(a <= b <= c for a, b, c in zip(lo, mid, hi)):
                _error(self.logger, f"optimization profile for {tensor.name} is invalid: {lo} {mid} {hi} "
                                    f"for a tensor of shape {tuple(tensor.shape)}")
                return None
            fixed = [i for i, (a, b, c, d) in enumerate(zip(lo, mid, hi, tensor.shape)) if d >= 0 and not a == b == c == d]
            if fixed:
                i = fixed[0]
                _error(self.logger, f"IOptimizationProfile: {tensor.name}: dimension number {i} in profile 0 does not "
                                    f"match network definition (got min={lo[i]}, opt={mid[i]}, max={hi[i]}, expected "
                                    f"min=opt=max={tensor.shape[i]})")
                return None
        if config._timing_cache is not None:
            for layer in network._layers:
                if layer.type == LayerType.CONVOLUTION:
                    config._timing_cache._entries.setdefault(f"{layer.name}:{'/'.join(precision) or 'typed'}", 0.01)
        header = {
            "version": __version__,
            "compute_capability": list(_device_compute_capability()),
            # A weakly typed network with the FP16 flag runs in FP16 (TensorRT picks fp16 kernels
            # wherever it can; the double runs all of it in fp16, so precision shows in the numbers).
            "fp16": not network._strongly_typed and _bool(set(precision) & {"FP16", "BF16"}),
            "strongly_typed": network._strongly_typed,
            "flags": sorted(f.name for f in config._flags),
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name} for t in network._inputs],
            "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name} for t in network._outputs],
            "profile": {n: [list(s) for s in v] for n, v in (profile._shapes.items() if profile else [])},
        }
        blob = json.dumps(header).encode()
        return IHostMemory(_MAGIC + len(blob).to_bytes(8, "little") + blob + network._onnx_bytes)


# ------------------------------------------------------------------------------ runtime


def _device_compute_capability() -> tuple[int, int]:
    """The compute capability of the GPU the process runs on: the CUDA double's device."""
    try:
        import cuda_runtime
    except ImportError:
        return (8, 6)
    runtime = cuda_runtime.active()
    return tuple(runtime.compute_capability) if runtime is not None else (8, 6)


def _in_fp16(onnx_bytes: bytes) -> bytes:
    """The FP32 graph computing in fp16: float constants stored as fp16, the float I/O cast at the
    edges (TensorRT keeps an engine's I/O types when builder flags lower its precision)."""
    import onnx
    from onnx import helper, numpy_helper

    def half(t):
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    for t in graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(half(t))
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT:
                a.t.CopyFrom(half(a.t))
    renamed = {v.name: v.name + ".fp16" for v in [*graph.input, *graph.output]
               if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    for node in graph.node:
        node.input[:] = [renamed.get(x, x) for x in node.input]
        node.output[:] = [renamed.get(x, x) for x in node.output]
    cast_in = [helper.make_node("Cast", [v.name], [renamed[v.name]], to=onnx.TensorProto.FLOAT16)
               for v in graph.input if v.name in renamed]
    cast_out = [helper.make_node("Cast", [renamed[v.name]], [v.name], to=onnx.TensorProto.FLOAT)
                for v in graph.output if v.name in renamed]
    nodes = cast_in + list(graph.node) + cast_out
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return model.SerializeToString()


class IOutputAllocator:
    """Base for application output allocators (reallocate_output[_async], notify_shape)."""

    def __init__(self) -> None:
        pass


class IDebugListener:
    def __init__(self) -> None:
        pass


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        _expect(logger, ILogger, "Runtime.__init__")
        _require_device(logger, "Runtime")
        self.logger = logger
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, serialized_engine: Any) -> "ICudaEngine | None":
        _expect(serialized_engine, (bytes, bytearray, memoryview), "Runtime.deserialize_cuda_engine")
        _call("Runtime.deserialize_cuda_engine")
        data = bytes(serialized_engine)
        if not data.startswith(_MAGIC):
            _error(self.logger, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (Magic tag does "
                                "not match)")
            return None
        n = int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 8], "little")
        start = len(_MAGIC) + 8
        header = json.loads(data[start:start + n])
        # Plans are tied to the exact TensorRT version and the GPU's compute capability (unless
        # built version- or hardware-compatible, which repdeploy does not ask for).
        if header["version"] != __version__:
            _error(self.logger, "IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error (The engine plan file "
                                f"is not compatible with this version of TensorRT, expecting library version "
                                f"{__version__} got {header['version']}, please rebuild.)")
            return None
        built, here = tuple(header["compute_capability"]), _device_compute_capability()
        if built != here:
            _error(self.logger, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (The engine plan file is "
                                f"generated on an incompatible device, expecting compute {here[0]}.{here[1]} got "
                                f"compute {built[0]}.{built[1]}, please rebuild.)")
            return None
        return _make(ICudaEngine, header, data[start + n:], self.logger)


class ICudaEngine:
    def _init(self, header: dict, onnx_bytes: bytes, logger: ILogger) -> None:
        import onnxruntime as ort

        self._header = header
        self._logger = logger
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if header.get("fp16"):
            onnx_bytes = _in_fp16(onnx_bytes)
        self._session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self._io = [(t, TensorIOMode.INPUT) for t in header["inputs"]] + \
                   [(t, TensorIOMode.OUTPUT) for t in header["outputs"]]
        self.num_optimization_profiles = 1 if header["profile"] else 0
        self.name = "engine"

    def _tensor(self, name: str) -> dict:
        _expect(name, str, "ICudaEngine tensor query")
        for t, _ in self._io:
            if t["name"] == name:
                return t
        raise KeyError(f"no tensor named {name}")

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str:
        _expect(index, int, "ICudaEngine.get_tensor_name")
        return self._io[index][0]["name"]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        _expect(name, str, "ICudaEngine.get_tensor_mode")
        return next(mode for t, mode in self._io if t["name"] == name)

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.__members__[self._tensor(name)["dtype"]]

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self._tensor(name)["shape"])

    def get_tensor_format(self, name: str, profile_index: int | None = None) -> TensorFormat:
        self._tensor(name)
        return TensorFormat.LINEAR

    def get_tensor_location(self, name: str) -> TensorLocation:
        self._tensor(name)
        return TensorLocation.DEVICE

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        _expect(profile_index, int, "ICudaEngine.get_tensor_profile_shape")
        shape = self.get_tensor_shape(name)
        lo, mid, hi = self._header["profile"].get(name, [shape, shape, shape])
        return [Dims(lo), Dims(mid), Dims(hi)]

    def is_shape_inference_io(self, name: str) -> bool:
        self._tensor(name)
        return False

    def create_execution_context(self, strategy: ExecutionContextAllocationStrategy =
                                 ExecutionContextAllocationStrategy.STATIC) -> "IExecutionContext":
        _expect(strategy, ExecutionContextAllocationStrategy, "ICudaEngine.create_execution_context")
        _call("ICudaEngine.create_execution_context")
        return _make(IExecutionContext, self)

    def serialize(self) -> IHostMemory:
        raise NotImplementedError("the double keeps engines as files; read the file instead")


class IExecutionContext:
    def _init(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.name = "context"
        self.active_optimization_profile = 0
        self._shapes: dict[str, Dims] = {}
        self._addresses: dict[str, int] = {}
        self._allocators: dict[str, IOutputAllocator] = {}

    def _check_name(self, name: str, where: str, mode: TensorIOMode | None = None) -> None:
        _expect(name, str, where)
        self.engine._tensor(name)
        if mode is not None and self.engine.get_tensor_mode(name) != mode:
            raise RuntimeError(f"{where}: {name} is not an {mode.name.lower()} tensor")

    def set_input_shape(self, name: str, shape: Any) -> bool:
        self._check_name(name, "IExecutionContext.set_input_shape", TensorIOMode.INPUT)
        dims = Dims(_dims_arg(shape, "IExecutionContext.set_input_shape"))
        _call("IExecutionContext.set_input_shape", (name, dims))
        lo, _, hi = self.engine.get_tensor_profile_shape(name, self.active_optimization_profile)
        declared = self.engine.get_tensor_shape(name)
        if len(dims) != len(declared) or not all(a <= d <= b for a, d, b in zip(lo, dims, hi)):
            _error(self.engine._logger, f"IExecutionContext::setInputShape: {name} shape {tuple(dims)} is outside "
                                       f"the optimization profile [{tuple(lo)}, {tuple(hi)}]")
            return False
        self._shapes[name] = dims
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        self._check_name(name, "IExecutionContext.get_tensor_shape")
        if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self._shapes.get(name, self.engine.get_tensor_shape(name))
        declared = self.engine.get_tensor_shape(name)
        batch = next(iter(self._shapes.values()), None)
        if batch is None:
            return declared
        return Dims([batch[0] if d < 0 else d for d in declared])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._check_name(name, "IExecutionContext.set_tensor_address")
        _expect(memory, int, "IExecutionContext.set_tensor_address")
        _call("IExecutionContext.set_tensor_address", name)
        if memory == 0:
            _error(self.engine._logger, f"IExecutionContext::setTensorAddress: null address for {name}")
            return False
        self._addresses[name] = memory
        return True

    def get_tensor_address(self, name: str) -> int:
        self._check_name(name, "IExecutionContext.get_tensor_address")
        return self._addresses.get(name, 0)

    def set_output_allocator(self, name: str, output_allocator: IOutputAllocator) -> bool:
        self._check_name(name, "IExecutionContext.set_output_allocator", TensorIOMode.OUTPUT)
        _expect(output_allocator, IOutputAllocator, "IExecutionContext.set_output_allocator")
        _call("IExecutionContext.set_output_allocator", name)
        self._allocators[name] = output_allocator
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        _expect(stream_handle, int, "IExecutionContext.execute_async_v3")
        _call("IExecutionContext.execute_async_v3", stream_handle)
        engine, logger = self.engine, self.engine._logger
        feeds = {}
        for t in engine._header["inputs"]:
            name = t["name"]
            shape = self._shapes.get(name, engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                _error(logger, f"IExecutionContext::enqueueV3: input shape of {name} is not specified; "
                               "call set_input_shape first")
                return False
            if name not in self._addresses:
                _error(logger, f"IExecutionContext::enqueueV3: address of input {name} is not set; "
                               "call set_tensor_address first")
                return False
            dtype = nptype(DataType.__members__[t["dtype"]])
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            raw = ctypes.string_at(self._addresses[name], nbytes)
            feeds[name] = np.frombuffer(raw, dtype=dtype).reshape(tuple(shape)).copy()
        for t in engine._header["outputs"]:
            if t["name"] not in self._addresses and t["name"] not in self._allocators:
                _error(logger, f"IExecutionContext::enqueueV3: output {t['name']} has neither an address nor an "
                               "output allocator")
                return False
        results = engine._session.run([t["name"] for t in engine._header["outputs"]], feeds)
        for t, value in zip(engine._header["outputs"], results):
            value = np.ascontiguousarray(value.astype(nptype(DataType.__members__[t["dtype"]]), copy=False))
            name = t["name"]
            if name in self._allocators:
                allocator = self._allocators[name]
                reallocate = getattr(allocator, "reallocate_output_async", None)
                if reallocate is not None:
                    ptr = reallocate(name, self._addresses.get(name, 0), value.nbytes, 256, stream_handle)
                else:
                    ptr = allocator.reallocate_output(name, self._addresses.get(name, 0), value.nbytes, 256)
                if not ptr:
                    _error(logger, f"output allocator returned no memory for {name}")
                    return False
                self._addresses[name] = int(ptr)
                ctypes.memmove(int(ptr), value.ctypes.data, value.nbytes)
                allocator.notify_shape(name, Dims(value.shape))
            else:
                ctypes.memmove(self._addresses[name], value.ctypes.data, value.nbytes)
        return True
