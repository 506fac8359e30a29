"""Short display labels for variant names, from their recipes' `short` properties.

A name is read back into its recipes: a registered name or chain, or any name a
recipe's `name` property spells (a variant built with its own options, e.g.
`structured-0.95-finetuneepochs0`). A name that reads as no recipe keeps itself
as its label.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import MISSING, fields
from functools import cache
from itertools import product

from vggtool.compress.base import RECIPE_TYPES, REGISTRY, Recipe, steps
from vggtool.errors import VggtoolError


def parse_name(name: str) -> list[Recipe]:
    """The recipes a variant name stands for, one per step of a chain "a+b"."""
    try:
        return steps(name)
    except VggtoolError:
        return [_parse_step(part) for part in name.split("+")]


def display_label(name: str) -> str:
    """A variant's label for tables and plots, e.g. "structured 0.7 + int8 (ONNX Runtime), distilled": its
    steps' short labels joined by " + ", their notes (what follows a ", ") once at the end; the name itself
    where it reads as no recipe. Unique among the variants of one bench only through `display_labels`."""
    try:
        recipes = parse_name(name)
    except VggtoolError:
        return name
    cores, notes = [], []
    for recipe in recipes:
        core, *rest = _top_level_split(recipe.short)
        cores.append(core)
        notes += [n for n in rest if n not in notes]
    return " + ".join(cores) + "".join(f", {n}" for n in notes)


def display_labels(names: Iterable[str]) -> dict[str, str]:
    """Each name's label, unique among `names`: variants that would share a label get the parameters that
    tell them apart, e.g. "structured 0.5, distilled (epochs 12, lr 0.02)"; where none do, the name."""
    names = list(dict.fromkeys(names))
    labels = {n: display_label(n) for n in names}
    groups = defaultdict(list)
    for name, label in labels.items():
        groups[label].append(name)
    for label, group in groups.items():
        if len(group) > 1:
            details = _differences(group)
            for name in group:
                labels[name] = f"{label} ({details[name]})" if details.get(name) else name
    counts = defaultdict(int)
    for label in labels.values():
        counts[label] += 1
    return {n: label if counts[label] == 1 else n for n, label in labels.items()}


def _differences(names: list[str]) -> dict[str, str]:
    """For variants of the same recipe types step by step, the parameters whose values differ, in words."""
    chains = {n: parse_name(n) for n in names}
    shapes = {tuple(type(r) for r in chain) for chain in chains.values()}
    if len(shapes) != 1:
        return {}
    words = {n: [] for n in names}
    for step, cls in enumerate(next(iter(shapes))):
        for f in fields(cls):
            values = {n: getattr(chain[step], f.name) for n, chain in chains.items()}
            if len(set(map(repr, values.values()))) > 1:
                for n, v in values.items():
                    words[n].append(f"{f.name.removeprefix('finetune_').replace('_', ' ')} {_word(v)}")
    return {n: ", ".join(w) for n, w in words.items()}


def _word(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "/".join(map(_word, value)) or "none"
    return str(value)


def _top_level_split(text: str) -> list[str]:
    """`text` split at each ", " outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and text.startswith(", ", i):
            parts.append(text[start:i])
            start = i + 2
    return parts + [text[start:]]


@cache
def _parse_step(part: str) -> Recipe:
    if part in REGISTRY:
        return REGISTRY[part]
    for cls in list(RECIPE_TYPES.values()):
        for recipe in _candidates(cls, part):
            try:
                if recipe.name == part:
                    return recipe
            except Exception:  # noqa: BLE001  a type that cannot name itself (abstract, or a broken plugin) reads nothing
                break
    raise VggtoolError(f"{part!r} names no known recipe")


def _default(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def _candidates(cls: type[Recipe], part: str):
    """Recipes of type `cls` whose name might be `part`: the name's tail read as `-{field}{value}` parts, its
    head as the stem, tried with every value of the stem's fields that the name or the registry suggests."""
    known = {f.name: f for f in fields(cls)}
    defaults = {n: _default(f) for n, f in known.items()}
    if MISSING in defaults.values():
        return
    spelled = {n.replace("_", ""): n for n in known if n not in cls.stem_fields}
    tokens = set(part.split("-")) | set(re.findall(r"\d+(?:\.\d+)?", part))
    choices = [sorted({defaults[n]} | {getattr(r, n) for r in REGISTRY.values() if type(r) is cls}
                      | _typed(tokens, defaults[n]), key=repr) for n in cls.stem_fields]
    for tail in _tails(part, spelled, defaults):
        for combo in product(*choices):
            try:
                yield cls(**dict(zip(cls.stem_fields, combo)), **tail)
            except (VggtoolError, TypeError, ValueError):
                continue


def _tails(part: str, spelled: dict[str, str], defaults: dict):
    """The ways the end of `part` reads as `-{field}{value}` parts, as keyword arguments of their fields' types."""
    yield {}
    if not spelled:
        return
    option = "|".join(sorted(map(re.escape, spelled), key=len, reverse=True))
    for match in re.finditer(f"-(?=(?:{option}))", part):
        suffix = part[match.start():]
        if re.fullmatch(f"(?:-(?:{option})[^-]*)+", suffix):
            try:
                yield {spelled[key]: _value(text, defaults[spelled[key]])
                       for key, text in re.findall(f"-({option})([^-]*)", suffix)}
            except ValueError:
                continue


def _value(text: str, default):
    """`text`, as a name spells it, read as a value of `default`'s type."""
    if isinstance(default, bool):
        if text not in ("True", "False"):
            raise ValueError(text)
        return text == "True"
    if isinstance(default, tuple):
        return tuple(text.split("_"))
    return type(default)(text)


def _typed(tokens: set[str], default) -> set:
    """The tokens that read as values of `default`'s type."""
    if isinstance(default, bool):
        return {False, True}
    out = set()
    if isinstance(default, (int, float, str)):
        for token in tokens:
            try:
                out.add(type(default)(token))
            except ValueError:
                continue
    return out
