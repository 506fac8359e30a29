"""Command-line options made from recipe fields, so no default or help is typed twice.

A command that builds a recipe (`vggtool quantize --static`) has a flag per
mode, each a recipe type offered with `compress.offer`, and an option per
field of those types that has a help text (`compress.option`): `calib_size`
is `--calib-size`, its type, default and help read from the field. The
options are made when the command is first used: the recipes import torch,
which `vggtool --help` and `vggtool data` need not wait for.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import click

from vggtool.errors import VggtoolError
from vggtool.paths import DATA_ENV


def data_dir_option(f):
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=DATA_ENV,
        default=None,
        help=f"Folder holding cifar-100-python/ [env {DATA_ENV}; default ./data].",
    )(f)


def run_dir_option(f):
    return click.option(
        "--run-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Run directory [default: the run `vggtool train` last used].",
    )(f)


def variant_options(f):
    f = click.option("--force", is_flag=True, help="Replace a variant folder that already exists.")(f)
    f = click.option("--name", default=None, help="Variant folder name [default: derived from the recipe].")(f)
    f = click.option("--from-variant", default=None,
                     help="Start from a float variant of the run (e.g. a pruned one) instead of the baseline.")(f)
    f = click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Start from this model file instead of the run's baseline.")(f)
    f = click.option("--trust-pickle", is_flag=True, help="Allow a .pth checkpoint on torch < 2.10 (see `evaluate`).")(f)
    f = run_dir_option(f)
    return data_dir_option(f)


class FiniteFloat(click.ParamType):
    """A float option: NaN and infinities are refused like any other bad value."""

    name = "float"

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE = FiniteFloat()
TYPES = {"int": int, "float": FINITE, "str": str}
MODE = "mode_"  # the parameter name of a mode flag: mode_static


class RecipeCommand(click.Command):
    """A command whose callback gets `recipe`, built from a flag per mode in `modes`
    (none where the command has one mode, offered with flag "") and an option per field."""

    def __init__(self, *args, modes: tuple[str, ...] = ("",), **kwargs):
        self.modes, self._made, self._params = modes, None, []
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._made is None:  # one list, made once: click appends its --help option to it
            self._made = recipe_params(self.name, self.modes)
            self._params[:0] = self._made
        return self._params

    @params.setter
    def params(self, value):
        self._params = value

    def invoke(self, ctx):
        given = {p.name: ctx.params.pop(p.name) for p in self._made}
        ctx.params["recipe"] = build_recipe(self.name, self.modes, given)
        return super().invoke(ctx)


def _modes(command: str, flags: tuple[str, ...]) -> dict:
    from vggtool.compress import MODES

    return {flag: MODES[(command, flag)] for flag in flags}


def _spelling(name: str, meta) -> str:
    return "--" + meta.get("off", name.replace("_", "-"))


def _offered(mode) -> dict[str, tuple[dataclasses.Field, dict]]:
    """A mode's option fields, each with its metadata (a field that only changes a
    default, as QatQuant's finetune_epochs, keeps the help of the class it overrides)."""
    out = {}
    for f in dataclasses.fields(mode.recipe):
        if f.name in mode.preset:
            continue
        meta = next((c.__dataclass_fields__[f.name].metadata for c in mode.recipe.__mro__
                     if f.name in getattr(c, "__dataclass_fields__", {})
                     and "help" in c.__dataclass_fields__[f.name].metadata), None)
        if meta is not None:
            out[f.name] = (f, meta)
    return out


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _shown(value) -> str:
    if isinstance(value, bool) or value in ("", ()):
        return ""  # a flag's default is its absence; an empty text or list is nothing
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help(owners: dict[str, tuple], every_mode: bool) -> str:
    """The help of one option from its fields in each mode that has it: a prefix naming
    those modes unless all have it, then the help, then the defaults (per mode where they differ)."""
    by_help: dict[str, dict[str, str]] = {}
    for flag, (f, meta, _) in owners.items():
        by_help.setdefault(meta["help"], {})[flag] = _shown(_default(f))
    parts = []
    for text, defaults in by_help.items():
        prefix = "" if every_mode and len(by_help) == 1 or not any(owners) else "/".join(defaults) + ": "
        if prefix and text[1:2].islower():
            text = text[0].lower() + text[1:]
        values: dict[str, list[str]] = {}
        for flag, shown in defaults.items():
            values.setdefault(shown, []).append(flag)
        if len(values) == 1:
            shown = next(iter(values))
            tail = f" [default: {shown}]" if shown else ""
        else:
            tail = " [" + ", ".join(f"{'/'.join(flags)}: {v}" for v, flags in values.items() if v) + "]"
        parts.append(prefix + text.rstrip(".") + tail)
    return "; ".join(parts) + "."


def _fields(command: str, flags: tuple[str, ...]) -> dict[str, dict[str, tuple]]:
    """Each option field of the command's modes, the shared fine-tuning ones last (as in variant
    names): {name: {flag: (field, metadata, mode)}}."""
    from vggtool.compress.base import TUNING_FIELDS

    table: dict[str, dict[str, tuple]] = {}
    for flag, mode in _modes(command, flags).items():
        for name, (f, meta) in _offered(mode).items():
            table.setdefault(name, {})[flag] = (f, meta, mode)
    return dict(sorted(table.items(), key=lambda item: item[0] in TUNING_FIELDS))


