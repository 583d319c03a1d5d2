"""The model zoo: specs (data), one builder per family form, and the deploy form PlainNet."""

from .plain import PlainBlock, PlainNet
from .repoptvgg import RepOptVGG, RepOptVGGSearch
from .repvgg import RepVGG
from .specs import VARIANTS, ArchSpec, LayerSpec, get_spec, match_variant

FORMS = ("train", "deploy", "target", "hs", "fused")


def build(spec: ArchSpec, form: str = "train"):
    """Build the module for a spec in one form.

    repvgg: "train" (branches) or "deploy"/"fused" (PlainNet);
    repopt: "target"/"train" (conv-BN), "hs" (hyper-search) or "fused" (PlainNet).

    >>> build(get_spec("RepVGG-mini"), "train").__class__.__name__
    'RepVGG'
    """
    if form in ("deploy", "fused"):
        return PlainNet(spec)
    if spec.family == "repvgg" and form == "train":
        return RepVGG(spec)
    if spec.family == "repopt" and form in ("target", "train"):
        return RepOptVGG(spec)
    if spec.family == "repopt" and form == "hs":
        return RepOptVGGSearch(spec)
    from ..errors import InputError

    raise InputError(f"{spec.name}: no {form!r} form for the {spec.family} family")


__all__ = [
    "ArchSpec", "LayerSpec", "VARIANTS", "get_spec", "match_variant", "build",
    "PlainNet", "PlainBlock", "RepVGG", "RepOptVGG", "RepOptVGGSearch", "FORMS",
]
