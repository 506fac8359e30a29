"""Model files: safetensors with JSON in the header, never pickle.

`encode_state`/`decode_state` turn any module state_dict (quantized tensors
and packed parameters included) into plain tensors plus a JSON description,
so quantized variants are stored as integer values, scales and zero points.
A foreign `.pth` is read with `weights_only=True` only, and on torch < 2.10
only after an explicit opt-in.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vggtool.errors import VggtoolError
from vggtool.files import write_bytes
from vggtool.models import ArchSpec, build_model, check_compatible, infer_spec

META_KEY = "vggtool"
SAFE_PTH_TORCH = (2, 10)
PICKLE_RISK = (
    "torch < 2.10 can run code or corrupt memory while reading a .pth even with weights_only=True "
    "(CVE-2025-32434, CVE-2026-24747)"
)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


class TensorCodec:
    """How a kind of tensor that storage does not know itself is stored as plain tensors: `encode(value, key,
    tensors)` returns the layout entry (holding `tag`) or None when the value is not of its kind; `decode(entry,
    tensors)` rebuilds it. Registered by the module that owns the kind (quantized tensors: vggtool.quant_ao)."""

    def __init__(self, tag: str, encode: Callable, decode: Callable):
        self.tag, self.encode, self.decode = tag, encode, decode


CODECS: dict[str, TensorCodec] = {}


def register_codec(codec: TensorCodec) -> None:
    CODECS[codec.tag] = codec


def _encode(value, key: str, tensors: dict):
    if isinstance(value, torch.Tensor):
        for codec in CODECS.values():
            if (entry := codec.encode(value, key, tensors)) is not None:
                return entry
        if value.is_quantized:
            raise VggtoolError(f"cannot store {key}: no codec for quantized tensors is registered")
        tensors[key] = value.detach().contiguous().clone()
        return {"t": key}
    if isinstance(value, (tuple, list)):
        return {"seq": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)],
                "tuple": isinstance(value, tuple)}
    if isinstance(value, torch.dtype):
        return {"torch_dtype": str(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"v": value}
    raise VggtoolError(f"cannot store {key} of type {type(value).__name__}")


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def _decode(spec: dict, tensors: dict):
    for tag, codec in CODECS.items():
        if tag in spec:
            return codec.decode(spec, tensors)
    if "q" in spec:  # a quantized model's file, read before its recipe (and so vggtool.quant_ao) was imported
        raise VggtoolError("this file holds quantized tensors: load it as a variant (`vggtool evaluate --variant`)")
    if "t" in spec:
        return tensors[spec["t"]]
    if "seq" in spec:
        items = [_decode(s, tensors) for s in spec["seq"]]
        return tuple(items) if spec["tuple"] else items
    if "torch_dtype" in spec:
        return _dtype(spec["torch_dtype"])
    return spec["v"]


def encode_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    layout = {k: _encode(v, k, tensors) for k, v in state.items()}
    return tensors, layout


def decode_state(tensors: dict[str, torch.Tensor], layout: dict) -> dict:
    return {k: _decode(spec, tensors) for k, spec in layout.items()}


DIGEST_KEY = "vggtool_sha256"


def tensors_sha256(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    """sha256 over the metadata and every tensor's name, dtype, shape and bytes: a flipped bit
    anywhere in a file is caught on reading, not loaded as a slightly different model."""
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"|{name}|{t.dtype}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def to_bytes(state: dict, meta: dict) -> bytes:
    tensors, layout = encode_state(state)
    # quantized modules read their state by version (state_dict._metadata); keep it
    versions = {k: dict(v) for k, v in getattr(state, "_metadata", {}).items()}
    meta_json = json.dumps({**meta, "layout": layout, "module_versions": versions})
    return st_save(tensors, metadata={META_KEY: meta_json, DIGEST_KEY: tensors_sha256(tensors, meta_json)})


def from_bytes(data: bytes, what: str) -> tuple[dict, dict]:
    """Parse safetensors bytes into (state_dict, vggtool metadata)."""
    try:
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise VggtoolError(f"{what} is not a readable safetensors file ({e})") from None
    raw = header.get("__metadata__", {}).get(META_KEY)
    if raw is None:
        return tensors, {}
    digest = header["__metadata__"].get(DIGEST_KEY)  # files written before 0.3 have none
    if digest is not None and digest != tensors_sha256(tensors, raw):
        raise VggtoolError(f"{what} is damaged: its contents do not match the sha256 stored in it")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise VggtoolError(f"{what} has unreadable metadata ({e})") from None
    state = OrderedDict(decode_state(tensors, meta.pop("layout")))
    state._metadata = OrderedDict(meta.pop("module_versions", {}))
    return state, meta


def save(path: Path, state: dict, meta: dict) -> None:
    """Write `state` and `meta` to one safetensors file, atomically."""
    write_bytes(path, to_bytes(state, meta))


def read(path: Path) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise VggtoolError(f"checkpoint {path} does not exist")
    return from_bytes(path.read_bytes(), f"checkpoint {path}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_pth(path: Path, trust_pickle: bool = False) -> dict:
    """A foreign PyTorch checkpoint (raw state_dict or {'state_dict': ...}), weights only."""
    if _torch_version() < SAFE_PTH_TORCH and not trust_pickle:
        raise VggtoolError(f"refusing to read {path}: {PICKLE_RISK}; pass --trust-pickle only for a file you trust")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        raise VggtoolError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {reason})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VggtoolError(f"{path} does not hold a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_model(path: Path, spec: ArchSpec | None = None, trust_pickle: bool = False):
    """A float model from our safetensors file, a raw safetensors state_dict, or a .pth.

    Returns (model in eval mode, its spec, the file's metadata).
    """
    path = Path(path)
    if path.suffix in (".pth", ".pt"):
        if not path.is_file():
            raise VggtoolError(f"checkpoint {path} does not exist")
        state, meta = read_pth(path, trust_pickle), {}
    else:
        state, meta = read(path)
        if meta.get("kind") == "training-state":  # last.safetensors: the model's tensors carry a prefix
            state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if spec is None:
        spec = ArchSpec.from_dict(meta["spec"]) if "spec" in meta else infer_spec(state)
    model = build_model(spec)
    check_compatible(model, state, f"checkpoint {path}")
    model.load_state_dict(state)
    return model.eval(), spec, meta
