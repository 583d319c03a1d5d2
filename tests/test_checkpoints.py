"""Loading: every format and container gives the same PlainNet; bad files give clear errors."""

import os
import re

import pytest
import torch
from safetensors.torch import save_file

from conftest import trained_like
from repdeploy import load, load_fused, save_fused, CheckpointError, NonFiniteWeightsError, UnsafeCheckpointError
from repdeploy.checkpoints import detect_format, timm_to_official
from repdeploy.fuse import to_plain

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

OFFICIAL_TO_TIMM = [
    (r"^stage0\.", "stem."),
    (r"^stage(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
    (r"\.rbr_dense\.", ".conv_kxk."),
    (r"\.rbr_1x1\.", ".conv_1x1."),
    (r"\.rbr_identity\.", ".identity."),
    (r"\.rbr_reparam\.", ".reparam_conv."),
    (r"\.se\.down\.", ".attn.fc1."),
    (r"\.se\.up\.", ".attn.fc2."),
    (r"^linear\.", "head.fc."),
]


def to_timm(sd):
    out = {}
    for k, v in sd.items():
        for pattern, repl in OFFICIAL_TO_TIMM:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def official_deploy(plain):
    return {k.replace(".conv.", ".rbr_reparam."): v for k, v in plain.state_dict().items()}


@pytest.fixture(scope="module")
def repvgg():
    return trained_like("RepVGG-mini-se")


def logits(path, **kw):
    plain, _, _ = load_fused(path, **kw)
    with torch.no_grad():
        return plain(X)


def test_every_container_and_format_gives_the_same_plainnet(tmp_path, repvgg):
    sd = repvgg.state_dict()
    with torch.no_grad():
        expected = repvgg(X)
    plain = to_plain(repvgg)
    files = {
        "plain.pth": sd,
        "model.pth": {"model": sd, "epoch": 3, "best_acc": 71.2},
        "ddp.pth.tar": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        "timm.pth": to_timm(sd),
        "deploy.pth": official_deploy(plain),
        "timm_deploy.pth": to_timm(official_deploy(plain)),
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    save_fused(plain, tmp_path / "fused.pt")
    for name in [*files, "w.safetensors", "fused.pt"]:
        out = logits(tmp_path / name)
        assert (out - expected).abs().max() <= 1e-4 * expected.abs().max(), name
    forms = {n: load(tmp_path / n).form for n in ("plain.pth", "deploy.pth", "timm_deploy.pth", "fused.pt")}
    assert forms == {"plain.pth": "train", "deploy.pth": "deploy", "timm_deploy.pth": "deploy", "fused.pt": "fused"}
    assert load(tmp_path / "timm.pth").format == "timm"


def test_ema_is_choosable(tmp_path, repvgg):
    other = trained_like("RepVGG-mini-se", seed=5)
    torch.save({"model": repvgg.state_dict(), "ema": other.state_dict()}, tmp_path / "ck.pth")
    with torch.no_grad():
        assert torch.allclose(logits(tmp_path / "ck.pth", use_ema=True), other(X), atol=1e-5)
        assert torch.allclose(logits(tmp_path / "ck.pth"), repvgg(X), atol=1e-5)
    torch.save(repvgg.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="no EMA"):
        load(tmp_path / "plain.pth", use_ema=True)


def test_official_and_timm_twins_fuse_to_identical_weights(tmp_path):
    model = trained_like("RepVGG-mini-g2")
    torch.save(model.state_dict(), tmp_path / "official.pth")
    torch.save(to_timm(model.state_dict()), tmp_path / "timm.pth")
    a, _, _ = load_fused(tmp_path / "official.pth")
    b, _, _ = load_fused(tmp_path / "timm.pth")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("name,form,fmt", [
    ("RepVGG-mini", "train", "repvgg-official"),
    ("RepVGG-mini-g2", "train", "repvgg-official"),
    ("RepVGG-mini-se", "train", "repvgg-official"),
    ("RepOpt-VGG-mini", "target", "repopt-vgg"),
    ("RepOpt-VGG-mini", "hs", "repopt-vgg"),
])
def test_variant_and_form_are_detected_from_weights_not_names(tmp_path, name, form, fmt):
    path = tmp_path / "RepVGG-B3-deploy.pth"  # a misleading name on purpose
    torch.save(trained_like(name, form).state_dict(), path)
    loaded = load(path)
    assert (loaded.variant, loaded.form, loaded.format) == (name, form, fmt)


def test_a_custom_layout_is_inferred_and_classes_are_read(tmp_path):
    from repdeploy.models import ArchSpec, RepVGG

    spec = ArchSpec("custom", "repvgg", (1, 1, 3, 1), (8, 12, 24, 40, 72), num_classes=7, input_size=32)
    torch.save(RepVGG(spec).state_dict(), tmp_path / "c.pth")
    loaded = load(tmp_path / "c.pth")
    assert loaded.variant == "custom" and loaded.spec.same_architecture(spec) and loaded.spec.num_classes == 7


def test_big_variants_are_named_from_shapes(tmp_path):
    from repdeploy.models import RepVGG, get_spec

    torch.save(RepVGG(get_spec("RepVGG-B1g4", num_classes=5)).state_dict(), tmp_path / "b.pth")
    loaded = load(tmp_path / "b.pth")
    assert loaded.variant == "RepVGG-B1g4" and loaded.spec.num_classes == 5


def test_arch_override_is_checked(tmp_path):
    torch.save(trained_like("RepVGG-mini").state_dict(), tmp_path / "m.pth")
    assert load(tmp_path / "m.pth", arch="repvgg_mini").variant == "RepVGG-mini"
    with pytest.raises(CheckpointError, match="--arch RepVGG-mini-g2"):
        load(tmp_path / "m.pth", arch="RepVGG-mini-g2")


def test_scales_file_is_recognised_and_carries_no_weights(tmp_path):
    hs = trained_like("RepOpt-VGG-mini", "hs")
    scales = {k: v for k, v in hs.state_dict().items() if ".scale_" in k}
    torch.save(scales, tmp_path / "scales.pth")
    loaded = load(tmp_path / "scales.pth")
    assert loaded.form == "scales" and loaded.model is None
    with pytest.raises(CheckpointError, match="scales file"):
        load_fused(tmp_path / "scales.pth")


class Config:  # stands for a pickled config object in an upstream training checkpoint
    lr = 0.1


def test_unsafe_pickle_needs_opt_in(tmp_path, repvgg):
    torch.save({"model": repvgg.state_dict(), "config": Config()}, tmp_path / "cfg.pth")
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
        load(tmp_path / "cfg.pth")
    assert load(tmp_path / "cfg.pth", trust_checkpoint=True).variant == "RepVGG-mini-se"


def test_detect_format_rejects_foreign_keys():
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3),
              "fc.weight": torch.zeros(1000, 2048)}
    with pytest.raises(CheckpointError, match="not a RepVGG-family checkpoint"):
        detect_format(resnet)


