"""Triton Inference Server model repositories from repdeploy's ONNX files and TensorRT plans.

`package_models` writes them (repository.py); every config field comes from the model
(signature.py reads the graph, stamp.py a plan's build facts, config.py decides and renders);
check.py reads a config back with Triton's own schema and holds it against the graph.
See docs/triton.md.
"""

from .repository import ModelSource, PackagedModel, Repository, package_models

__all__ = ["ModelSource", "PackagedModel", "Repository", "package_models"]
