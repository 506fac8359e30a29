"""Options made from recipe fields: the help follows the recipe's own default and help,
an option another mode owns is a one-line error, and `vggtool --help` imports no torch."""

import dataclasses
import subprocess
import sys
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from vggtool import compress as c
from vggtool.cli import main
from vggtool.compress.base import FineTuning
from vggtool.compress.quant_torch import StaticQuant
from vggtool.errors import VggtoolError
from vggtool.options import RecipeCommand, build_recipe

from .conftest import invoke


def fresh_help(command: str) -> str:
    """`vggtool COMMAND --help` of a command made afresh (each makes its options once, on first use)."""
    cmd = main.commands[command]

    @click.group()
    def cli():
        pass

    cli.add_command(RecipeCommand(name=command, modes=cmd.modes, callback=cmd.callback))
    return " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())


def test_help_follows_a_recipe_default(monkeypatch):
    calib_size = next(f for f in dataclasses.fields(StaticQuant) if f.name == "calib_size")
    said = "calibration (never test images) [default: 1000]"
    assert said in " ".join(invoke("quantize", "--help").output.split()) and said in fresh_help("quantize")
    monkeypatch.setattr(calib_size, "default", 4321)
    assert "calibration (never test images) [static: 4321, onnx/pt2e/nncf: 1000]" in fresh_help("quantize")


@pytest.fixture
def group(monkeypatch):
    """A test command with two modes: a stand-in recipe and a subclass that changes one default."""
    monkeypatch.setattr(c.base, "RECIPE_TYPES", dict(c.base.RECIPE_TYPES))  # the stand-ins register nowhere else

    @dataclass(frozen=True)
    class Throwaway(c.Recipe):
        """A stand-in recipe offered as a test command's mode."""

        size: int = c.option(7, "How big it is.")
        shape: str = c.option("round", "Its shape.", choices=("round", "square"))
        sharp: bool = c.option(True, "Blunt instead of sharp.", off="blunt")

    @dataclass(frozen=True)
    class Bigger(Throwaway):
        """The same with another default and no restated help."""

        size: int = 70

    monkeypatch.setitem(c.MODES, ("throw", "small"), c.base.Mode(Throwaway, "Small."))
    monkeypatch.setitem(c.MODES, ("throw", "big"), c.base.Mode(Bigger, "Big."))
    built = {}

    @click.group()
    def cli():
        pass

    @cli.command(name="throw", cls=RecipeCommand, modes=("small", "big"))
    def throw(recipe):
        built["recipe"] = recipe

    return cli, built, Throwaway, Bigger


def test_a_new_recipes_fields_are_options_with_their_defaults(group):
    cli, built, Throwaway, Bigger = group

    out = " ".join(CliRunner().invoke(cli, ["throw", "--help"]).output.split())
    assert "--size INTEGER How big it is [small: 7, big: 70]." in out
    assert "--shape [round|square] Its shape [default: round]." in out and "--blunt Blunt instead of sharp." in out
    result = CliRunner().invoke(cli, ["throw", "--big", "--shape", "square", "--blunt"])
    assert result.exit_code == 0 and built["recipe"] == Bigger(size=70, shape="square", sharp=False)
    CliRunner().invoke(cli, ["throw", "--small"])
    assert built["recipe"] == Throwaway()


@pytest.mark.parametrize("values,fragment", [
    ({"mode_static": True, "calibration": "entropy"}, "--calibration applies to --onnx only"),
    ({"mode_static": True, "dtype": "float16"}, "--dtype float16 applies to --dynamic only: --static is int8"),
    ({"mode_static": True, "mode_qat": True}, "choose exactly one of --static, --dynamic, --qat, --onnx, --pt2e or --nncf"),
    ({"mode_onnx": True, "per_channel": False, "finetune_epochs": 2}, "--finetune-epochs applies to --qat only"),
])
def test_an_option_another_mode_owns_is_refused(values, fragment):
    with pytest.raises(VggtoolError, match=fragment):
        build_recipe("quantize", main.commands["quantize"].modes, dict(values))


def test_what_a_recipe_always_does_may_be_said():
    modes = main.commands["quantize"].modes
    assert build_recipe("quantize", modes, {"mode_static": True, "dtype": "int8"}) == StaticQuant()
    assert build_recipe("quantize", modes, {"mode_qat": True, "fuse": True}) == c.RECIPE_TYPES["QatQuant"]()
    assert build_recipe("quantize", modes, {"mode_onnx": True, "per_channel": False, "exclude": ()}).per_channel is False
    prune = main.commands["prune"].modes
    assert build_recipe("prune", prune, {"mode_local": True, "amount": 0.3}) == c.RECIPE_TYPES["L1Prune"]("local", 0.3)


def test_bits_sets_both_codebooks_and_refuses_a_contradiction():
    recipe = build_recipe("cluster", ("",), {"bits": 4, "linear_bits": 4})
    assert (recipe.conv_bits, recipe.linear_bits) == (4, 4)
    with pytest.raises(VggtoolError, match="--bits 4 contradicts --linear-bits 5"):
        build_recipe("cluster", ("",), {"bits": 4, "linear_bits": 5})


@pytest.mark.parametrize("name", [n for n, cmd in main.commands.items() if isinstance(cmd, RecipeCommand)])
def test_every_field_of_an_offered_recipe_is_an_option_or_set_by_its_mode(name):
    command = main.commands[name]
    options = {p.name for p in command.params}
    tuning = {f.name for f in dataclasses.fields(FineTuning)}
    for flag in command.modes:
        mode = c.MODES[(name, flag)]
        for f in dataclasses.fields(mode.recipe):
            helped = any("help" in k.__dataclass_fields__[f.name].metadata for k in mode.recipe.__mro__
                         if f.name in getattr(k, "__dataclass_fields__", {}))
            assert f.name in mode.preset or (helped and f.name in options) or (not helped and f.name not in tuning), \
                (name, flag, f.name)


def test_help_of_the_main_command_imports_no_torch():
    code = ("import sys\nfrom vggtool.cli import main\ntry:\n    main(['--help'], standalone_mode=False)\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


def test_train_and_bench_help_follow_their_dataclass_and_profile_defaults():
    import dataclasses

    from vggtool.config import option
    from vggtool.options import config_params

    @dataclasses.dataclass(frozen=True)
    class Settings:
        epochs: int = option(7, "Epochs.")
        rate: float = option(0.5, "Rate.")
        kind: str = option("a", "Kind.", choices=("a", "b"))
        augment: bool = option(True, "No augmentation.", off="no-augment")
        hidden: int = 3  # no help: no option

    params = {p.name: p for p in config_params(Settings, {"full": {}, "quick": {"epochs": 2}})}
    assert set(params) == {"epochs", "rate", "kind", "augment"}
    assert params["epochs"].help == "Epochs [full: 7, quick: 2]." and params["rate"].help == "Rate [default: 0.5]."
    assert params["augment"].opts == ["--no-augment"] and params["augment"].flag_value is False
    assert params["kind"].type.choices == ("a", "b") and all(p.default is None for p in params.values())
    # the real commands: each profile's value shown, read off the dataclasses
    train = invoke("train", "--help").output
    assert "[full: 100, quick: 15, cpu: 30]" in " ".join(train.split())
    bench = invoke("bench", "--help").output
    assert "[default: 600, quick: 300]" in " ".join(bench.split())
