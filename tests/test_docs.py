"""`--help`, `compress --list` and the README checked against what is registered
(as sqlite-utils' test_docs does): a new command, option, recipe or Make target
that is not documented fails here."""

import re
import subprocess
from pathlib import Path

import click
import pytest

from vggtool import compress as c
from vggtool.cli import main

from .conftest import invoke

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMANDS = sorted(main.commands)


def test_main_help_lists_every_command():
    out = invoke("--help").output
    listed = re.findall(r"^  (\w+)\s", out.split("Commands:")[1], flags=re.M)
    assert sorted(listed) == COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_teaches_every_option(name):
    command = main.commands[name]
    out = invoke(name, "--help").output
    flat = " ".join(out.split())  # help text is wrapped to the terminal
    assert command.help and " ".join(command.help.split("\n")[0].split()) in flat
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"vggtool {name} {param.opts[0]} has no help text"
            assert param.opts[0] in out and " ".join(param.help.split())[:40] in flat


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_in_the_readme(name):
    assert f"`vggtool {name}" in README, f"README.md does not describe `vggtool {name}`"


def test_compress_list_shows_every_registered_variant_and_what_it_produces(monkeypatch):
    from vggtool import cli

    monkeypatch.setattr(cli.console, "width", 200)  # one row per line, as on a wide terminal
    out = invoke("compress", "--list").output
    for name in c.STACKS:
        assert any(f" {name} " in line for line in out.splitlines()), f"chain {name} missing from compress --list"
    for name, recipe in c.REGISTRY.items():
        line = next((line for line in out.splitlines() if f" {name} " in line), None)
        assert line is not None, f"{name} missing from compress --list"
        assert recipe.output.value in line and recipe.label[0][:20] in line


@pytest.mark.parametrize("kind", sorted(c.RECIPE_TYPES))
def test_every_recipe_type_explains_itself(kind):
    cls = c.RECIPE_TYPES[kind]
    # a dataclass without a docstring gets its signature as __doc__: that teaches nobody
    assert cls.__doc__ and not cls.__doc__.startswith(f"{kind}("), f"recipe {kind} has no docstring"
    recipe = cls()
    assert isinstance(recipe.output, c.Output)
    method, kind_label = recipe.label
    assert method and kind_label and recipe.name.startswith(recipe.stem)


def test_every_make_target_is_in_the_readme():
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True).stdout
    targets = re.findall(r"^  ([a-z0-9-]+)\s", out, flags=re.M)
    assert {"all", "bench", "test", "install"} <= set(targets)
    for target in targets:
        assert f"make {target}" in README, f"README.md does not describe `make {target}`"
