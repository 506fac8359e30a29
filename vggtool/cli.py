"""The `vggtool` command: a thin shell over the library, one subcommand per phase."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import click
from rich.console import Console

from vggtool import __version__
from vggtool.cli_search import search
from vggtool.errors import VggtoolError
from vggtool.options import ConfigCommand, RecipeCommand, data_dir_option, run_dir_option, variant_options
from vggtool.paths import default_data_dir
from vggtool.runtimes import RUNTIMES

# Logs and pipes get a wide console: rich's 80-column default would truncate the tables.
console = Console(width=None if sys.stdout.isatty() else 100)


class Group(click.Group):
    """Turns library errors into one line and a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VggtoolError as e:
            raise click.ClickException(" ".join(str(e).split())) from None
        except click.UsageError as e:  # a bad option value of a subcommand: one line too, naming the fix
            hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
            raise click.UsageError(" ".join(e.format_message().split()) + hint) from None
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was left; a rerun continues (train: --resume)", err=True)
            ctx.exit(130)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vggtool")
def main():
    """Reproduce and extend a VGG19-BN / CIFAR-100 compression study.

    The phases, in order: data, train, evaluate, compress (or quantize, prune,
    export one by one), bench, report. Each works on the current run by
    default, so `vggtool data --synthetic && vggtool train --profile quick &&
    vggtool evaluate` runs end to end offline.
    """
    warnings.showwarning = _one_line_warning


@main.command()
@data_dir_option
@click.option("--synthetic", is_flag=True, help="Write a small learnable stand-in in the official format (offline).")
@click.option("--train-per-class", default=150, show_default=True, help="Synthetic: training images per class.")
@click.option("--test-per-class", default=20, show_default=True, help="Synthetic: test images per class.")
@click.option("--classes", default=100, show_default=True, help="Synthetic: number of classes.")
@click.option("--no-download", is_flag=True, help="Only check an existing folder; never go online.")
def data(data_dir, synthetic, train_per_class, test_per_class, classes, no_download):
    """Get CIFAR-100 (official archive, md5-verified) or check an extracted copy.

    An extracted cifar-100-python/ whose checksums differ from the official
    archive is accepted with a warning. Examples:

    \b
      vggtool data                               # download into ./data
      vggtool data --data-dir ../shared/data     # use an extracted copy
      vggtool data --synthetic                   # offline stand-in
    """
    from vggtool import data as d

    data_dir = data_dir or default_data_dir()
    if synthetic:
        folder = d.write_synthetic(data_dir, train_per_class, test_per_class, classes)
        console.print(f"synthetic data set written to {folder} "
                      f"({classes} classes, {train_per_class}+{test_per_class} images per class)")
        return
    report = d.fetch(data_dir, download=not no_download)
    state = "verified against the official md5 sums" if report.verified else (
        "checksums differ from the official archive (accepted)")
    kind = "synthetic stand-in" if report.synthetic else "CIFAR-100"
    console.print(f"{kind} ready in {report.path}: {state}")


@main.command(cls=ConfigCommand, config="vggtool.config.TrainConfig")
@data_dir_option
@run_dir_option
@click.option("--profile", default="full", show_default=True,
              help="full = the report's recipe (a GPU); cpu = VGG19-BN sized for a bf16 CPU; quick = minutes.")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its last checkpoint.")
