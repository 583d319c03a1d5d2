import pytest
import torch

from repdeploy.models import build, get_spec
from repdeploy.models.layers import randomize_batchnorm


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def trained_like(name: str, form: str = "train", seed: int = 0, num_classes: int | None = None):
    """A model with random weights and randomized BN statistics, as a trained one would have."""
    torch.manual_seed(seed)
    return randomize_batchnorm(build(get_spec(name, num_classes), form), seed).eval()
