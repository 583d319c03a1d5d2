"""The shared training loop: loss goes down, schedule, decay groups, exact resume, checkpoints."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from repdeploy.data import open_dataset
from repdeploy import CheckpointError, InputError
from repdeploy.models import build, get_spec
from repdeploy.optim import load_scales
from repdeploy.training import hypersearch
from repdeploy.optim.repopt import expected_scale_keys
from repdeploy.training import train_architecture
from repdeploy.training import TrainConfig
from repdeploy.training.loop import lr_factor, parameter_groups


@pytest.fixture(scope="module")
def digits():
    train = open_dataset("builtin", split="train", image_size=32)
    return train.subset(range(256)), open_dataset("builtin", split="val", image_size=32).subset(range(128))


def test_training_lowers_the_loss(digits):
    train_data, val_data = digits
    probe_x, probe_y = next(val_data.batches(128))
    torch.manual_seed(0)
    untrained = F.cross_entropy(build(get_spec("RepVGG-mini"), "train").eval()(probe_x), probe_y).item()
    model, result = train_architecture(get_spec("RepVGG-mini"), train_data, val_data,
                                       TrainConfig(epochs=3, batch_size=32, warmup_epochs=0.5))
    assert result.steps == 3 * 8 and len(result.history) == 3
    assert result.history[-1].train_loss < result.history[0].train_loss
    with torch.no_grad():
        assert F.cross_entropy(model(probe_x), probe_y).item() < untrained - 0.3
    assert result.val_top1 is not None and result.val_top1 > 30  # 10 classes: chance is 10 %


def test_cosine_schedule_with_warmup():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 100, 0) == pytest.approx(1.0)


def test_weight_decay_groups_as_upstream():
    groups = parameter_groups(build(get_spec("RepOpt-VGG-mini"), "hs"), 1e-4)
    decay = dict(zip(groups[0]["names"], groups[0]["params"]))
    no_decay = set(groups[1]["names"])
    assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == 0.0
    assert "stage2.1.scale_identity.weight" in decay and "stage2.1.conv.weight" in decay
    assert {"stage2.1.scale_conv.weight", "stage2.1.scale_1x1.weight", "stage2.1.bn.weight",
            "stage2.1.bn.bias", "linear.bias"} <= no_decay
    assert all(p.dim() > 1 for n, p in decay.items() if "scale_identity" not in n)


def _resume_case(tmp_path, digits, optimizer, scales=None, sgs=False):
    train_data, _ = digits
    cfg = dict(epochs=2, batch_size=64, checkpoint_every=3, lr=0.05, warmup_epochs=0.5)
    kw = dict(optimizer=optimizer, scales=scales, sgs=sgs, sgs_every=1)
    spec = get_spec("RepOpt-VGG-mini" if scales is not None else "RepVGG-mini")
    full, full_result = train_architecture(spec, train_data, None, TrainConfig(**cfg), **kw)
    state = tmp_path / "state.pt"
    # Interrupted mid-epoch 2 (after step 5 of 8), then resumed in a fresh process-like setting.
    _, first = train_architecture(spec, train_data, None, TrainConfig(**cfg, stop_after_steps=5),
                                  state_path=state, **kw)
    assert first.stopped_early and first.steps == 5 and state.exists()
    torch.manual_seed(1234)  # the resumed run must not depend on the global RNG it starts with
    resumed, second = train_architecture(spec, train_data, None, TrainConfig(**cfg), state_path=state,
                                         resume=True, **kw)
    assert second.resumed_from_step == 5 and second.steps == 8
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert [r.train_loss for r in second.history] == pytest.approx([r.train_loss for r in full_result.history], rel=1e-12)
    assert not list(tmp_path.glob("*.part"))


def test_resume_reproduces_uninterrupted_sgd_run(tmp_path, digits):
    _resume_case(tmp_path, digits, "sgd", sgs=True)


def test_resume_reproduces_uninterrupted_repopt_adamw_run(tmp_path, digits):
    spec = get_spec("RepOpt-VGG-mini")
    g = torch.Generator().manual_seed(0)
    scales = {k: torch.rand(n, generator=g) + 0.5 for k, n in expected_scale_keys(spec).items()}
    _resume_case(tmp_path, digits, "repopt-adamw", scales=scales)


def test_resume_refuses_changed_settings_and_missing_state(tmp_path, digits):
    train_data, _ = digits
    spec = get_spec("RepVGG-mini")
    state = tmp_path / "state.pt"
    train_architecture(spec, train_data.subset(range(64)), None, TrainConfig(epochs=1, batch_size=32), state_path=state)
    with pytest.raises(InputError, match="different batch_size"):
        train_architecture(spec, train_data.subset(range(64)), None, TrainConfig(epochs=1, batch_size=16),
                           state_path=state, resume=True)
    with pytest.raises(InputError, match="no training state"):
        train_architecture(spec, train_data, None, TrainConfig(epochs=1), state_path=tmp_path / "none.pt", resume=True)
    (tmp_path / "bad.pt").write_bytes(b"xx")
    with pytest.raises(CheckpointError, match="bad.pt"):
        train_architecture(spec, train_data, None, TrainConfig(epochs=1), state_path=tmp_path / "bad.pt", resume=True)


def test_recipe_refuses_mismatched_optimizer_settings(digits):
    train_data, _ = digits
    with pytest.raises(InputError, match="repopt-sgd trains plain RepOpt-VGG"):
        train_architecture(get_spec("RepVGG-mini"), train_data, optimizer="repopt-sgd", scales={})
    with pytest.raises(InputError, match="hypersearch"):
        train_architecture(get_spec("RepOpt-VGG-mini"), train_data, optimizer="repopt-sgd")
    with pytest.raises(InputError, match="unknown optimizer"):
        train_architecture(get_spec("RepOpt-VGG-mini"), train_data, optimizer="lion")


def test_hypersearch_writes_upstream_scales_file(tmp_path, digits):
    train_data, _ = digits
    spec = get_spec("RepOpt-VGG-mini")
    out = tmp_path / "scales.pth"
    result = hypersearch(spec, train_data.subset(range(128)), None, TrainConfig(epochs=1, batch_size=32), output=out)
    loaded = load_scales(out, spec)
    assert set(loaded) == set(expected_scale_keys(spec))
    # The scales trained away from their initial values (1 and sqrt(2 / i)).
    init = build(spec, "hs").state_dict()
    assert any(not torch.allclose(loaded[k], init[k]) for k in loaded)
    assert result.summary()["scale_tensors"] == len(loaded)
    assert math.isfinite(result.train.train_loss)


# --- command line -----------------------------------------------------------------------------


def _tiny_npz(path, n=48):
    import numpy as np

    d = np.load(__import__("repdeploy.data", fromlist=["builtin_path"]).builtin_path())
    np.savez(path, train_images=d["train_images"][:n], train_labels=d["train_labels"][:n],
             val_images=d["val_images"][:32], val_labels=d["val_labels"][:32], classes=d["classes"])
    return path


def test_cli_train_and_hypersearch_write_upstream_formats(tmp_path):
    import json

    from click.testing import CliRunner

    from repdeploy.cli import main

    data = str(_tiny_npz(tmp_path / "tiny.npz"))
    runner = CliRunner()
    common = ["--data", data, "--epochs", "1", "--batch-size", "16", "--image-size", "16", "-q"]
    r = runner.invoke(main, ["train", "--arch", "RepVGG-mini", *common, "-o", str(tmp_path / "rv.pth"), "--json"])
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["steps"] == 3 and record["optimizer"] == "sgd" and record["val_images"] == 32
    sd = torch.load(tmp_path / "rv.pth", weights_only=True)
    assert set(sd) == set(build(get_spec("RepVGG-mini"), "train").state_dict())
    assert "stage2.1.rbr_identity.running_var" in sd and (tmp_path / "rv.pth.state").exists()

    r = runner.invoke(main, ["hypersearch", "--arch", "RepOpt-VGG-mini", *common, "-o", str(tmp_path / "s.pth")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["train", "--arch", "RepOpt-VGG-mini", "--scales", str(tmp_path / "s.pth"), *common,
                             "-o", str(tmp_path / "ro.pth")])
    assert r.exit_code == 0, r.output
    sd = torch.load(tmp_path / "ro.pth", weights_only=True)
    assert set(sd) == set(build(get_spec("RepOpt-VGG-mini"), "target").state_dict())


def test_cli_bad_inputs_exit_2_and_write_nothing(tmp_path):
    from click.testing import CliRunner

    from repdeploy.cli import main

    runner = CliRunner()
    out = tmp_path / "m.pth"
    cases = [
        (["--arch", "RepOpt-VGG-mini"], "hypersearch"),  # repopt-sgd by default, no scales
        (["--arch", "RepVGG-mini", "--optimizer", "repopt-sgd", "--scales", str(tmp_path / "x.pth")], "x.pth"),
        (["--arch", "RepVGG-mini", "--train-data", str(tmp_path / "missing")], "does not exist"),
        (["--arch", "RepVGG-nano"], "unknown architecture"),
    ]
    for args, message in cases:
        r = runner.invoke(main, ["train", *args, "--epochs", "1", "-o", str(out)])
        assert r.exit_code == 2, (args, r.output)
        assert message in r.stderr and r.stderr.startswith("error: ")
        assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_custom_loss_trains_on_unlabelled_data(tmp_path):
    """QAT reuses the loop with a distillation loss: no labels needed, the student nears the teacher."""
    import numpy as np

    from repdeploy.optim import SGDWithMultipliers
    from repdeploy.training import train

    import repdeploy

    x = next(open_dataset("builtin", split="val", image_size=32).batches(96))[0].numpy()
    np.save(tmp_path / "x.npy", x)
    unlabelled = open_dataset(tmp_path / "x.npy", image_size=32)
    assert not unlabelled.has_labels
    torch.manual_seed(0)
    zoo = Path(repdeploy.__file__).parent / "assets" / "zoo" / "repoptvgg_mini.pth"
    teacher = repdeploy.load(zoo).model.eval()
    student = build(get_spec("RepOpt-VGG-mini"), "target")

    def distill(model, xb, _y):
        with torch.no_grad():
            target = F.softmax(teacher(xb) / 2.0, dim=1)
        return F.kl_div(F.log_softmax(model(xb) / 2.0, dim=1), target, reduction="batchmean")

    result = train(student, lambda g, m: SGDWithMultipliers(g, m, lr=0.05, momentum=0.9), unlabelled, None,
                   TrainConfig(epochs=5, batch_size=32, augment="none", warmup_epochs=0), loss_fn=distill)
    assert result.steps == 15
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    with pytest.raises(InputError, match="no labels"):
        train(student, lambda g, m: SGDWithMultipliers(g, m, lr=0.05), unlabelled, None, TrainConfig(epochs=1))


def test_cli_trains_on_an_image_folder(tmp_path):
    """A user's own ImageFolder (no val/ split: 10 % is held out) through `repdeploy train`."""
    import json

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from repdeploy.cli import main

    rng = np.random.default_rng(0)
    for cls, channel in (("red", 0), ("blue", 2)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(20):
            a = rng.integers(0, 60, size=(20, 20, 3), dtype=np.uint8)
            a[..., channel] += 150
            Image.fromarray(a).save(tmp_path / "imgs" / cls / f"{i}.png")
    r = CliRunner().invoke(main, ["train", "--arch", "RepVGG-mini", "--data", str(tmp_path / "imgs"), "--epochs", "2",
                                  "--batch-size", "12", "--image-size", "16", "--json", "-q",
                                  "-o", str(tmp_path / "m.pth")])
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["num_classes"] == 2 and record["val_images"] == 4 and record["steps"] == 2 * 3
    assert torch.load(tmp_path / "m.pth", weights_only=True)["linear.weight"].shape == (2, 128)
