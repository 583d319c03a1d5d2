import pytest
import torch

from conftest import trained_like
from repdeploy import FusionError, fuse
from repdeploy.fuse import identity_kernel, to_plain
from repdeploy.models import PlainNet, get_spec

SMALL = [
    ("RepVGG-mini", "train"),
    ("RepVGG-mini-g2", "train"),
    ("RepVGG-mini-se", "train"),
    ("RepOpt-VGG-mini", "target"),
    ("RepOpt-VGG-mini", "hs"),
]


@pytest.mark.parametrize("name,form", SMALL)
def test_fused_model_computes_the_same_function(name, form):
    model = trained_like(name, form)
    result = fuse(model)
    assert isinstance(result.plain, PlainNet)
    assert result.equivalence.max_rel_diff <= 1e-4
    # Independent check on a different input than the built-in one.
    x = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        ref, out = model(x), result.plain(x)
    assert (ref - out).abs().max() <= 1e-4 * ref.abs().max()


def test_a0_at_224_fuses_within_tolerance():
    model = trained_like("RepVGG-A0")
    result = fuse(model, input_size=224, batch=1)
    assert result.equivalence.input_shape == (1, 3, 224, 224)
    assert result.equivalence.max_rel_diff <= 1e-4


def test_identity_kernel_is_identity_for_grouped_conv():
    x = torch.randn(1, 8, 5, 5)
    k = identity_kernel(8, 4, x)
    y = torch.nn.functional.conv2d(x, k, padding=1, groups=4)
    assert torch.allclose(x, y)


def test_broken_fusion_is_an_error_not_a_warning():
    model = trained_like("RepVGG-mini")
    plain = to_plain(model)
    # Fusing a model whose BN statistics changed after fusion must be caught by the check.
    with torch.no_grad():
        model.stage1[0].rbr_dense.bn.running_mean.add_(5.0)
    from repdeploy.fuse import compare

    eq = compare(model, plain, (2, 3, 32, 32))
    assert not eq.passed
    with pytest.raises(FusionError):
        fuse(model, tolerance=-1.0)


def test_deploy_param_counts_match_reference():
    counts = {n: sum(p.numel() for p in PlainNet(get_spec(n)).parameters()) for n in
              ("RepVGG-A0", "RepVGG-B1g4", "RepVGG-D2se")}
    assert round(counts["RepVGG-A0"] / 1e6, 2) == 8.31
    assert round(counts["RepVGG-B1g4"] / 1e6, 2) == 36.13
    assert round(counts["RepVGG-D2se"] / 1e6, 2) == 120.39
