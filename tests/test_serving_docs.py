"""docs/serving.md's FastAPI service runs as written, against a real model, through fastapi's TestClient."""

import importlib.util
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"


def test_fastapi_example_serves_what_the_runtime_predicts(tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    import repdeploy
    from repdeploy import load_fused
    from repdeploy.data import builtin_path, open_dataset
    from repdeploy.serving import Model
    from repdeploy.zoo import builtin_zoo

    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S) if "FastAPI(" in b]
    assert len(blocks) == 1, "docs/serving.md lost its FastAPI example"
    assert len(blocks[0].strip().splitlines()) <= 30
    plain, _, _ = load_fused(builtin_zoo()[0].file)
    record = open_dataset("builtin", split="val", image_size=32).preprocessing
    onnx_path = repdeploy.export_onnx(plain, tmp_path / "model.onnx", input_size=32, preprocessing=record,
                                      class_names=[f"digit {i}" for i in range(10)])
    (tmp_path / "service.py").write_text(blocks[0])
    monkeypatch.setenv("MODEL", str(onnx_path))
    spec = importlib.util.spec_from_file_location("service", tmp_path / "service.py")
    service = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(service)

    direct = Model(onnx_path, threads=1)
    client = TestClient(service.app)
    assert client.get("/health").json()["classes"] == 10
    for pixels in np.load(builtin_path())["val_images"][:5]:
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        answer = client.post("/predict?top_k=3", content=png.getvalue())
        assert answer.status_code == 200
        assert answer.json() == [p.to_dict() for p in direct.predict(png.getvalue(), top_k=3)]
        assert answer.json()[0]["name"].startswith("digit ")
    bad = client.post("/predict", content=b"not an image")
    assert bad.status_code == 400 and "not a readable image" in bad.json()["detail"]
