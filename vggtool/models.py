"""VGG with BatchNorm for 32x32 inputs, keyed exactly like the report's model.

Channel plans are data; `features.N.*` and `classifier.0/3/6.*` match the
widely used CIFAR VGG layout, so its checkpoints load unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild a model skeleton."""

    arch: str = "vgg19_bn"
    num_classes: int = 100
    width: float = 1.0
    dropout: float = 0.5

    def __post_init__(self):
        if self.arch not in PLANS:
            raise VggtoolError(f"unknown architecture {self.arch!r}: choose one of {', '.join(PLANS)}")
        if self.num_classes < 2:
            raise VggtoolError(f"num_classes must be at least 2, got {self.num_classes}")
        if not 0 < self.width <= 4:
            raise VggtoolError(f"width must be in (0, 4], got {self.width}")
        if not 0 <= self.dropout < 1:
            raise VggtoolError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    def channels(self, c: int) -> int:
        return max(1, round(c * self.width))


class VGG(nn.Module):
    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        cin = 3
        for item in PLANS[spec.arch]:
            if item == M:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                cout = spec.channels(item)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        hidden = spec.channels(HIDDEN)
        self.classifier = nn.Sequential(
            nn.Linear(cin, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(spec.dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(spec.dropout),
            nn.Linear(hidden, spec.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


def build_model(spec: ArchSpec) -> VGG:
    return VGG(spec)


def infer_spec(state_dict: dict) -> ArchSpec:
    """Guess the architecture of a state_dict of this layout from its shapes."""
    convs = [k for k, v in state_dict.items() if k.startswith("features.") and k.endswith(".weight") and v.dim() == 4]
    by_depth = {sum(1 for c in plan if c != M): name for name, plan in PLANS.items()}
    if not convs or len(convs) not in by_depth or "classifier.6.weight" not in state_dict:
        raise VggtoolError(
            f"not a VGG-BN state_dict of the report's layout ({len(convs)} conv weights, "
            f"classifier.6.weight {'present' if 'classifier.6.weight' in state_dict else 'missing'})"
        )
    first = state_dict[convs[0]] if "features.0.weight" not in state_dict else state_dict["features.0.weight"]
    return ArchSpec(by_depth[len(convs)], int(state_dict["classifier.6.weight"].shape[0]), first.shape[0] / 64)


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