def recipe_params(command: str, flags: tuple[str, ...]) -> list[click.Option]:
    """A flag per mode, then an option per field, each shorthand (--bits) before the fields it sets."""
    modes = _modes(command, flags)
    params = [click.Option([f"--{flag}", MODE + flag], is_flag=True, default=False, help=mode.help)
              for flag, mode in modes.items() if flag]
    table = _fields(command, flags)
    shorthands: dict[str, list[str]] = {}
    for name, owners in table.items():
        meta = next(iter(owners.values()))[1]
        if "shorthand" in meta:
            shorthands.setdefault(meta["shorthand"], []).append(_spelling(name, meta))
    for name, owners in table.items():
        f, meta, _ = next(iter(owners.values()))
        every = len(owners) == len(modes)
        kind = _kind(f)
        short = meta.get("shorthand")
        if short in shorthands:
            prefix = "" if every else "/".join(owners) + ": "
            params.append(click.Option([f"--{short}", short], type=TYPES[kind], default=None,
                                       help=f"{prefix}Sets {' and '.join(shorthands.pop(short))} at once."))
        if kind == "bool":
            how = {"is_flag": True, "flag_value": "off" not in meta}
        elif kind == "tuple":
            how = {"multiple": True}
        else:
            how = {"type": click.Choice(meta["choices"]) if "choices" in meta else TYPES[kind]}
        params.append(click.Option([_spelling(name, meta), name], default=None, help=_help(owners, every), **how))
    return params


def _kind(f: dataclasses.Field) -> str:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    return "tuple" if kind.startswith("tuple") else kind


def build_recipe(command: str, flags: tuple[str, ...], values: dict):
    """The recipe the options given stand for. An option another mode owns is a one-line
    error naming the modes that own it, unless the chosen recipe always has that value
    (`--static --dtype int8`: StaticQuant.dtype is "int8")."""
    modes = _modes(command, flags)
    chosen = [flag for flag in modes if not flag or values.pop(MODE + flag, False)]
    if len(chosen) != 1:
        names = [f"--{flag}" for flag in modes]
        listed = names[0] if len(names) == 1 else f"exactly one of {', '.join(names[:-1])} or {names[-1]}"
        raise VggtoolError(f"choose {listed}")
    flag = chosen[0]
    mode = modes[flag]
    table = _fields(command, flags)
    given = {k: v for k, v in values.items() if v is not None and v != ()}
    for short in [k for k in given if k not in table]:  # a shorthand: sets every field naming it
        value = given.pop(short)
        for name, owners in table.items():
            meta = next(iter(owners.values()))[1]
            if meta.get("shorthand") != short:
                continue
            if given.get(name, value) != value:
                raise VggtoolError(f"--{short} {value} contradicts {_spelling(name, meta)} {given[name]}")
            given[name] = value
    own = _offered(mode)
    for name in [k for k in given if k not in own]:
        meta = next(iter(table[name].values()))[1]
        owners = " or ".join(f"--{m}" for m in table[name])
        fixed = inspect.getattr_static(mode.recipe, name, None)
        if isinstance(fixed, (bool, int, float, str)) and fixed == given[name]:
            del given[name]  # what this recipe always does
        elif isinstance(fixed, (int, float, str)) and not isinstance(fixed, bool):
            raise VggtoolError(f"{_spelling(name, meta)} {given[name]} applies to {owners} only: --{flag} is {fixed}")
        else:
            raise VggtoolError(f"{_spelling(name, meta)} applies to {owners} only")
    return mode.recipe(**mode.preset, **given)


class ConfigCommand(click.Command):
    """A command with an option per field of a config dataclass that has help metadata (`vggtool train`:
    TrainConfig), its help showing each profile's default; made on first use, as RecipeCommand's."""

    def __init__(self, *args, config: str = "", **kwargs):
        self.config, self._made, self._params = config, None, []
        super().__init__(*args, **kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._made is None:
            import importlib

            module, _, name = self.config.rpartition(".")
            found = importlib.import_module(module)
            self._made = config_params(getattr(found, name), found.PROFILES)
            self._params[:0] = self._made
        return self._params

    @params.setter
    def params(self, value):
        self._params = value


def config_params(cls, profiles: dict[str, dict]) -> list[click.Option]:
    """An option per field of `cls` with help metadata, default None (given or not); the help ends with
    the default, or each profile's where they differ ("[full: 100, cpu: 30, quick: 15]")."""
    params = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        kind = _kind(f)
        if kind == "bool":
            how, tail = {"is_flag": True, "flag_value": "off" not in meta}, ""
        elif kind == "tuple":  # repeatable, its default shown as the values joined
            how = {"multiple": True, "metavar": meta.get("metavar"),
                   **({"type": click.Choice(meta["choices"])} if "choices" in meta else {})}
            tail = f" [{'|'.join(meta['choices'])}; default: {', '.join(map(str, _default(f)))}]"
        else:
            how = {"type": click.Choice(meta["choices"]) if "choices" in meta else TYPES[kind]}
            values: dict[str, list[str]] = {}
            for profile, chosen in profiles.items():
                values.setdefault(_shown(chosen.get(f.name, _default(f))), []).append(profile)
            tail = (f" [default: {next(iter(values))}]" if len(values) == 1 else
                    " [" + ", ".join(f"{'/'.join(names)}: {v}" for v, names in values.items()) + "]")
        params.append(click.Option([_spelling(f.name, meta), f.name], default=None,
                                   help=meta["help"].rstrip(".") + tail + ".", **how))
    return params
