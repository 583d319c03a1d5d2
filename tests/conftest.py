import os

import pytest
import torch

from repdeploy.models import build, get_spec
from repdeploy.models.layers import randomize_batchnorm


def _test_threads() -> int:
    """Threads each test process may use: the cores divided among pytest-xdist workers.

    Without this every worker (and every subprocess it starts) sizes torch's and ONNX Runtime's
    pools to all cores, so `pytest -n 8` on 16 cores ran 8 x 16 threads and timed out.
    REPDEPLOY_TEST_THREADS overrides the share.
    """
    if os.environ.get("REPDEPLOY_TEST_THREADS"):
        return max(1, int(os.environ["REPDEPLOY_TEST_THREADS"]))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


TEST_THREADS = _test_threads()
# Subprocesses (CLI and torchrun tests) inherit these: torch reads OMP_NUM_THREADS at start-up, and
# repdeploy's ONNX Runtime sessions follow torch's thread count unless given one.
os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)
os.environ["MKL_NUM_THREADS"] = str(TEST_THREADS)
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session", autouse=True)
def _scratch_key(tmp_path_factory):
    """repdeploy's per-user scratch key goes in the session's own directory, not the user's home
    (subprocess CLI runs inherit it through the environment)."""
    os.environ["REPDEPLOY_STATE_DIR"] = str(tmp_path_factory.mktemp("repdeploy-state"))
    yield


@pytest.fixture(autouse=True)
def _threads():
    """Re-apply the share before every test: a test that changes the pool must not leak it."""
    torch.set_num_threads(TEST_THREADS)


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
    """The TensorRT test double as `tensorrt`, the CUDA runtime double behind Polygraphy (one
    visible device of compute capability 8.6, which repdeploy finds through Polygraphy's wrapper).

    Yields the double's module (CALLS, VIOLATIONS, reset()). Everything is undone afterwards, so
    other tests still see a machine without TensorRT. One module object per process: Polygraphy
    keeps a logger subclassing the first `tensorrt.ILogger` it saw.
    """
    import sys

    import polygraphy.cuda.cuda as poly_cuda


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
    fake.reset()
    fake.cudart = cudart
    yield fake
    fake.__dict__.pop("cudart", None)


def free_port() -> int:
    """A TCP port nothing listens on now, for torchrun's rendezvous: a fixed port clashes when two
    suites (two checkouts, or xdist workers of two runs) start torchrun at the same time."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