def train(data_dir, run_dir, profile, resume, **overrides):
    """Train a VGG-BN on CIFAR-100; keep the best epoch on the validation split.

    Defaults are the report's recipe (--profile full; each option shows every
    profile's value). Writes config.json, metrics.jsonl, last.safetensors and best.safetensors
    to the run directory (default runs/<profile>).

    \b
    Several processes (gloo on CPU, nccl on GPUs), only the first writes:
      torchrun --nproc_per_node 2 -m vggtool train --profile quick
      torchrun --nnodes 2 --node_rank 0 --rdzv_endpoint HOST:29500 --nproc_per_node 8 -m vggtool train
    """
    from vggtool import config as c
    from vggtool.console import TrainDisplay
    from vggtool.data import load_splits
    from vggtool.distributed import check_launch
    from vggtool.paths import mark_latest, runs_dir
    from vggtool.runs import Run
    from vggtool.train import pick_device, preflight, saved_config
    from vggtool.train import train as run_training

    data_dir = data_dir or default_data_dir()
    run_dir = run_dir or runs_dir() / profile
    if resume:
        cfg = c.resume(saved_config(run_dir), **overrides)
    else:
        cfg = c.resolve(profile, data_dir=str(data_dir), **overrides)
    world = check_launch(preflight(cfg))
    main_process, processes = world.main, world.size  # under torchrun only the first process talks
    say = console.print if main_process else (lambda *a, **k: None)
    splits = load_splits(data_dir, cfg.val_size, cfg.seed, cfg.train_subset)
    say(f"training {cfg.arch} (width {cfg.width}) for {cfg.epochs} epochs on {len(splits.train)} images"
        f"{' (synthetic)' if splits.synthetic else ''}" + (f" in {processes} processes" if processes > 1 else "")
        + f" -> {run_dir}")
    hint = None
    if cfg.profile == "full" and pick_device(cfg.device).type == "cpu":
        hint = ("the full recipe belongs on a GPU; `--profile cpu` trains VGG19-BN in 30 epochs (bf16 where the CPU "
                "has it), `--profile quick` a small VGG in minutes")
    with TrainDisplay(console, hint) as display:
        result = run_training(cfg, splits, run_dir, resume=resume, observer=display if main_process else None)
    if not main_process:
        return
    mark_latest(run_dir)
    if result.best_val is not None:
        say(f"best epoch {result.best_epoch + 1}: validation top-1 error {result.best_val.top1_err:.4f}")
    say(f"baseline: {Run(run_dir).baseline}")


