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
from .failures import install_early_interrupt as _install_early_interrupt

_install_early_interrupt()  # the command line imports torch for seconds: Ctrl-C then is one line, exit 130

# Imported eagerly on purpose: several API functions share their module's name (`fuse`,
# `evaluate`, `bench`), and a lazy lookup would hand back the submodule once it was imported.
from .bench import bench, bench_interleaved, bench_sessions  # noqa: E402
from .checkpoints import load, load_fused, save_fused  # noqa: E402
from .compare import compare  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .export.onnx import export_onnx  # noqa: E402
from .fuse import fuse  # noqa: E402
from .pipeline import run_pipeline  # noqa: E402
from .preprocess import Preprocessing, preprocess, preprocessing_of  # noqa: E402
from .quant.ptq import QuantizeResult, quantize  # noqa: E402
from .quant.qat import qat  # noqa: E402
from .runtime import open_runner  # noqa: E402

__all__ = [
    "__version__", "load", "load_fused", "save_fused", "fuse", "export_onnx", "quantize", "qat",
    "QuantizeResult", "evaluate", "bench", "bench_interleaved", "bench_sessions", "open_runner", "run_pipeline",
    "compare", "preprocess", "preprocessing_of", "Preprocessing",
]
