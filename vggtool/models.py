"""VGG with BatchNorm for 32x32 inputs, keyed exactly like the report's model.

Channel plans are data; `features.N.*` and `classifier.0/3/6.*` match the
widely used CIFAR VGG layout, so its checkpoints load unchanged. A spec may
also list every layer's width, so thinned (pruned) models rebuild exactly.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from numbers import Integral, Real

import torch
from torch import nn

from vggtool.errors import VggtoolError

M = "M"
PLANS: dict[str, list] = {
    "vgg11_bn": [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "vgg13_bn": [64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "vgg16_bn": [64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
    "vgg19_bn": [64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M],
}
HIDDEN = 4096


def _is_int(x) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _widths(value, name: str, n: int, arch: str) -> tuple[int, ...]:
    """`value` as a tuple of n ints >= 1, or a one-line error."""
    if not isinstance(value, (list, tuple)):
        raise VggtoolError(f"{name} must be a list of {n} integers, got {type(value).__name__}")
    if len(value) != n:
        raise VggtoolError(f"{name} must have {n} entries for {arch}, got {len(value)}")
    if not all(_is_int(v) and v >= 1 for v in value):
        raise VggtoolError(f"{name} must be integers >= 1, got {list(value)}")
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a model skeleton.

    `channels` (every Conv2d's output channels, in order) and `hidden` (the two
    hidden Linear widths) default to the arch's plan scaled by `width`; give them
    to describe a thinned model. `width` then just records the nominal width.
    """

    arch: str = "vgg19_bn"
    num_classes: int = 100
    width: float = 1.0
    dropout: float = 0.5
    channels: tuple[int, ...] = ()
    hidden: tuple[int, int] = ()

    def __post_init__(self):
        if not isinstance(self.arch, str) or self.arch not in PLANS:
            raise VggtoolError(f"unknown architecture {self.arch!r}: choose one of {', '.join(PLANS)}")
        if not _is_int(self.num_classes) or self.num_classes < 2:
            raise VggtoolError(f"num_classes must be an integer of at least 2, got {self.num_classes!r}")
        if not _is_real(self.width) or not 0 < self.width <= 4:
            raise VggtoolError(f"width must be in (0, 4], got {self.width!r}")
        if not _is_real(self.dropout) or not 0 <= self.dropout < 1:
            raise VggtoolError(f"dropout must be in [0, 1), got {self.dropout!r}")
        channels, hidden = self._from_width()
        # Lists (e.g. from JSON) become tuples so specs compare and hash.
        if self.channels not in ((), []):
            channels = _widths(self.channels, "channels", len(channels), self.arch)
        if self.hidden not in ((), []):
            hidden = _widths(self.hidden, "hidden", 2, self.arch)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "hidden", hidden)

    def _from_width(self) -> tuple[tuple[int, ...], tuple[int, int]]:
        def scale(c: int) -> int:
            return max(1, round(c * self.width))

        return tuple(scale(c) for c in PLANS[self.arch] if c != M), (scale(HIDDEN),) * 2

    @property
    def is_uniform(self) -> bool:
        """True when every layer has the width `width` alone implies (an unpruned model)."""
        return (self.channels, self.hidden) == self._from_width()

    def to_dict(self) -> dict:
        """All fields, JSON-ready (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> ArchSpec:
        """Rebuild a spec saved by `to_dict`; older dicts without channels/hidden and unknown keys are fine."""
        if not isinstance(d, dict):
            raise VggtoolError(f"a model spec must be a mapping, got {type(d).__name__}")
        missing = [k for k in ("arch", "num_classes", "width") if k not in d]
        if missing:
            raise VggtoolError(f"model spec lacks {', '.join(missing)}")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class VGG(nn.Module):
    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        cin, widths = 3, iter(spec.channels)
        for item in PLANS[spec.arch]:
            if item == M:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                cout = next(widths)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        h0, h1 = spec.hidden
        self.classifier = nn.Sequential(
            nn.Linear(cin, h0),
            nn.ReLU(inplace=True),
            nn.Dropout(spec.dropout),
            nn.Linear(h0, h1),
            nn.ReLU(inplace=True),
            nn.Dropout(spec.dropout),
            nn.Linear(h1, spec.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


def build_model(spec: ArchSpec) -> VGG:
    return VGG(spec)


def infer_spec(state_dict: dict) -> ArchSpec:
    """Read the architecture of a state_dict of this layout, every layer's width included, from its shapes."""
    convs = sorted(
        (int(m[1]), v) for k, v in state_dict.items()
        if (m := re.fullmatch(r"features\.(\d+)\.weight", k)) and torch.is_tensor(v) and v.dim() == 4
    )
    by_depth = {sum(1 for c in plan if c != M): name for name, plan in PLANS.items()}
    linears = [state_dict.get(f"classifier.{i}.weight") for i in (0, 3, 6)]
    if len(convs) not in by_depth or not all(torch.is_tensor(w) and w.dim() == 2 for w in linears):
        raise VggtoolError(
            f"not a VGG-BN state_dict of the report's layout ({len(convs)} conv weights, "
            f"classifier.0/3/6.weight {'present' if all(w is not None for w in linears) else 'missing'})"
        )
    # (layer, in, out) in data order; each layer must take what the previous one gives.
    chain = [(f"features.{n}", w.shape[1], w.shape[0]) for n, w in convs]
    chain += [(f"classifier.{i}", w.shape[1], w.shape[0]) for i, w in zip((0, 3, 6), linears)]
    given = 3
    for name, cin, cout in chain:
        if cin != given:
            raise VggtoolError(f"inconsistent state_dict: {name} takes {cin} inputs but receives {given}")
        given = cout
    channels = tuple(int(w.shape[0]) for _, w in convs)
    return ArchSpec(by_depth[len(convs)], int(linears[2].shape[0]), min(4.0, channels[0] / 64),
                    channels=channels, hidden=(int(linears[0].shape[0]), int(linears[1].shape[0])))


def check_compatible(model: nn.Module, state_dict: dict, what: str) -> None:
    """Raise a readable error naming the keys or shapes that differ."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise VggtoolError(f"{what} does not fit {getattr(model, 'spec', 'the model')}: {'; '.join(problems)}")


def layer_shapes(spec: ArchSpec) -> list[tuple[str, int, int, int]]:
    """(kind, inputs, outputs, output side in pixels) of every Conv2d and Linear, in order."""
    shapes, cin, side, widths = [], 3, 32, iter(spec.channels)
    for item in PLANS[spec.arch]:
        if item == M:
            side //= 2
        else:
            cout = next(widths)
            shapes.append(("conv", cin, cout, side))
            cin = cout
    h0, h1 = spec.hidden
    flat = cin * side * side
    return shapes + [("linear", flat, h0, 1), ("linear", h0, h1, 1), ("linear", h1, spec.num_classes, 1)]


def macs(spec: ArchSpec) -> int:
    """Multiply-accumulates of one 32x32 image through the Conv2d and Linear layers."""
    return sum(cin * cout * (9 if kind == "conv" else 1) * side * side for kind, cin, cout, side in layer_shapes(spec))


def param_count(spec: ArchSpec) -> int:
    """Parameters of the float model: weights and biases, and BatchNorm's scale and shift."""
    return sum(cin * cout * (9 if kind == "conv" else 1) + cout + (2 * cout if kind == "conv" else 0)
               for kind, cin, cout, _ in layer_shapes(spec))
