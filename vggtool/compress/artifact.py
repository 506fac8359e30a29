"""Variant folders: written atomically, read back, measured. Knows no recipe family.

A variant folder holds `model.safetensors` (float or quantized output),
`model.onnx` (ONNX output) or `model.xml` and `model.bin` (OpenVINO IR output),
and `meta.json`: the recipe, what it produces, the architecture, the parent chain with sha256, library versions, the quantized
engine and the figures known at build time. `load_variant` turns any variant
back into a predict function; how follows from the recipe's declared output.
"""

from __future__ import annotations

import io
import platform
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from vggtool import checkpoint, export, runtimes
from vggtool.compress.base import (
    Built,
    Context,
    Output,
    Recipe,
    Source,
    apply,
    finalize,
    for_loading,
    recipe_from_dict,
    restore,
    skeleton,
)
from vggtool.errors import VggtoolError
from vggtool.evaluate import Predict, torch_predict
from vggtool.files import atomic_dir, read_json, write_json
from vggtool.models import ArchSpec

MODEL_FILE, ONNX_FILE, META_FILE = "model.safetensors", "model.onnx", "meta.json"
IR_FILE, IR_WEIGHTS = "model.xml", "model.bin"  # an OpenVINO IR: the graph and its weights
FILE_OUTPUTS = (Output.ONNX, Output.OPENVINO)  # outputs that are a file the recipe writes, not a torch model


# ---------------------------------------------------------------- figures
def state_dict_mb(model: nn.Module) -> float:
    """The report's size: bytes of torch.save(state_dict), measured in memory, / 1e6."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell() / 1e6


def file_figures(path: Path) -> dict:
    """Bytes and zlib-compressed bytes of a stored model (an OpenVINO IR: its graph and weights together)."""
    path = Path(path)
    data = path.read_bytes() + (path.with_suffix(".bin").read_bytes() if path.suffix == ".xml" else b"")
    return {"file_bytes": len(data), "compressed_bytes": len(zlib.compress(data, 6)), "compressor": "zlib-6"}


def sparsity(model: nn.Module, kinds: tuple[type, ...]) -> float:
    """Fraction of zero weights over all layers of the given kinds."""
    zeros = total = 0
    for mod in model.modules():
        if isinstance(mod, kinds):
            w = mod.weight
            w = w() if callable(w) else w
            if w.is_quantized:
                w = w.dequantize()
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total if total else 0.0


def nonzero_params(state: dict) -> tuple[int, int]:
    """(parameters, non-zero parameters) over the float tensors of a state_dict."""
    n = nz = 0
    for v in state.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            n += v.numel()
            nz += int(torch.count_nonzero(v))
    return n, nz


def model_figures(model: nn.Module) -> dict:
    n, nz = nonzero_params(model.state_dict())
    return {
        "size_mb": state_dict_mb(model),
        "float_params": n,
        "nonzero_float_params": nz,
        "sparsity_conv": sparsity(model, (nn.Conv2d,)),
        "sparsity_conv_linear": sparsity(model, (nn.Conv2d, nn.Linear)),
    }


def versions() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__, "python": platform.python_version()}


# ---------------------------------------------------------------- writing
def build_variant(recipe: Recipe, source: Source, ctx: Context, dest: Path, force: bool = False,
                  name: str | None = None) -> dict:
    """Apply `recipe` to `source`, store the result, measure its figures, and write the variant folder
    atomically; returns its meta."""
    with atomic_dir(dest, force=force) as tmp:
        built = apply(recipe, source, ctx, tmp)
        stored = store(recipe, built, tmp)
        meta = {
            "name": name or Path(dest).name,
            "recipe": recipe.to_dict(),
            "output": recipe.output.value,
            "spec": built.spec.to_dict(),
            "chain": source.chain,
            "versions": versions(),
            "quantized_engine": torch.backends.quantized.engine,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "figures": figures(recipe, source, built, stored),
            **built.meta,
        }
        kept = [stored_file(meta)] + ([IR_WEIGHTS] if recipe.output is Output.OPENVINO else [])
        meta["sha256"] = {name: checkpoint.sha256(tmp / name) for name in kept}  # verified on every load
        write_json(tmp / META_FILE, meta)
    return meta


def store(recipe: Recipe, built: Built, folder: Path) -> Path:
    """The variant's model file: the one the recipe wrote (ONNX, or its own format), else the built
    model's state dict saved as model.safetensors."""
    if recipe.output not in FILE_OUTPUTS and built.model is None:
        raise VggtoolError(f"recipe {recipe.name} declared {recipe.output.value} output but built no model")
    if recipe.output in FILE_OUTPUTS or built.file is not None:
        if built.file is None or not built.file.is_file():
            kind = (f"{recipe.output.value} output" if recipe.output in FILE_OUTPUTS
                    else f"{built.file.name} as its stored file")
            raise VggtoolError(f"recipe {recipe.name} declared {kind} but wrote no file")
        return built.file
    checkpoint.save(folder / MODEL_FILE, built.model.state_dict(), {"kind": "variant", "recipe": recipe.to_dict(),
                                                                    "spec": built.spec.to_dict()})
    return folder / MODEL_FILE


