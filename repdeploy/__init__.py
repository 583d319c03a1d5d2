"""repdeploy: take RepVGG-family checkpoints to verified INT8 deployments.

The Python API mirrors the command line:

>>> import repdeploy
>>> loaded = repdeploy.load("ckpt.pth")                   # doctest: +SKIP
>>> result = repdeploy.fuse(loaded.model)                  # doctest: +SKIP
>>> repdeploy.export_onnx(result.plain, "model.onnx", input_size=224)   # doctest: +SKIP
>>> repdeploy.quantize("ckpt.pth", calib_data="calib/", output_dir="out/")  # doctest: +SKIP
>>> repdeploy.compare("out/model_fp32.onnx", "out/model_int8_ort.onnx", atol=1, rtol=1)  # doctest: +SKIP
>>> repdeploy.quantize(result.plain, calib_data=my_dataloader, output_dir="out/")  # doctest: +SKIP

docs/api.md has a worked example with data in memory. Library functions log through the
`repdeploy` logger and never print; the command line installs the handler.
"""

from .version import __version__

# Imported eagerly on purpose: several API functions share their module's name (`fuse`,
# `evaluate`, `bench`), and a lazy lookup would hand back the submodule once it was imported.
from .bench import BenchResult, bench, bench_interleaved, bench_sessions  # noqa: E402
from .checkpoints import FusedModel, Loaded, load, load_fused, save_fused  # noqa: E402
from .compare import Comparison, compare  # noqa: E402
from .errors import (AccuracyGateError, BackendMissingError, CalibrationError, CheckpointError,  # noqa: E402
                     DataError, ExportError, FusionError, InputError, NonFiniteWeightsError, OutputError,
                     RepDeployError, ToleranceError, UnsafeCheckpointError, VerificationError)
from .evaluate import Accuracy, evaluate  # noqa: E402
from .export.onnx import export_onnx  # noqa: E402
from .fuse import Equivalence, FuseResult, fuse  # noqa: E402
from .pipeline import PipelineResult, run_pipeline  # noqa: E402
from .preprocess import Preprocessing, preprocess, preprocessing_of  # noqa: E402
from .quant.ptq import QuantizeResult, quantize  # noqa: E402
from .quant.qat import QATResult, qat  # noqa: E402
from .runtime import open_runner  # noqa: E402

__all__ = [
    "__version__", "load", "load_fused", "save_fused", "fuse", "export_onnx", "quantize", "qat",
    "QuantizeResult", "evaluate", "bench", "bench_interleaved", "bench_sessions", "open_runner", "run_pipeline",
    "compare", "preprocess", "preprocessing_of", "Preprocessing",
    # result types (dataclasses) and errors, typed (py.typed)
    "FusedModel", "Loaded", "FuseResult", "Equivalence", "QATResult", "Accuracy", "BenchResult", "Comparison",
    "PipelineResult",
    "RepDeployError", "InputError", "CheckpointError", "UnsafeCheckpointError", "NonFiniteWeightsError", "DataError",
    "OutputError", "CalibrationError", "FusionError", "ExportError", "VerificationError", "AccuracyGateError",
    "ToleranceError", "BackendMissingError",
]
