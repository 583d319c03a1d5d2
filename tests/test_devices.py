"""Device selection, the DDP backend, --amp, and the CUDA paths (run where torch sees a GPU)."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import free_port, trained_like
from repdeploy.cli import main
from repdeploy.devices import amp_dtype, distributed_placement, resolve_device
from repdeploy import BackendMissingError, InputError, fuse
from repdeploy.quant.calib import calibrate
from repdeploy.quant.quantizer import QuantPlainNet

CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA GPU is visible to torch on this machine"


def test_cpu_and_auto_resolve_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device(None).type == ("cuda" if CUDA else "cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cpu:0", "cuda:-1", "mps"])
def test_malformed_device_is_bad_input(bad):
    with pytest.raises(InputError, match="use auto, cpu, cuda or cuda:N") as info:
        resolve_device(bad)
    assert info.value.exit_code == 2


@pytest.mark.skipif(CUDA, reason="a CUDA GPU is present: the missing-GPU path cannot be shown")
def test_cuda_without_a_gpu_is_backend_missing():
    for spec in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(BackendMissingError, match="no CUDA GPU is visible") as info:
            resolve_device(spec)
        assert info.value.exit_code == 4


def test_ddp_backend_follows_the_device():
    cpu = distributed_placement("cpu", local_rank=1)
    assert (cpu.backend, cpu.device) == ("gloo", torch.device("cpu"))
    auto = distributed_placement("auto", local_rank=0)
    if CUDA:
        assert auto.backend == "nccl" and auto.device.type == "cuda"
    else:
        assert (auto.backend, auto.device) == ("gloo", torch.device("cpu"))


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_ddp_ranks_take_their_local_gpu_and_share_over_gloo_when_short():
    n = torch.cuda.device_count()
    own = distributed_placement("auto", local_rank=n - 1, local_world_size=n)
    assert own == distributed_placement("cuda", local_rank=n - 1, local_world_size=n)
    assert own.device == torch.device("cuda", n - 1) and own.backend == "nccl"
    shared = distributed_placement("auto", local_rank=n, local_world_size=n + 1)
    assert shared.device == torch.device("cuda", 0) and shared.backend == "gloo"


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_torchrun_two_processes_train_on_the_gpu(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).parent / "torchrun"
    zoo = Path(__file__).resolve().parents[1] / "repdeploy" / "assets" / "zoo" / "repvgg_mini.pth"
    r = subprocess.run([str(torchrun), "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "repdeploy", "qat",
                        str(zoo), "--train-data", "builtin", "--epochs", "1", "--train-samples", "256",
                        "--calib-samples", "64", "--batch-size", "32", "--device", "auto", "--json",
                        "-o", str(tmp_path / "ddp")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["world_size"] == 2 and record["device"].startswith("cuda")


def test_amp_choices():
    cpu = torch.device("cpu")
    assert amp_dtype("none", cpu) is None and amp_dtype(None, cpu) is None
    assert amp_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(InputError, match="--amp fp16 needs a CUDA device"):
        amp_dtype("fp16", cpu)
    with pytest.raises(InputError, match="--amp"):
        amp_dtype("int4", cpu)


def test_bf16_autocast_training_runs_and_learns():
    from repdeploy.data import open_dataset
    from repdeploy.models import get_spec
    from repdeploy.training import train_architecture
    from repdeploy.training import TrainConfig

    data = open_dataset("builtin", split="train", image_size=32).subset(range(128))
    model, result = train_architecture(get_spec("RepVGG-mini"), data, None,
                                       TrainConfig(epochs=2, batch_size=32, warmup_epochs=0), device="cpu",
                                       amp=torch.bfloat16)
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the weights fp32


@pytest.mark.skipif(CUDA, reason="a CUDA GPU is present")
def test_cli_device_cuda_without_gpu_exits_4_before_writing(tmp_path):
    from repdeploy import save_fused

    save_fused(fuse(trained_like("RepVGG-mini")).plain, tmp_path / "f.pt")
    for args in (["train", "--arch", "RepVGG-mini", "--epochs", "1", "--device", "cuda", "-o", str(tmp_path / "m.pth")],
                 ["eval", str(tmp_path / "f.pt"), "--engine", "torch", "--device", "cuda:0"],
                 ["bench", str(tmp_path / "f.pt"), "--engine", "torch", "--device", "cuda"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 4, (args, result.output)
        assert "no CUDA GPU is visible" in result.output
    assert not (tmp_path / "m.pth").exists()


def test_cli_bad_device_is_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["train", "--arch", "RepVGG-mini", "--device", "gpu0",
                                       "-o", str(tmp_path / "m.pth")])
    assert result.exit_code == 2 and "--device 'gpu0'" in result.output


# ---------------------------------------------------------------- CUDA (skipped without a GPU)


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_calibration_ranges_match_across_devices():
    plain = fuse(trained_like("RepVGG-mini")).plain
    batches = [torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    caches = {}
    for device in ("cpu", "cuda"):
        qnet = QuantPlainNet(plain, "ort").to(device)
        qnet.set_weight_ranges()
        caches[device] = calibrate(qnet, batches, method="entropy")
    cpu, gpu = caches["cpu"].amax, caches["cuda"].amax
    assert cpu.keys() == gpu.keys()
    for name in cpu:
        # histogram bins may move by one where a value sits on an edge: one bin of 2048 at most
        assert abs(cpu[name] - gpu[name]) <= 2e-3 * max(cpu[name], 1e-6), name


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_torch_runner_on_cuda_matches_cpu():
    from repdeploy import open_runner

    plain = fuse(trained_like("RepVGG-mini")).plain
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with open_runner(plain, "torch", device="cpu") as r:
        ref = r.infer(x)
    with open_runner(plain, "torch", device="cuda") as r:
        out = r.infer(x)
        assert r.describe()["device"].startswith("cuda")
    assert np.abs(ref - out).max() < 1e-3 * max(1.0, np.abs(ref).max())


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_qat_trains_on_the_gpu(tmp_path):
    from pathlib import Path

    from repdeploy import qat

    zoo = Path(__file__).resolve().parents[1] / "repdeploy" / "assets" / "zoo" / "repvgg_mini.pth"
    result = qat(str(zoo), train_data="builtin", val_data="builtin", output_dir=tmp_path, epochs=1,
                 train_samples=256, calib_samples=64, batch_size=32, device="cuda", amp="bf16")
    assert result.report["device"].startswith("cuda")
    assert result.int8_onnx.is_file() and result.report["qat_top1"] is not None


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_quantize_on_cuda_writes_the_files_cpu_writes(tmp_path):
    import json
    from pathlib import Path

    import onnx

    from repdeploy import quantize

    zoo = Path(__file__).resolve().parents[1] / "repdeploy" / "assets" / "zoo" / "repoptvgg_mini.pth"
    runs = {d: quantize(str(zoo), output_dir=tmp_path / d, calib_data="builtin", calib_samples=64, device=d)
            for d in ("cpu", "cuda")}
    cpu, gpu = (json.loads(runs[d].calib_cache.read_text())["tensors"] for d in ("cpu", "cuda"))
    assert cpu.keys() == gpu.keys()
    for name in cpu:
        assert abs(cpu[name]["amax"] - gpu[name]["amax"]) <= 2e-3 * max(cpu[name]["amax"], 1e-6), name
    assert runs["cuda"].report["device"].startswith("cuda")
    a, b = (onnx.load(str(runs[d].int8_onnx)) for d in ("cpu", "cuda"))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_cli_eval_and_bench_torch_on_cuda(tmp_path):
    import json

    from repdeploy import save_fused

    save_fused(fuse(trained_like("RepVGG-mini")).plain, tmp_path / "f.pt")
    runner = CliRunner()
    cpu = runner.invoke(main, ["eval", str(tmp_path / "f.pt"), "--engine", "torch", "--device", "cpu", "--json"])
    gpu = runner.invoke(main, ["eval", str(tmp_path / "f.pt"), "--engine", "torch", "--device", "cuda", "--json"])
    assert cpu.exit_code == 0 and gpu.exit_code == 0, gpu.output
    assert abs(json.loads(cpu.output)["top1"] - json.loads(gpu.output)["top1"]) <= 0.5
    bench = runner.invoke(main, ["bench", str(tmp_path / "f.pt"), "--engine", "torch", "--device", "cuda",
                                 "--batch", "1,64", "--duration", "0.2", "--iterations", "5",
                                 "--json", str(tmp_path / "b.json")])
    assert bench.exit_code == 0 and "&&&& PASSED" in bench.output, bench.output
    results = json.loads((tmp_path / "b.json").read_text())["results"]
    assert all(r["runner"]["device"].startswith("cuda") for r in results)
