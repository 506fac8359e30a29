"""What `vggtool search` explores: chains of the registered recipe types, each a candidate variant run in one
runtime. A chain is float steps (structured pruning distilled from the baseline, weight sharing) and then at most
one step that leaves float (a quantizer, an ONNX export); the runtime is where its last step's output runs."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field, replace

from vggtool import cpu
from vggtool import runtimes as rt
from vggtool.compress.base import Recipe, recipe_from_dict
from vggtool.compress.baseline import Baseline
from vggtool.compress.cluster import WeightSharing
from vggtool.compress.onnx_export import OnnxExport
from vggtool.compress.quant_nncf import NncfInt8
from vggtool.compress.quant_onnx import OnnxInt8
from vggtool.compress.quant_torch import StaticQuant
from vggtool.compress.structured import StructuredPrune
from vggtool.errors import VggtoolError
from vggtool.search.names import OBJECTIVE_FIELDS, OBJECTIVES, RUNTIMES  # noqa: F401 (offered from here too)


@dataclass(frozen=True)
class Candidate:
    """A chain of recipes built step by step into variants of the run (each step its own variant), run in
    `runtime`. The baseline is the chain (Baseline(),)."""

    chain: tuple[Recipe, ...]
    runtime: str

    @property
    def name(self) -> str:
        return "+".join(r.name for r in self.chain)

    @property
    def output(self) -> str:
        return self.chain[-1].output.value

    @property
    def key(self) -> str:
        """The row key: the variant's name, "@runtime" where it runs elsewhere than in its own runtime."""
        return rt.key(self.name, self.runtime, self.output)

    @property
    def steps(self) -> list[tuple[str, Recipe]]:
        """Each step's variant name and recipe, in build order."""
        return [("+".join(r.name for r in self.chain[: i + 1]), r) for i, r in enumerate(self.chain)]

    @property
    def pruned(self) -> float:
        return next((r.amount for r in self.chain if isinstance(r, StructuredPrune)), 0.0)

    def to_dict(self) -> dict:
        return {"key": self.key, "name": self.name, "runtime": self.runtime,
                "chain": [r.to_dict() for r in self.chain]}

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        return cls(tuple(recipe_from_dict(r) for r in d["chain"]), d["runtime"])


BASELINE = Candidate((Baseline(),), "torch")


@dataclass(frozen=True)
class SearchSpace:
    """The chains a search may try, and how much each stage measures."""

    amounts: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)  # structured ratios, by bisection from the middle
    finetune_epochs: int = 6  # distillation epochs of each pruned parent
    longer: int = 2  # then twice, then four times the epochs for the first ratio that missed, while budget lasts
    runtimes: tuple[str, ...] = RUNTIMES
    sharing_bits: tuple[tuple[int, int], ...] = ((8, 5), (6, 4))  # conv/linear bits; only where size is the goal
    float_layers: tuple[int, ...] = (1, 3)  # most sensitive layers kept in float when plain int8 misses the budget
    proxy_images: int = 1000  # validation images of the cheap stage (0: all)
    scan_images: int = 500  # validation images of the layer sensitivity scan
    confirm: int = 3  # candidates per objective nearest the front that get the full split and a bench timing
    proxy_seconds: float = 2.0  # the short timing of the cheap stage, per candidate
    confirm_seconds: float = 60.0  # the bench timing of the confirmed candidates, all together
    engines: tuple[str, ...] = ("fbgemm", "x86")  # torch int8 engines

    def __post_init__(self):
        if not self.amounts or not all(0 < a < 1 for a in self.amounts):
            raise VggtoolError("structured amounts must be fractions in (0, 1)")
        if self.finetune_epochs < 1 or self.confirm < 1 or min(self.proxy_images, self.scan_images) < 0:
            raise VggtoolError("fine-tuning epochs and confirmed candidates must be positive, images >= 0")
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown or not self.runtimes:
            raise VggtoolError(f"unknown runtime {(unknown or [''])[0]!r}: choose one of {', '.join(RUNTIMES)}")

    def pruned_parent(self, amount: float, epochs: int = 0) -> tuple[Recipe, ...]:
        return (StructuredPrune(amount=amount, distill=True, finetune_epochs=epochs or self.finetune_epochs),)

    def to_dict(self) -> dict:
        return asdict(self)

    def deployed(self, parent: tuple[Recipe, ...]) -> list[Candidate]:
        """Every way to run a float parent (the baseline's chain is empty): itself in torch, torch int8 on each
        engine, ONNX Runtime int8, the int8 ONNX file and NNCF int8 in OpenVINO, its float ONNX file in
        OpenVINO f32 and bf16 (the runtimes this space allows)."""
        out = []
        if "torch" in self.runtimes:  # the baseline itself is BASELINE, measured in every search
            out += [Candidate(parent, "torch")] if parent else []
            out += [Candidate(parent + (StaticQuant(fuse=True, engine=e),), "torch") for e in self.engines]
        if "onnxruntime" in self.runtimes:
            out.append(Candidate(parent + (OnnxInt8(),), "onnxruntime"))
        if "openvino" in self.runtimes:
            out.append(Candidate(parent + (OnnxInt8(),), "openvino"))
            if importlib.util.find_spec("nncf") is not None:  # optional beside OpenVINO
                out.append(Candidate(parent + (NncfInt8(),), "openvino"))
            out.append(Candidate(parent + (OnnxExport(),), "openvino"))
        if "openvino-bf16" in self.runtimes:
            out.append(Candidate(parent + (OnnxExport(),), "openvino-bf16"))
        return out

    @staticmethod
    def can_keep_float(candidate: Candidate) -> bool:
        return isinstance(candidate.chain[-1], (OnnxInt8, NncfInt8))

    def kept_float(self, candidate: Candidate, ranking: list[str], max_drop: float) -> list[Candidate]:
        """The same int8 with the layers that lose most kept in float: ONNX Runtime int8 without the first
        `float_layers` of `ranking` (the layer scan), NNCF int8 under its own accuracy control."""
        last = candidate.chain[-1]
        if isinstance(last, OnnxInt8):
            return [replace(candidate, chain=candidate.chain[:-1] + (OnnxInt8(exclude=tuple(ranking[:n])),))
                    for n in self.float_layers if 0 < n <= len(ranking)]
        if isinstance(last, NncfInt8) and 0 < max_drop < 1:
            return [replace(candidate, chain=candidate.chain[:-1] + (NncfInt8(max_drop=max_drop),))]
        return []

    def shared(self, parent: tuple[Recipe, ...]) -> list[Candidate]:
        """Weight sharing of a float parent, at each number of bits: smaller files, the same MACs."""
        if "torch" not in self.runtimes:
            return []
        return [Candidate(parent + (WeightSharing(c, lin, finetune_epochs=1),), "torch") for c, lin in self.sharing_bits]


