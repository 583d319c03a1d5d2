"""Architectures as data: one frozen `ArchSpec` per model and one registry of named variants.

A spec describes the macro layout shared by every RepVGG-family model: five stages of
3x3 blocks (stage0 is a single block, the first block of each stage has stride 2),
global average pooling and a linear head. Families differ only in what a block looks
like while training; after fusion every spec builds the same `PlainNet`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterator

from ..errors import InputError

FAMILIES = ("repvgg", "repopt")
MAX_DEPTH = 64  # blocks per stage (upstream's deepest, D2se, has 14)
MAX_WIDTH = 16384  # channels per layer (upstream's widest has 2560)


@dataclass(frozen=True)
class LayerSpec:
    """One 3x3 block of the plain stack."""

    index: int  # layer index counted from stage0 = 0, as upstream counts grouped layers
    name: str  # checkpoint prefix: "stage0" or "stage{k}.{i}"
    in_channels: int
    out_channels: int
    stride: int
    groups: int

    @property
    def has_identity(self) -> bool:
        # An identity branch exists only where it is shape-preserving.
        return self.in_channels == self.out_channels and self.stride == 1


@dataclass(frozen=True)
class ArchSpec:
    """The whole architecture of one model, enough to build it in any form."""

    name: str  # registry name, e.g. "RepVGG-A0", or "custom" when inferred from weights
    family: str  # "repvgg" or "repopt"
    depths: tuple[int, int, int, int]  # blocks in stages 1..4 (stage0 is always one block)
    widths: tuple[int, int, int, int, int]  # output channels of stage0..stage4
    groups: tuple[tuple[int, int], ...] = ()  # (layer index, groups) for grouped layers only
    use_se: bool = False
    num_classes: int = 1000
    in_channels: int = 3
    input_size: int = 224  # the resolution the model is meant for (not stored in weights)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise InputError(f"unknown family {self.family!r}; use one of {', '.join(FAMILIES)}")
        if len(self.depths) != 4 or len(self.widths) != 5:
            raise InputError(f"ArchSpec {self.name}: needs 4 depths and 5 widths")
        # A damaged record must fail here with its field named, not deep inside torch (or by
        # allocating tens of gigabytes for a 20000 px check input).
        from ..validate import MAX_CLASSES, MAX_INPUT_SIZE

        def bad(what: str) -> InputError:
            return InputError(f"architecture {self.name}: {what}; the record is damaged or not repdeploy's")

        if any(not 1 <= d <= MAX_DEPTH for d in self.depths):
            raise bad(f"depths {list(self.depths)} must be 1..{MAX_DEPTH}")
        if any(not 1 <= w <= MAX_WIDTH for w in self.widths):
            raise bad(f"widths {list(self.widths)} must be 1..{MAX_WIDTH}")
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise bad(f"num_classes {self.num_classes} must be 1..{MAX_CLASSES}")
        if not 1 <= self.in_channels <= 4:
            raise bad(f"in_channels {self.in_channels} must be 1..4")
        if not 1 <= self.input_size <= MAX_INPUT_SIZE:
            raise bad(f"input_size {self.input_size} must be 1..{MAX_INPUT_SIZE}")
        layers = {layer.index: layer for layer in self.layers()}
        for index, g in self.groups:
            layer = layers.get(index)
            if layer is None or g < 1 or layer.in_channels % g or layer.out_channels % g:
                raise bad(f"groups ({index}, {g}) do not divide layer {index}'s channels")

    def layers(self) -> list[LayerSpec]:
        """Expand depths and widths into the list of 3x3 layers, stage0 first."""
        group_of = dict(self.groups)
        layers = [LayerSpec(0, "stage0", self.in_channels, self.widths[0], 2, group_of.get(0, 1))]
        in_ch, index = self.widths[0], 1
        for stage, depth in enumerate(self.depths, start=1):
            out_ch = self.widths[stage]
            for block in range(depth):
                stride = 2 if block == 0 else 1
                layers.append(
                    LayerSpec(index, f"stage{stage}.{block}", in_ch, out_ch, stride, group_of.get(index, 1))
                )
                in_ch, index = out_ch, index + 1
        return layers

    def with_classes(self, num_classes: int) -> "ArchSpec":
        return replace(self, num_classes=num_classes)

    def same_architecture(self, other: "ArchSpec") -> bool:
        """Equal up to name, class count and intended input size (what weights cannot tell)."""
        keys = ("family", "depths", "widths", "groups", "use_se", "in_channels")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["depths"] = list(self.depths)
        d["widths"] = list(self.widths)
        d["groups"] = [list(g) for g in self.groups]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ArchSpec":
        try:
            return cls(
                name=str(d["name"]),
                family=str(d["family"]),
                depths=tuple(int(x) for x in d["depths"]),  # type: ignore[arg-type]
                widths=tuple(int(x) for x in d["widths"]),  # type: ignore[arg-type]
                groups=tuple((int(a), int(b)) for a, b in d.get("groups", ())),
                use_se=bool(d.get("use_se", False)),
                num_classes=int(d.get("num_classes", 1000)),
                in_channels=int(d.get("in_channels", 3)),
                input_size=int(d.get("input_size", 224)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed architecture record {d!r}: {exc}") from exc


def stage_widths(a: float, b: float, base: tuple[int, int, int, int] = (64, 128, 256, 512)) -> tuple[int, ...]:
    """Upstream width rule: stage0 = min(64, 64a); stages 1-3 scale by a, stage 4 by b."""
    return (min(64, int(64 * a)), int(base[0] * a), int(base[1] * a), int(base[2] * a), int(base[3] * b))


def grouped(groups: int, depths: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Upstream g2/g4 rule: layers 2, 4, ..., 26 are grouped (never the last layer)."""
    last = sum(depths)  # index of the last layer (stage0 is layer 0)
    return tuple((i, groups) for i in range(2, 27, 2) if i < last)