def test_timm_mapping_names():
    sd = {"stages.2.3.conv_kxk.bn.running_var": torch.zeros(1), "stem.reparam_conv.bias": torch.zeros(1),
          "stages.0.1.attn.fc2.weight": torch.zeros(1), "head.fc.weight": torch.zeros(1)}
    assert set(timm_to_official(sd)) == {
        "stage3.3.rbr_dense.bn.running_var", "stage0.rbr_reparam.bias", "stage1.1.se.up.weight", "linear.weight"}


# ------------------------------------------------------------------ bad inputs


def bad_files(tmp_path, repvgg):
    sd = repvgg.state_dict()
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    data = good.read_bytes()
    (tmp_path / "random.pth").write_bytes(os.urandom(4096))
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, tmp_path / "resnet.pth")
    torch.save({k: v for k, v in sd.items() if k != "stage2.1.rbr_1x1.conv.weight"}, tmp_path / "missing.pth")
    wrong = dict(sd)
    wrong["stage2.1.rbr_1x1.bn.weight"] = torch.zeros(5)
    torch.save(wrong, tmp_path / "wrongshape.pth")
    nan = dict(sd)
    nan["stage1.0.rbr_dense.conv.weight"] = sd["stage1.0.rbr_dense.conv.weight"].clone().fill_(float("nan"))
    torch.save(nan, tmp_path / "nan.pth")
    return {
        "random.pth": "not a PyTorch or safetensors file",
        "truncated.pth": "truncated or corrupt",
        "empty.pth": "is empty",
        "resnet.pth": "not a RepVGG-family checkpoint",
        "missing.pth": "missing 1 .*stage2.1.rbr_1x1.conv.weight",
        "wrongshape.pth": "mis-shaped .*stage2.1.rbr_1x1.bn.weight",
        "nan.pth": "NaN or Inf .*--allow-nonfinite",
    }


def test_bad_checkpoints_give_one_clear_error(tmp_path, repvgg):
    for name, pattern in bad_files(tmp_path, repvgg).items():
        with pytest.raises(CheckpointError, match=pattern) as info:
            load(tmp_path / name)
        message = str(info.value)
        assert "\n" not in message and name in message, message


def test_nonfinite_can_be_allowed(tmp_path, repvgg):
    bad_files(tmp_path, repvgg)
    with pytest.raises(NonFiniteWeightsError):
        load(tmp_path / "nan.pth")
    assert load(tmp_path / "nan.pth", allow_nonfinite=True).form == "train"