def figures(recipe: Recipe, source: Source, built: Built, stored: Path) -> dict:
    """Size, sparsity and parameter figures of a stored variant; writes nothing. The stored file's bytes are
    the size; a model kept in its recipe's own format also gives its dense state dict's size beside it."""
    if recipe.output in FILE_OUTPUTS:
        model = {k: v for k, v in model_figures(source.model).items() if k != "size_mb"}
        stored_figures = file_figures(stored)
        return {**built.figures, **model, "size_mb": stored_figures["file_bytes"] / 1e6, **stored_figures}
    if built.file is not None:
        model = model_figures(built.model)
        dense = zlib.compress(checkpoint.to_bytes(built.model.state_dict(), {}), 6)
        return {**model, **file_figures(stored), **built.figures, "size_mb": stored.stat().st_size / 1e6,
                "state_dict_mb": model["size_mb"], "dense_zlib_bytes": len(dense)}
    return {**model_figures(built.model), **file_figures(stored), **built.figures}


# ---------------------------------------------------------------- reading
def stored_file(meta: dict) -> str:
    """The model file of a variant folder."""
    if meta.get("output") == Output.ONNX.value:
        return ONNX_FILE
    if meta.get("output") == Output.OPENVINO.value:
        return IR_FILE
    return meta.get("file", MODEL_FILE)


@dataclass
class Variant:
    name: str
    meta: dict
    recipe: Recipe
    spec: ArchSpec
    predict: Predict
    model: nn.Module | None = None
    runtime: str = "torch"  # what runs it: torch, onnxruntime, openvino or openvino-bf16 (vggtool.runtimes)
    settings: dict | None = None  # the runtime's settings, read back from it where it has them


def read_meta(folder: Path) -> tuple[dict, Recipe, ArchSpec]:
    folder = Path(folder)
    if not (folder / META_FILE).exists():
        raise VggtoolError(f"no variant at {folder} (missing {META_FILE}); build it with `vggtool compress`")
    meta = read_json(folder / META_FILE, "variant metadata")
    try:
        recipe, spec = recipe_from_dict(meta["recipe"]), ArchSpec.from_dict(meta["spec"])
    except (KeyError, TypeError) as e:
        raise VggtoolError(f"{folder / META_FILE} is malformed: {e}") from None
    if meta.get("output", recipe.output.value) != recipe.output.value:  # folders written before 0.2 lack "output"
        raise VggtoolError(f"{folder / META_FILE} says {meta['output']} output, but {recipe.name} produces "
                           f"{recipe.output.value}")
    return meta, recipe, spec


def verify(folder: Path, meta: dict) -> None:
    """Each stored file against the sha256 its meta.json recorded (folders before 0.3 record none)."""
    sums = meta.get("sha256", {})
    if not isinstance(sums, dict):
        raise VggtoolError(f"{Path(folder) / META_FILE} is malformed: sha256 is not a mapping")
    for name, digest in sums.items():
        path = Path(folder) / str(name)
        if Path(str(name)).name != str(name) or not path.is_file():
            raise VggtoolError(f"{path} is missing (its meta.json lists it)")
        if checkpoint.sha256(path) != digest:
            raise VggtoolError(f"{path} does not match the sha256 in its meta.json: changed or damaged since it "
                               "was built; rebuild the variant")


def load_variant(folder: Path, threads: int = 0, runtime: str | None = None) -> Variant:
    """Rebuild any variant folder as a predict function (fresh process safe; nothing pickled), in its own
    runtime or in `runtime` (an ONNX file in OpenVINO: see vggtool.runtimes)."""
    folder = Path(folder)
    meta, recipe, spec = read_meta(folder)
    name = meta.get("name", folder.name)
    runtime = runtimes.resolve(recipe.output.value, runtime, name)
    verify(folder, meta)
    if recipe.output in FILE_OUTPUTS:
        path = folder / stored_file({**meta, "output": recipe.output.value})  # folders before 0.2 lack "output"
        if not path.exists():
            raise VggtoolError(f"variant {folder.name} lacks {path.name}")
        if runtime in runtimes.OPENVINO:
            from vggtool import openvino_runtime

            predict, settings = openvino_runtime.compile_file(path, threads, runtimes.OPENVINO[runtime])
            return Variant(name, meta, recipe, spec, predict, runtime=runtime, settings=settings)
        return Variant(name, meta, recipe, spec, export.ort_predict(export.ort_session(path, threads)),
                       runtime=runtime, settings={"runtime": runtime, "threads": threads})
    state = restore(recipe, folder, meta)
    model = skeleton(for_loading(recipe, meta), spec)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        raise VggtoolError(f"{folder / stored_file(meta)} does not fit recipe {recipe.name}: "
                           f"{str(e).splitlines()[0]}") from None
    model = finalize(recipe, model)
    return Variant(name, meta, recipe, spec, torch_predict(model), model)


# ---------------------------------------------------------------- parents
def source_from_checkpoint(path: Path, trust_pickle: bool = False) -> Source:
    model, spec, _ = checkpoint.load_model(path, None, trust_pickle)
    return Source(model, spec, Path(path), [{"name": "checkpoint", "path": str(path), "sha256": checkpoint.sha256(path)}])


def source_from_variant(folder: Path) -> Source:
    """A float variant as the parent of another recipe (any recipe whose output is float)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VggtoolError(f"no variant {folder.name} in {folder.parent}: build it first (`vggtool compress --list`)")
    _, recipe, _ = read_meta(folder)
    if recipe.output is not Output.FLOAT:
        raise VggtoolError(f"variant {folder.name} is not a float model ({recipe.output.value} output); "
                           "only float variants can be a parent")
    variant = load_variant(folder)
    path = folder / stored_file(variant.meta)
    return Source(variant.model, variant.spec, path,
                  variant.meta["chain"] + [{"name": variant.name, "path": str(path), "sha256": checkpoint.sha256(path)}])
