"""The torch-free serving runtime: classify images with an ONNX file repdeploy wrote.

It imports numpy, onnxruntime and Pillow, and nothing of torch, onnx, click, rich or matplotlib,
so a service image needs only those three (docs/serving.md has the install and a FastAPI example):

>>> from repdeploy.serving import Model                                       # doctest: +SKIP
>>> model = Model("out/model_int8_ort.onnx", threads=2)                       # doctest: +SKIP
>>> [(p.name, round(p.score, 3)) for p in model.predict("cat.jpg", top_k=2)]  # doctest: +SKIP
[('tabby', 0.62), ('tiger_cat', 0.21)]
"""

from __future__ import annotations

from .model import Model, Prediction

__all__ = ["Model", "Prediction"]
