"""The importable API: the names the README and docs promise are the functions, not modules."""

import torch

import repdeploy
from conftest import trained_like


def test_api_names_are_callables_even_after_submodules_are_imported(tmp_path):
    import repdeploy.fuse as _  # noqa: F401  (importing the submodule must not shadow the function)
    import repdeploy.bench as _b  # noqa: F401
    import repdeploy.evaluate as _e  # noqa: F401
    import repdeploy.compare as _c  # noqa: F401

    for name in ("load", "fuse", "export_onnx", "quantize", "qat", "evaluate", "bench", "run_pipeline", "compare"):
        assert callable(getattr(repdeploy, name)), name
    torch.save(trained_like("RepVGG-mini").state_dict(), tmp_path / "m.pth")
    loaded = repdeploy.load(tmp_path / "m.pth")
    result = repdeploy.fuse(loaded.model)
    assert result.equivalence.passed
    path = repdeploy.export_onnx(result.plain, tmp_path / "m.onnx", input_size=32)
    assert path.exists()
