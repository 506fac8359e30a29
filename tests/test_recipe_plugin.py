"""A recipe defined in this file and nowhere else is built by `compress --variant`,
reloaded in a fresh process, benched (in fresh timing processes) and rendered: no CLI, bench, report or loader
edit is needed. The fresh process finds it the way an installed plugin is found,
through the `vggtool.recipes` entry-point group."""

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vggtool import compress as c
from vggtool.compress import Built, Output, Recipe, apply, register

from .conftest import invoke

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ScaleHead(Recipe):
    """Scales the last Linear layer by `factor` (a stand-in for a new compression family)."""

    output = Output.FLOAT

    factor: float = 0.5

    @property
    def stem(self) -> str:
        return "throwaway-scalehead"

    @property
    def label(self):
        return "Throwaway scaled head", "float32"


@apply.register
def _(recipe: ScaleHead, source, ctx, workdir):
    model = copy.deepcopy(source.model)
    with torch.no_grad():
        model.classifier[6].weight.mul_(recipe.factor)
        model.classifier[6].bias.mul_(recipe.factor)
    return Built(model, source.spec, {"factor": recipe.factor})


register(ScaleHead())  # in no set: `vggtool compress` without --variant still builds the report's eight


@pytest.fixture
def registered():
    return ScaleHead()


@pytest.fixture
def plugin_path(tmp_path) -> str:
    """A PYTHONPATH on which this file is an installed `vggtool.recipes` plugin."""
    dist = tmp_path / "site" / "throwaway_recipe-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway-recipe\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[vggtool.recipes]\nthrowaway = {__name__}\n")
    return os.pathsep.join([str(tmp_path / "site"), str(ROOT)])


def fresh_logits(folder: Path, pythonpath: str, data_dir: Path) -> torch.Tensor:
    code = ("import json, torch; from vggtool.compress import load_variant; "
            "from vggtool.data import Split, batches, load_split; "
            f"x = next(batches(Split(*load_split({str(data_dir)!r}, 'test')), 32))[0]; "
            f"print(json.dumps(torch.as_tensor(load_variant({str(folder)!r}).predict(x)).tolist()))")
    env = {**os.environ, "PYTHONPATH": pythonpath}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
    assert out.returncode == 0, out.stderr
    return torch.tensor(json.loads(out.stdout))


def test_a_recipe_from_one_file_is_built_reloaded_benched_and_rendered(registered, plugin_path, own_run, home,
                                                                       tmp_path):
    name = registered.name
    invoke("compress", "--run-dir", str(own_run), "--variant", "baseline")
    # a fresh process finds the recipe and its name through the entry point alone
    built = subprocess.run([sys.executable, "-m", "vggtool", "compress", "--run-dir", str(own_run), "--variant", name],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": plugin_path}, cwd="/")
    assert built.returncode == 0, built.stderr
    folder = own_run / "variants" / name
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["recipe"] == {"type": "ScaleHead", "params": {"factor": 0.5}} and meta["output"] == "float"
    assert meta["figures"]["factor"] == 0.5

    # a fresh process knows the recipe only through the entry point, and gets the same logits
    data_dir = home / "data"
    fresh = fresh_logits(folder, plugin_path, data_dir)
    base = fresh_logits(own_run / "variants" / "baseline", plugin_path, data_dir)
    assert torch.allclose(fresh, 0.5 * base, atol=1e-5) and not torch.allclose(fresh, base)
    from vggtool.data import Split, batches, load_split

    x = next(batches(Split(*load_split(data_dir, "test")), 32))[0]
    assert torch.equal(torch.as_tensor(c.load_variant(folder).predict(x)), fresh)

    # it is a float model, so it can be a parent of any recipe
    invoke("quantize", "--dynamic", "--from-variant", name, "--run-dir", str(own_run))
    chain = json.loads((own_run / "variants" / f"{name}+dynamic-int8" / "meta.json").read_text())["chain"]
    assert [step["name"] for step in chain] == ["checkpoint", name]

    # bench, in a fresh process that knows the recipe only through the entry point
    out = subprocess.run([sys.executable, "-m", "vggtool", "bench", "--run-dir", str(own_run), "--variant", "baseline",
                          "--variant", name, "--quick", "--rounds", "1", "--time-budget", "0", "--min-time", "0.05",
                          "--loads", "1", "--threads", "1", "--results-dir", str(tmp_path / "results")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": plugin_path})
    assert out.returncode == 0, out.stderr
    rows = {r["variant"]: r for r in json.loads((tmp_path / "results" / "results.json").read_text())["rows"]}
    assert rows[name]["status"] == "ok" and rows[name]["method"] == "Throwaway scaled head"
    # scaling logits changes no ranking: the same errors as the baseline
    assert (rows[name]["top1_err"], rows[name]["top5_err"]) == (rows["baseline"]["top1_err"], rows["baseline"]["top5_err"])
    assert "Throwaway scaled head" in (tmp_path / "results" / "REPORT.md").read_text()

    out = subprocess.run([sys.executable, "-m", "vggtool", "evaluate", "--run-dir", str(own_run), "--variant", name,
                          "--json"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": plugin_path})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["top1_err"] == rows[name]["top1_err"]


def test_without_the_plugin_a_fresh_process_says_which_recipe_is_missing(registered, own_run, home):
    invoke("compress", "--run-dir", str(own_run), "--variant", registered.name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "vggtool", "evaluate", "--run-dir", str(own_run), "--variant",
                          registered.name], capture_output=True, text=True, env=env, cwd=str(home))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "ScaleHead" in out.stderr and "no installed recipe type" in out.stderr
