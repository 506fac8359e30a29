"""Eager-mode post-training quantization through torch.ao.quantization.

Everything that touches torch.ao sits in this module, behind a few functions
(`dynamic`; `static`, which is `prepare_static`, calibration, then `convert`),
so the backend can be swapped when PyTorch removes torch.ao.quantization. Its
deprecation warnings are silenced here only.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from vggtool import checkpoint
from vggtool.errors import VggtoolError

ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*must run observer before calling calculate_qparams.*")
        warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated.*")
        warnings.filterwarnings("ignore", message=r"(?s).*quantized tensor creation functions.*deprecated.*")
        yield


def make_quantized(ints: torch.Tensor, scale, zero_point, axis: int | None = None) -> torch.Tensor:
    """Rebuild a quantized tensor from its integer values, scale(s) and zero point(s)."""
    with _quiet():
        if axis is None:
            return torch._make_per_tensor_quantized_tensor(ints, scale, zero_point)
        return torch._make_per_channel_quantized_tensor(ints, scale, zero_point, axis)


def _encode_quantized(value: torch.Tensor, key: str, tensors: dict) -> dict | None:
    """A quantized tensor as its integers plus scale(s) and zero point(s), for vggtool.checkpoint."""
    if not value.is_quantized:
        return None
    tensors[key] = value.int_repr().contiguous()
    if value.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return {"q": "tensor", "t": key, "dtype": str(value.dtype), "scale": value.q_scale(),
                "zero_point": value.q_zero_point()}
    tensors[key + ".scales"] = value.q_per_channel_scales().contiguous()
    tensors[key + ".zero_points"] = value.q_per_channel_zero_points().contiguous()
    return {"q": "channel", "t": key, "dtype": str(value.dtype), "axis": value.q_per_channel_axis()}


def _decode_quantized(entry: dict, tensors: dict) -> torch.Tensor:
    ints = tensors[entry["t"]]
    if entry["q"] == "tensor":
        return make_quantized(ints, entry["scale"], entry["zero_point"])
    return make_quantized(ints, tensors[entry["t"] + ".scales"], tensors[entry["t"] + ".zero_points"], entry["axis"])


checkpoint.register_codec(checkpoint.TensorCodec("q", _encode_quantized, _decode_quantized))


def available_engines() -> list[str]:
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def use_engine(engine: str) -> None:
    """Select the quantized kernel library; refuse one this build or CPU lacks."""
    supported = available_engines()
    if engine not in supported:
        raise VggtoolError(f"quantized engine {engine!r} is not available here: choose one of {', '.join(supported)}")
    torch.backends.quantized.engine = engine


def dynamic(model: nn.Module, dtype: str, engine: str = "fbgemm") -> nn.Module:
    """Dynamic quantization of the Linear layers, as the report did."""
    from torch.ao.quantization import quantize_dynamic

    use_engine(engine)
    qdtype = {"int8": torch.qint8, "float16": torch.float16}[dtype]
    with _quiet():
        return quantize_dynamic(copy.deepcopy(model).eval().cpu(), {nn.Linear}, dtype=qdtype)


def _fuse(features: nn.Sequential, with_relu: bool, qat: bool) -> None:
    from torch.ao.quantization import fuse_modules, fuse_modules_qat

    groups = []
    for i, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d) and isinstance(features[i + 1], nn.BatchNorm2d):
            groups.append([str(i), str(i + 1)] + ([str(i + 2)] if with_relu else []))
    # QAT keeps BatchNorm alive inside ConvBn modules so it can still learn; post-training folds it
    (fuse_modules_qat if qat else fuse_modules)(features, groups, inplace=True)


def prepare_static(model: nn.Module, *, fuse: bool, fuse_relu: bool, engine: str, per_channel: bool,
                   qat: bool = False) -> nn.Module:
    """Sequential(QuantStub, model, DeQuantStub) with observers in place, ready for calibration,
    or with `qat` fake-quantization in place, ready for training.

    A copy of `model` is prepared; the original stays float. Calibrate (or,
    for QAT, train) the result, then `convert` it.
    """
    from torch.ao import quantization as q

    use_engine(engine)
    with _quiet():
        m = copy.deepcopy(model).cpu().train(qat)
        if fuse:
            _fuse(m.features, fuse_relu, qat)
        wrapped = nn.Sequential(q.QuantStub(), m, q.DeQuantStub()).train(qat)
        if qat:
            base = q.get_default_qat_qconfig(engine)
            weight = q.default_fused_per_channel_wt_fake_quant if per_channel else q.default_fused_wt_fake_quant
        else:
            base = q.get_default_qconfig(engine)
            weight = q.default_per_channel_weight_observer if per_channel else q.default_weight_observer
        wrapped.qconfig = q.QConfig(activation=base.activation, weight=weight)
        (q.prepare_qat if qat else q.prepare)(wrapped, inplace=True)
    return wrapped


def convert(prepared: nn.Module) -> nn.Module:
    """Replace observed modules by quantized kernels, with the scales the observers saw."""
    from torch.ao import quantization as q

    with _quiet():
        q.convert(prepared.eval(), inplace=True)
    return prepared


def static(
    model: nn.Module,
    *,
    fuse: bool,
    fuse_relu: bool,
    engine: str,
    per_channel: bool,
    calibrate: Callable[[nn.Module], None] | None,
) -> nn.Module:
    """Static int8: prepare, calibrate, convert.

    With `calibrate=None` the observers see no data: that builds the module
    skeleton into which a saved quantized state_dict is loaded.
    """
    prepared = prepare_static(model, fuse=fuse, fuse_relu=fuse_relu, engine=engine, per_channel=per_channel)
    if calibrate is not None:
        with torch.inference_mode(), _quiet():
            calibrate(prepared)
    return convert(prepared)


def repacked(state: dict, skeleton: Callable[[str], nn.Module], engine: str) -> nn.Module:
    """A quantized state_dict loaded into `skeleton(engine)`: its weights packed for `engine` (torch packs
    them for the engine in use at load)."""
    use_engine(engine)
    model = skeleton(engine)
    with _quiet():
        model.load_state_dict(state)
    return model.eval()


def quantized_modules(model: nn.Module) -> list[str]:
    """Names of the modules replaced by quantized kernels that hold weights (for tests and reports)."""
    return [
        name
        for name, mod in model.named_modules()
        if type(mod).__module__.startswith("torch.ao.nn.quantized") and callable(getattr(mod, "weight", None))
    ]