def check_request(objective: str, runtimes: tuple[str, ...], max_drop) -> float:
    """Refuse, in one line, what a search cannot do: a drop that is no number or negative, an unknown objective
    or runtime, a runtime that is not installed here, an objective the runtimes cannot measure."""
    try:
        drop = float(max_drop)
    except (TypeError, ValueError):
        raise VggtoolError(f"--max-drop must be a number of top-1 points, got {max_drop!r}") from None
    if not drop >= 0 or drop == float("inf"):
        raise VggtoolError(f"--max-drop must be a number of top-1 points >= 0, got {max_drop}")
    if objective not in OBJECTIVES:
        raise VggtoolError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise VggtoolError(f"unknown runtime {unknown[0]!r}: choose one of {', '.join(RUNTIMES)}")
    if objective == "size" and set(runtimes) == {"openvino-bf16"}:
        raise VggtoolError("objective size cannot be measured in openvino-bf16 alone: it converts the float ONNX "
                           "file to bf16 when it loads it, so nothing smaller is stored; add another runtime")
    rt.check(tuple(r for r in runtimes if r != "torch"))  # OpenVINO installed, native bf16 for openvino-bf16
    return drop


def default_runtimes() -> tuple[str, ...]:
    """Every runtime installed here: OpenVINO where it imports, its bf16 where the CPU computes bf16 natively."""
    out = ["torch", "onnxruntime"]
    try:
        from vggtool import openvino_runtime

        openvino_runtime.version()
        out.append("openvino")
        if cpu.has_native_bf16():
            out.append("openvino-bf16")
    except VggtoolError:
        pass
    return tuple(out)


@dataclass(frozen=True)
class Request:
    """What the user asked: the error budget in top-1 points, what to minimise, the minutes to spend."""

    max_drop: float = 1.0
    objective: str = "b1"
    budget_minutes: float = 120.0
    space: SearchSpace = field(default_factory=SearchSpace)

    @property
    def drop(self) -> float:
        """The budget as a fraction of top-1 error."""
        return self.max_drop / 100


def request_space(space: SearchSpace, quick: bool) -> SearchSpace:
    """The quick profile's space: 5 epochs per pruned parent (those of `--set beyond`), shorter timings, and a
    ratio of 0.3 too (the small VGG11 of the quick profile loses more to pruning than a full VGG19)."""
    if not quick:
        return space
    return replace(space, amounts=(0.3, *space.amounts), finetune_epochs=5, confirm_seconds=30.0, proxy_seconds=1.0)