def _repvgg(name: str, depths, a: float, b: float, groups: int = 1, se: bool = False, size: int = 224) -> ArchSpec:
    depths = tuple(depths)
    return ArchSpec(
        name=name,
        family="repvgg",
        depths=depths,
        widths=stage_widths(a, b),
        groups=grouped(groups, depths) if groups > 1 else (),
        use_se=se,
        input_size=size,
    )


def _repopt(name: str, depths, a: float, b: float, size: int = 224) -> ArchSpec:
    return ArchSpec(name=name, family="repopt", depths=tuple(depths), widths=stage_widths(a, b), input_size=size)


A_DEPTHS, B_DEPTHS, D_DEPTHS = (2, 4, 14, 1), (4, 6, 16, 1), (8, 14, 24, 1)

_SPECS: list[ArchSpec] = [
    _repvgg("RepVGG-A0", A_DEPTHS, 0.75, 2.5),
    _repvgg("RepVGG-A1", A_DEPTHS, 1, 2.5),
    _repvgg("RepVGG-A2", A_DEPTHS, 1.5, 2.75),
    _repvgg("RepVGG-B0", B_DEPTHS, 1, 2.5),
    _repvgg("RepVGG-B1", B_DEPTHS, 2, 4),
    _repvgg("RepVGG-B1g2", B_DEPTHS, 2, 4, groups=2),
    _repvgg("RepVGG-B1g4", B_DEPTHS, 2, 4, groups=4),
    _repvgg("RepVGG-B2", B_DEPTHS, 2.5, 5),
    _repvgg("RepVGG-B2g2", B_DEPTHS, 2.5, 5, groups=2),
    _repvgg("RepVGG-B2g4", B_DEPTHS, 2.5, 5, groups=4),
    _repvgg("RepVGG-B3", B_DEPTHS, 3, 5),
    _repvgg("RepVGG-B3g2", B_DEPTHS, 3, 5, groups=2),
    _repvgg("RepVGG-B3g4", B_DEPTHS, 3, 5, groups=4),
    _repvgg("RepVGG-D2se", D_DEPTHS, 2.5, 5, se=True, size=320),
    _repopt("RepOpt-VGG-B1", B_DEPTHS, 2, 4),
    _repopt("RepOpt-VGG-B2", B_DEPTHS, 2.5, 5),
    _repopt("RepOpt-VGG-L1", D_DEPTHS, 2, 4),
    _repopt("RepOpt-VGG-L2", D_DEPTHS, 2.5, 5),
    # Small variants for tests, the demo and the shipped zoo (32x32 inputs, 10 classes by default).
    # "mini" is narrow and shallow but keeps every branch kind: identity blocks, stride-2 blocks.
    ArchSpec("RepVGG-mini", "repvgg", (1, 2, 2, 1), (16, 16, 32, 64, 128), num_classes=10, input_size=32),
    ArchSpec("RepVGG-mini-g2", "repvgg", (1, 2, 2, 1), (16, 16, 32, 64, 128), groups=((2, 2), (4, 2)),
             num_classes=10, input_size=32),
    ArchSpec("RepVGG-mini-se", "repvgg", (1, 2, 2, 1), (16, 16, 32, 64, 128), use_se=True,
             num_classes=10, input_size=32),
    ArchSpec("RepOpt-VGG-mini", "repopt", (1, 2, 2, 1), (16, 16, 32, 64, 128), num_classes=10, input_size=32),
]

VARIANTS: dict[str, ArchSpec] = {s.name: s for s in _SPECS}


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace("repoptvgg", "repopt-vgg")


_BY_CANONICAL = {_canonical(n): n for n in VARIANTS}
# timm's names (repvgg_a0, repvgg_b1g4, ...) canonicalise to ours already.


def get_spec(name: str, num_classes: int | None = None) -> ArchSpec:
    """Look a variant up by name, case-insensitively; timm names (`repvgg_b1g4`) work too.

    >>> get_spec("repvgg_a0").widths
    (48, 48, 96, 192, 1280)
    """
    key = _BY_CANONICAL.get(_canonical(name))
    if key is None:
        raise InputError(f"unknown architecture {name!r}; run `repdeploy inspect --list-arch` for the variants")
    spec = VARIANTS[key]
    return spec.with_classes(num_classes) if num_classes is not None else spec


def match_variant(spec: ArchSpec) -> str | None:
    """The registry name of a spec inferred from weights, or None for a custom layout."""
    for name, known in VARIANTS.items():
        if known.same_architecture(spec):
            return name
    return None


__all__ = ["ArchSpec", "LayerSpec", "VARIANTS", "get_spec", "match_variant"]
