"""Compression recipes: typed, registered where they are defined, applied by one
function, saved as reloadable variant folders that record their parent chain.

Every module of this package is imported here, so a family module (its recipe
dataclasses and their `apply`/`skeleton` handlers) is all a new in-tree recipe
needs; recipes from other packages register through the `vggtool.recipes`
entry-point group.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from importlib.metadata import entry_points

from vggtool.compress.artifact import (
    META_FILE,
    MODEL_FILE,
    ONNX_FILE,
    Variant,
    build_variant,
    load_variant,
    model_figures,
    read_meta,
    source_from_checkpoint,
    source_from_variant,
    sparsity,
    state_dict_mb,
    stored_file,
    versions,
)
from vggtool.compress.base import (
    MODES,
    RECIPE_TYPES,
    REGISTRY,
    SETS,
    STACKS,
    Built,
    Context,
    Output,
    Recipe,
    Source,
    Tolerance,
    apply,
    lookup,
    offer,
    option,
    recipe_from_dict,
    register,
    register_stack,
    restore,
    selection,
    sets_of,
    skeleton,
    steps,
)
from vggtool.compress.labels import display_label, display_labels, parse_name
from vggtool.compress.run import build, compress, run_context

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
for _plugin in entry_points(group="vggtool.recipes"):
    try:
        _plugin.load()
    except Exception as _e:  # a broken plugin must not take the built-in recipes down with it
        warnings.warn(f"recipe plugin {_plugin.name} ({_plugin.value}) failed to load: {_e}", stacklevel=1)

__all__ = [
    "Built", "Context", "META_FILE", "MODES", "MODEL_FILE", "ONNX_FILE", "Output", "RECIPE_TYPES", "REGISTRY",
    "Recipe", "SETS", "STACKS", "Source", "Tolerance", "Variant", "apply", "build", "build_variant",
    "compress", "display_label", "display_labels", "load_variant", "lookup", "model_figures", "offer", "option",
    "parse_name", "selection", "sets_of",
    "read_meta", "recipe_from_dict", "register",
    "register_stack", "restore", "run_context", "skeleton", "source_from_checkpoint", "source_from_variant", "sparsity",
    "state_dict_mb", "stored_file", "steps", "versions",
]
