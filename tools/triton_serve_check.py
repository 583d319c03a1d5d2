"""Serve a repository `repdeploy package` wrote with a real tritonserver, and check its answers.

`make serve-check` runs it in two interpreters:

    prepare OUT   (the project venv) builds the models: the zoo's repvgg_mini as FP32, INT8 (ort
                  layout) and INT8 (tensorrt layout), and a real-size RepVGG-A0 (224 px, 1000
                  classes, BN statistics from scikit-image's photographs) as INT8; then packages
                  them with `repdeploy package` into OUT/repository.
    serve OUT     (its own venv: nvidia-pytriton pins numpy<2) parses every config with Triton's
                  schema, turns each model into a python-backend model running ONNX Runtime on
                  the same model.onnx (the onnxruntime and tensorrt backends are not in the
                  nvidia-pytriton wheel), starts tritonserver on 127.0.0.1, sends a bounded
                  request loop (MAX_REQUESTS in all, concurrent, so the dynamic batcher merges
                  them), and compares every answer with a local ONNX Runtime run; the
                  classification extension's top-3 must name the same classes as labels.txt.

It prints one JSON line per model and a final PASSED/FAILED line; exit 1 on any mismatch.
`serve OUT --plant-faults` proves the check can fail: it serves the FP32 graph under the INT8
model's name and labels.txt reversed, and must end FAILED.
The serve phase imports only numpy, onnxruntime and tritonclient (no repdeploy, no torch).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_REQUESTS = 200  # in all, over every model: the loop always ends by itself
CONCURRENCY = 8
ATOL = 1e-4  # the same ORT build on both sides; only batch composition differs

# The model.py every check model gets. Only numpy and onnxruntime are imported beside the
# backend's own utilities; the python backend stub starts an isolated interpreter that ignores
# PYTHONPATH, so the venv's site-packages are added to sys.path from the environment first.
MODEL_PY = '''\
import json
import os
import sys

sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        # The dynamic batcher hands several requests at once: run them as one batch, split back.
        feeds = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs] for r in requests]
        sizes = [f[0].shape[0] for f in feeds]
        batch = {n: np.concatenate([f[k] for f in feeds]) for k, n in enumerate(self.inputs)}
        results = self.session.run(self.outputs, batch)
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(r[start:start + size]))
                       for n, r in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(tensors))
            start += size
        return responses
'''


# ------------------------------------------------------------------------------ prepare (project venv)


def prepare(out: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from realsize import realistic_model, write_photo_folder

    from repdeploy.zoo import zoo_entry

    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "repdeploy"]
    mini = zoo_entry("repvgg").file
    for target in ("ort", "tensorrt"):
        subprocess.run([*cli, "quantize", str(mini), "--int8", "--calib-samples", "64", "--eval-limit", "64",
                        "--target", target, "-o", str(out / f"mini_{target}"), "-q"], check=True)
    a0 = out / "a0" / "repvgg_a0.pth"
    if not a0.is_file():
        a0.parent.mkdir(parents=True, exist_ok=True)
        torch.save(realistic_model("repvgg_a0").state_dict(), a0)
    photos = write_photo_folder(out / "a0" / "photos", 32)
    # --allow-mismatch: a seeded, untrained A0 has logit margins so thin that INT8 flips some top-1
    # classes; what is checked here is that Triton serves this file as ONNX Runtime runs it.
    subprocess.run([*cli, "quantize", str(a0), "--int8", "--calib-data", str(photos), "--calib-samples", "32",
                    "--allow-mismatch", "-o", str(out / "a0" / "quantized"), "-q"], check=True)
    uint8_nhwc_input(out / "mini_ort" / "model_fp32.onnx", out / "mini_uint8" / "model_uint8_nhwc.onnx")
    (out / "digits.txt").write_text("".join(f"digit {d}\n" for d in range(10)))
    (out / "imagenet_ids.txt").write_text("".join(f"class_{c:04d}\n" for c in range(1000)))
    repo = out / "repository"
    subprocess.run([*cli, "package", f"mini_fp32={out / 'mini_ort' / 'model_fp32.onnx'}",
                    f"mini_int8_ort={out / 'mini_ort' / 'model_int8_ort.onnx'}",
                    f"mini_int8_tensorrt={out / 'mini_tensorrt' / 'model_int8_tensorrt.onnx'}",
                    f"mini_uint8_nhwc={out / 'mini_uint8' / 'model_uint8_nhwc.onnx'}",
                    "--labels", str(out / "digits.txt"), "-o", str(repo), "-q"], check=True)
    subprocess.run([*cli, "package", f"a0_int8_ort={out / 'a0' / 'quantized' / 'model_int8_ort.onnx'}",
                    "--labels", str(out / "imagenet_ids.txt"), "-o", str(repo), "-q"], check=True)
    print(f"prepared {repo}")


def uint8_nhwc_input(src: Path, dst: Path) -> None:
    """The FP32 graph behind a uint8 NHWC input (Cast, Transpose, Sub, Mul in front), made here by
    hand so a TYPE_UINT8 interface is served end to end; repdeploy's own in-graph preprocessing
    option is another change and not used here."""
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    record = json.loads({p.key: p.value for p in model.metadata_props}["repdeploy.preprocessing"])
    old = graph.input[0]
    size = record["input_size"]
    mean = np.array(record["mean"], np.float32).reshape(1, -1, 1, 1) * 255.0
    scale = 1.0 / (np.array(record["std"], np.float32).reshape(1, -1, 1, 1) * 255.0)
    graph.initializer.extend([numpy_helper.from_array(mean, "pixel_mean"), numpy_helper.from_array(scale, "pixel_scale")])
    front = [helper.make_node("Cast", ["pixels"], ["pixels_f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["pixels_f"], ["pixels_nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Sub", ["pixels_nchw", "pixel_mean"], ["pixels_centred"]),
             helper.make_node("Mul", ["pixels_centred", "pixel_scale"], [old.name])]
    for i, node in enumerate(front):
        graph.node.insert(i, node)
    pixels = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", size, size, 3])
    graph.input.remove(old)
    graph.input.insert(0, pixels)
    onnx.checker.check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))


# ------------------------------------------------------------------------------ serve (serve venv)


def _schema():
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def python_backend_repository(repo: Path, check_repo: Path, plant_faults: bool = False) -> dict:
    """The emitted repository with each model's backend switched to python (model.py above)."""
    from google.protobuf import text_format

    schema = _schema()
    configs = {}
    shutil.rmtree(check_repo, ignore_errors=True)
    for model_dir in sorted(p for p in repo.iterdir() if (p / "config.pbtxt").is_file()):
        config = text_format.Parse((model_dir / "config.pbtxt").read_text(), schema.ModelConfig())
        configs[config.name] = config
        served = schema.ModelConfig()
        served.CopyFrom(config)
        served.backend, served.platform = "python", ""
        served.ClearField("optimization")  # ORT's TensorRT accelerator: no GPU and no ORT backend here
        served.instance_group[0].kind = schema.ModelInstanceGroup.KIND_CPU
        target = check_repo / model_dir.name
        shutil.copytree(model_dir, target)
        (target / "config.pbtxt").write_text(text_format.MessageToString(served))
        (target / "1" / "model.py").write_text(MODEL_PY)
    if plant_faults:  # another model's graph behind one name, and a labels file in the wrong order
        shutil.copy(repo / "mini_fp32" / "1" / "model.onnx", check_repo / "mini_int8_ort" / "1" / "model.onnx")
        labels = check_repo / "mini_fp32" / "labels.txt"
        labels.write_text("\n".join(reversed(labels.read_text().splitlines())) + "\n")
    return configs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(check_repo: Path, workdir: Path) -> tuple[subprocess.Popen, int, int]:
    import pytriton

    triton = Path(pytriton.__file__).parent / "tritonserver"
    backends = workdir / "backends"
    shutil.rmtree(backends, ignore_errors=True)
    shutil.copytree(triton / "backends", backends)
    stub = triton / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    if not stub.is_file():
        raise SystemExit(f"nvidia-pytriton ships no python backend stub for Python {sys.version_info[:2]}; "
                         "make the serve venv with Python 3.8-3.13")
    shutil.copy(stub, backends / "python" / "triton_python_backend_stub")
    import sysconfig

    site = [p for p in sys.path if p.endswith("site-packages")]
    libs = [sysconfig.get_config_var("LIBDIR"), str(Path(pytriton.__file__).parents[1] / "nvidia_pytriton.libs")]
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join([*libs, os.environ.get("LD_LIBRARY_PATH", "")]),
               PYTHONPATH=os.pathsep.join(site))
    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    with open(workdir / "tritonserver.log", "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [str(triton / "bin" / "tritonserver"), f"--model-repository={check_repo}",
             f"--backend-directory={backends}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
             "--metrics-address=127.0.0.1", f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
             "--exit-timeout-secs=5"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, http, grpc


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _numpy_type(triton_type: str):
    import numpy as np

    return {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_UINT8": np.uint8, "TYPE_INT8": np.int8}[triton_type]


def check_model(client, grpcclient, config, model_dir: Path, requests: int, seed: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    schema = _schema()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as model.py runs it, so the throughputs compare
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    inp, out = config.input[0], config.output[0]
    dtype = _numpy_type(schema.DataType.Name(inp.data_type))
    labels = (model_dir / out.label_filename).read_text().splitlines() if out.label_filename else None
    rng = np.random.default_rng(seed)
    mbs = config.max_batch_size
    batches = [int(b) for b in rng.integers(1, max(mbs, 1) + 1, size=requests)] if mbs else [0] * requests

    def make(batch: int):
        shape = [batch, *inp.dims] if mbs else list(inp.dims)
        if dtype == np.uint8:
            return rng.integers(0, 256, size=shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)

    inputs = [make(b) for b in batches]  # drawn up front: a Generator is not thread-safe

    def one(x):
        feed = grpcclient.InferInput(inp.name, list(x.shape), schema.DataType.Name(inp.data_type)[5:])
        feed.set_data_from_numpy(x)
        start = time.perf_counter()
        result = client.infer(config.name, [feed], outputs=[grpcclient.InferRequestedOutput(out.name)])
        ms = (time.perf_counter() - start) * 1e3
        top = None
        if labels:  # Triton's classification extension reads label_filename: "score:index:label"
            top = client.infer(config.name, [feed], outputs=[grpcclient.InferRequestedOutput(out.name, class_count=3)])
            top = top.as_numpy(out.name)
        return x, result.as_numpy(out.name), top, ms

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        start = time.perf_counter()
        answers = list(pool.map(one, inputs))
        wall = time.perf_counter() - start
    worst, top_ok, local_s = 0.0, True, 0.0
    for x, served, top, _ in answers:
        start = time.perf_counter()
        local = session.run([out.name], {inp.name: x})[0]
        local_s += time.perf_counter() - start
        worst = max(worst, float(np.max(np.abs(served - local))))
        if top is not None:
            for row, logits in zip(np.atleast_2d(top), np.atleast_2d(local)):
                names = [entry.decode().split(":", 2)[2] for entry in row]
                expect = [labels[i] for i in np.argsort(-logits, kind="stable")[:3]]
                top_ok &= names[0] == expect[0] and set(names) == set(expect)
    stats = client.get_inference_statistics(config.name, as_json=True)["model_stats"][0]
    latencies = sorted(ms for *_, ms in answers)
    images = sum(max(b, 1) for b in batches)
    return {"model": config.name, "requests": len(answers), "images": images,
            "max_abs_diff": worst, "classes_match_labels": top_ok if labels else None,
            "server_inferences": int(stats["inference_count"]), "server_executions": int(stats["execution_count"]),
            "client_p50_ms": round(latencies[len(latencies) // 2], 2),
            "client_p90_ms": round(latencies[int(len(latencies) * 0.9)], 2),
            "images_per_s": round(2 * images / wall, 1),  # each request was sent twice (logits, top-3)
            "local_ort_images_per_s": round(images / local_s, 1),
            "passed": worst <= ATOL and (top_ok or not labels)}


def serve(out: Path, plant_faults: bool = False) -> int:
    import tritonclient.grpc as grpcclient

    repo, check_repo = out / "repository", out / "python_backend_repository"
    configs = python_backend_repository(repo, check_repo, plant_faults)
    print(json.dumps({"parsed_with_triton_schema": sorted(configs)}))
    proc, _, grpc_port = start_server(check_repo, out)
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        started = time.perf_counter()
        while time.perf_counter() - started < 120:
            if proc.poll() is not None:
                raise SystemExit(f"tritonserver exited ({proc.returncode}); see {out / 'tritonserver.log'}")
            try:
                if client.is_server_ready():
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
        else:
            raise SystemExit(f"tritonserver not ready after 120 s; see {out / 'tritonserver.log'}")
        ready_s = time.perf_counter() - started
        print(json.dumps({"server": client.get_server_metadata(as_json=True)["version"], "ready_s": round(ready_s, 1)}))
        per_model = MAX_REQUESTS // 2 // len(configs)  # two calls per request: the logits, then top-3 classes
        results = [check_model(client, grpcclient, configs[name], repo / name, per_model, seed=i)
                   for i, name in enumerate(sorted(configs))]
    finally:
        stop_server(proc)
    for r in results:
        print(json.dumps(r))
    passed = all(r["passed"] for r in results)
    print(f"&&&& {'PASSED' if passed else 'FAILED'} triton serve check: {len(results)} models, "
          f"{sum(r['requests'] * 2 for r in results)} requests")
    return 0 if passed else 1


if __name__ == "__main__":
    args = sys.argv[1:]
    plant = "--plant-faults" in args
    args = [a for a in args if a != "--plant-faults"]
    if len(args) != 2 or args[0] not in ("prepare", "serve"):
        raise SystemExit("usage: triton_serve_check.py prepare OUT | serve OUT [--plant-faults]")
    out_dir = Path(args[1]).resolve()
    if args[0] == "prepare":
        prepare(out_dir)
    else:
        sys.exit(serve(out_dir, plant))