@main.command()
@data_dir_option
@run_dir_option
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A model file instead of the run's baseline (.safetensors, or .pth with --trust-pickle).")
@click.option("--variant", default=None, help="A compressed variant of the run (see `vggtool compress --list`).")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="test: the official test images; val: the run's held-out validation images.")
@click.option("--batch-size", type=int, default=500, show_default=True, help="Images per forward pass (speed only).")
@click.option("--trust-pickle", is_flag=True,
              help="Read a .pth on torch < 2.10, whose unpickler can run code even with weights_only=True.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None,
              help="Run an ONNX variant in this runtime [default: the variant's own].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def evaluate(data_dir, run_dir, checkpoint, variant, split, batch_size, trust_pickle, runtime, as_json):
    """Top-1 and top-5 error of the baseline, a variant or any checkpoint."""
    from vggtool.console import table
    from vggtool.evaluate import evaluate as run_eval
    from vggtool.targets import evaluation_target

    if batch_size <= 0:
        raise VggtoolError("batch-size must be positive")
    target = evaluation_target(run_dir, checkpoint, variant, trust_pickle, runtime)
    data_dir = data_dir or default_data_dir()
    result = run_eval(target.predict, target.batches(data_dir, split, batch_size))
    row = {"model": target.name, "split": split, **result.to_dict()}
    if as_json:
        click.echo(json.dumps(row))
        return
    console.print(table(f"evaluation on {split}", ["model", "images", "top-1 err", "top-5 err"],
                        [[target.name, result.images, f"{result.top1_err:.4f}", f"{result.top5_err:.4f}"]],
                        [False, True, True, True]))


def _build(recipe, data_dir, run_dir, checkpoint, from_variant, name, force, trust_pickle):
    from vggtool.compress import build
    from vggtool.console import tuning_display
    from vggtool.runs import Run

    run = Run.open(run_dir)
    with console.status(f"building {name or recipe.name} ...") as status:
        metas = build(run, recipe, data_dir or default_data_dir(), name, checkpoint, from_variant, force, trust_pickle,
                      tuning_display(console, status))
    _print_variants(run, metas)


def _print_variants(run, metas):
    from vggtool.console import table
    from vggtool.report import variant_figure_rows

    if metas:  # nothing built (all kept): no empty table
        console.print(table(f"variants in {run.variants_dir}", *variant_figure_rows(metas)))


@main.command(cls=RecipeCommand, modes=("static", "dynamic", "qat", "onnx", "pt2e", "nncf"))
@variant_options
def quantize(recipe, **common):
    """Quantization: static int8 (the report's), dynamic, quantization-aware
    training, ONNX Runtime int8, PyTorch 2 export, or NNCF int8 for OpenVINO.

    \b
      vggtool quantize --static --fuse                # the report's best variant
      vggtool quantize --dynamic --dtype float16
      vggtool quantize --qat --finetune-epochs 3 --distill
      vggtool quantize --onnx --calibration entropy --sensitivity-images 500
      vggtool quantize --nncf --max-drop 0.005
      vggtool quantize --static --fuse --from-variant structured-0.5-kd
    """
    _build(recipe, **common)


@main.command(name="prune", cls=RecipeCommand, modes=("global", "local", "structured"))
@variant_options
def prune_cmd(recipe, **common):
    """Pruning: L1 unstructured (zeros, same size, as the report) or structured
    (filters removed: really smaller and faster).

    \b
      vggtool prune --global --amount 0.6
      vggtool prune --structured --amount 0.5 --finetune-epochs 5 --distill
    """
    _build(recipe, **common)


@main.command(name="cluster", cls=RecipeCommand)
@variant_options
def cluster_cmd(recipe, **common):
    """Deep Compression weight sharing: per-layer k-means codebooks (a pruned
    parent's zeros stay zero), stored Huffman-coded; loads as a dense float model.

    \b
      vggtool cluster --from-variant prune-global-0.9-linearamount0.97-finetuneepochs5 --finetune-epochs 3
      vggtool compress --set deep-compression
    """
    _build(recipe, **common)


@main.command(name="export", cls=RecipeCommand, modes=("onnx", "openvino"))
@variant_options
def export_cmd(recipe, **common):
    """ONNX or OpenVINO IR (fp32) export with a dynamic batch axis, with a parity check against torch."""
    _build(recipe, **common)


@main.command(name="compress")
@click.option("--variant", "names", multiple=True,
              help="Build these registered variants (repeatable; A+B chains B onto A) [default: --set report].")
@click.option("--set", "set_names", multiple=True,
              help="Build every variant of a named set (repeatable; `--list` shows the sets).")
@click.option("--list", "list_", is_flag=True, help="List the registered variants, chains and sets, and exit.")
@click.option("--force", is_flag=True,
              help="Rebuild variants that already exist (not the parents a chain reuses); without it they are kept.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Start from this model file instead of the run's baseline.")
@click.option("--trust-pickle", is_flag=True, help="Allow a .pth checkpoint on torch < 2.10 (see `evaluate`).")
@data_dir_option
@run_dir_option
def compress_cmd(names, set_names, list_, force, checkpoint, trust_pickle, data_dir, run_dir):
    """Build registered variants by name or by set; by default the report's
    eight (`--list` shows every set's members).

    \b
      vggtool compress                                   # the report's eight
      vggtool compress --set beyond                      # structured pruning, stacked with int8
      vggtool compress --set deep-compression            # prune, share weights, Huffman-code
      vggtool compress --variant structured-0.5-kd+static-int8-fused
    """
    from vggtool.compress import REGISTRY, STACKS, compress, selection, sets_of
    from vggtool.console import table, tuning_display
    from vggtool.runs import Run

    if list_:
        rows = [[n, r.output.value, *r.label, ", ".join(sets_of(n))] for n, r in REGISTRY.items()]
        console.print(table("registered variants", ["name", "produces", "method", "type", "sets"], rows))
        chains = [[n, REGISTRY[parts[-1]].output.value, ", ".join(sets_of(n))] for n, parts in STACKS.items()]
        console.print(table("registered chains (each step built on the one before, each its own variant)",
                            ["name", "produces", "sets"], chains))
        return
    wanted = selection(names, set_names)
    run = Run.open(run_dir)
    with console.status("building variants ...") as status:
        def done(name, meta):
            if meta is None or "unavailable" in meta:
                console.print(f"skipped {name}: {meta['unavailable']}" if meta else f"kept {name}: built before")
                return
            status.update(f"built {name}; building the rest ...")
            console.print(f"built {name}: {meta['figures']['size_mb']:.2f} MB")

        metas = compress(run, wanted, data_dir or default_data_dir(), checkpoint, force, trust_pickle, done,
                         tuning_display(console, status), skip_unavailable=bool(set_names))
    _print_variants(run, metas)


@main.command(name="bench", cls=ConfigCommand, config="vggtool.bench.settings.BenchSettings")
@data_dir_option
@run_dir_option
@click.option("--variant", "names", multiple=True, help="Measure these (repeatable; search: what search chose) [all].")
@click.option("--set", "set_names", multiple=True, help="And every variant of a named set (repeatable).")
@click.option("--quick", is_flag=True, help="Minutes on 2 cores: the quick values shown.")
@click.option("--cpus", default=None, help="Pin the process to these CPUs, e.g. 0-1.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where results and REPORT.md go [<run>/results].")
def bench_cmd(data_dir, run_dir, names, set_names, quick, cpus, results_dir, **options):
    """Measure every variant, side by side: error, ms/image at the batch size and at 1,
    speed-up over the baseline (95% interval), size (docs/bench.md).

    \b
      vggtool bench --quick                  # minutes
      vggtool bench --cpus 0-1 --threads 2   # the study's figures
    """
    from vggtool.bench.run import bench_run
    from vggtool.bench.settings import BenchSettings, parse_cpus
    from vggtool.console import BenchDisplay
    from vggtool.report import check_writable, console_table, publish
    from vggtool.runs import Run

    settings = BenchSettings.chosen(quick, cpus=parse_cpus(cpus), **options)
    run = Run.open(run_dir)
    folder = results_dir or run.results_dir
    check_writable(folder)  # before minutes of measuring, not after
    size = {"batch_size": settings.batch_size}
    with BenchDisplay(console, lambda rows: console_table({"settings": size, "rows": rows})) as shown:
        results = bench_run(run, data_dir or default_data_dir(), names, settings, shown.on_progress, shown.on_row,
                            set_names)
    written = publish(results, folder)
    console.print(console_table(results))
    console.print("wrote " + ", ".join(str(p) for p in written))


@main.command(name="report")
@run_dir_option
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding results.json [default: <run>/results].")
@click.option("--copy-to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also copy REPORT.md, results and plots here (make report: results/).")
def report_cmd(run_dir, results_dir, copy_to):
    """Re-render REPORT.md, the console table and the plots from results.json, without measuring."""
    from vggtool.report import console_table, load_results, render_all
    from vggtool.runs import Run

    run = Run.open(run_dir) if run_dir is not None or results_dir is None else None  # --results-dir alone: no run
    folder = results_dir or run.results_dir
    results = load_results(folder)
    written = render_all(results, folder, copy_to, run and run.path / "search")
    console.print(console_table(results))
    console.print("wrote " + ", ".join(str(p) for p in written) + (f"; copied to {copy_to}" if copy_to else ""))


@main.command(name="compare")
@click.argument("first", type=click.Path(file_okay=False, path_type=Path))
@click.argument("second", type=click.Path(file_okay=False, path_type=Path))
@click.option("--write", "write_to", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the comparison as markdown to this file.")
def compare_cmd(first, second, write_to):
    """Two benches' speed-ups side by side, and the largest difference between them.

    FIRST and SECOND are folders holding results.json (for example two
    `vggtool bench --results-dir` runs of the same run, one after the other):
    this machine's run-to-run noise, or whether a change really moved a figure.

      vggtool bench --quick --results-dir runs/quick/bench-a
      vggtool bench --quick --results-dir runs/quick/bench-b
      vggtool compare runs/quick/bench-a runs/quick/bench-b
    """
    from vggtool.report import compare, comparison_lines, comparison_table, load_results, write_comparison

    cmp = compare(load_results(first), load_results(second))
    if write_to:  # before anything is printed: a failed write is the only line shown
        write_comparison(cmp, (str(first), str(second)), write_to)
    console.print(comparison_table(cmp))
    for line in comparison_lines(cmp):
        console.print(line)
    if write_to:
        console.print(f"wrote {write_to}")


@main.command(name="import")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="New run directory to hold the converted baseline.")
@click.option("--trust-pickle", is_flag=True,
              help="Read a .pth on torch < 2.10, whose unpickler can run code even with weights_only=True.")
def import_(source, run_dir, trust_pickle):
    """Convert a checkpoint of the report's layout (e.g. its published .pth) to a run's baseline."""
    from vggtool.paths import mark_latest
    from vggtool.runs import import_checkpoint

    dest = import_checkpoint(source, run_dir, trust_pickle)
    mark_latest(run_dir)
    console.print(f"imported {source} -> {dest}")

main.add_command(search)  # a command of its own module

if __name__ == "__main__":
    main(prog_name="vggtool", args=sys.argv[1:])
