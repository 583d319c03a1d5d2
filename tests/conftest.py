import pytest
import torch

from repdeploy.models import build, get_spec
from repdeploy.models.layers import randomize_batchnorm


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def trained_like(name: str, form: str = "train", seed: int = 0, num_classes: int | None = None):
    """A model with random weights and randomized BN statistics, as a trained one would have."""
    torch.manual_seed(seed)
    return randomize_batchnorm(build(get_spec(name, num_classes), form), seed).eval()


FAKE_TENSORRT_DIR = __import__("pathlib").Path(__file__).parent / "fake_tensorrt"
_FAKE_MODULES: dict = {}


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """The TensorRT test double as `tensorrt`, the CUDA runtime double behind Polygraphy, a "GPU".

    Yields the double's module (CALLS, VIOLATIONS, reset()). Everything is undone afterwards, so
    other tests still see a machine without TensorRT. One module object per process: Polygraphy
    keeps a logger subclassing the first `tensorrt.ILogger` it saw.
    """
    import sys

    import polygraphy.cuda.cuda as poly_cuda

    import repdeploy.export.tensorrt as trt_export

    monkeypatch.syspath_prepend(str(FAKE_TENSORRT_DIR))
    if "tensorrt" not in _FAKE_MODULES:
        import importlib

        sys.modules.pop("tensorrt", None)
        _FAKE_MODULES["tensorrt"] = importlib.import_module("tensorrt")
        _FAKE_MODULES["cuda_runtime"] = importlib.import_module("cuda_runtime")
    fake = _FAKE_MODULES["tensorrt"]
    assert getattr(fake, "IS_FAKE", False), "a real tensorrt module shadows the test double"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    cudart = _FAKE_MODULES["cuda_runtime"].FakeCudaRuntime()
    monkeypatch.setattr(poly_cuda, "G_CUDA", cudart)
    monkeypatch.setattr(trt_export, "gpu_visible", lambda: True)  # the CUDA double plays the GPU
    fake.reset()
    fake.cudart = cudart
    yield fake
    fake.__dict__.pop("cudart", None)
