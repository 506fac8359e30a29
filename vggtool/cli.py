"""The `vggtool` command: a thin shell over the library, one subcommand per phase."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import warnings
from pathlib import Path

import click
from rich.console import Console

from vggtool import __version__
from vggtool.bench.settings import BenchSettings, parse_cpus
from vggtool.errors import VggtoolError
from vggtool.paths import DATA_ENV, default_data_dir


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
            click.echo("interrupted: nothing half-written was left; `--resume` continues a training run", err=True)
            ctx.exit(130)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


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


@main.command()
@data_dir_option
@run_dir_option
@click.option("--profile", default="full", show_default=True,
              help="full = the report's recipe (a GPU); cpu = VGG19-BN in 30 epochs for a bf16 CPU; quick = minutes.")
@click.option("--arch", default=None, help="vgg11_bn, vgg13_bn, vgg16_bn or vgg19_bn.")
@click.option("--width", type=FINITE, default=None, help="Channel width multiplier (1.0 = the report's).")
@click.option("--dropout", type=FINITE, default=None, help="Classifier dropout (the report's: 0.5).")
@click.option("--epochs", type=int, default=None, help="Training epochs (full: 100, cpu: 30, quick: 15).")
@click.option("--batch-size", type=int, default=None,
              help="Global training batch, split over all processes (the report's: 128).")
@click.option("--lr", type=FINITE, default=None, help="Peak learning rate (the report's: 0.1).")
@click.option("--lr-scaling", type=click.Choice(["none", "linear"]), default=None,
              help="none: --lr whatever the batch [default]; linear: --lr x batch-size / 128.")
@click.option("--weight-decay", type=FINITE, default=None, help="SGD weight decay (the report's: 5e-4).")
@click.option("--schedule", default=None, help="multistep (the report's) or onecycle.")
@click.option("--val-size", type=int, default=None, help="Training images held out for model selection.")
@click.option("--train-subset", type=int, default=None, help="Use only this many training images (0 = all).")
@click.option("--seed", type=int, default=None, help="Seeds initialisation, the validation carve-out, order and augmentation.")
@click.option("--device", default=None, help="auto, cpu or cuda.")
@click.option("--no-augment", "augment", flag_value=False, default=None, help="Turn augmentation off.")
@click.option("--rotation", type=FINITE, default=None, help="Augmentation rotation range in degrees (report: 15).")
@click.option("--label-smoothing", type=FINITE, default=None, help="Cross-entropy label smoothing (report: 0; cpu: 0.1).")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default=None,
              help="Mixed precision of training steps: auto = bf16 on a GPU or a CPU that has it natively "
                   "(avx512_bf16, amx_bf16), fp16 on older GPUs, else float32 [auto].")
@click.option("--channels-last", type=click.Choice(["auto", "on", "off"]), default=None,
              help="Memory format: auto = channels_last on CUDA, contiguous on a CPU [auto].")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model for training.")
@click.option("--sync-bn", is_flag=True, default=None,
              help="Several GPUs: BatchNorm statistics over the global batch (SyncBatchNorm).")
@click.option("--dist-timeout", type=FINITE, default=None,
              help="Several processes: seconds a collective waits for the others before the job ends [300].")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its last checkpoint.")
def train(data_dir, run_dir, profile, resume, compile_, **overrides):
    """Train a VGG-BN on CIFAR-100; keep the best epoch on the validation split.

    Defaults are the report's: vgg19_bn, 100 epochs, batch 128, SGD 0.9,
    wd 5e-4, lr 0.1 with a warm-up epoch, divided by 5 at epochs 30/60/90.
    Writes config.json, metrics.jsonl, last.safetensors and best.safetensors
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
    overrides["compile"] = compile_
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def evaluate(data_dir, run_dir, checkpoint, variant, split, batch_size, trust_pickle, as_json):
    """Top-1 and top-5 error of the baseline, a variant or any checkpoint."""
    from vggtool.console import table
    from vggtool.evaluate import evaluate as run_eval
    from vggtool.targets import evaluation_target

    if batch_size <= 0:
        raise VggtoolError("batch-size must be positive")
    target = evaluation_target(run_dir, checkpoint, variant, trust_pickle)
    data_dir = data_dir or default_data_dir()
    result = run_eval(target.predict, target.batches(data_dir, split, batch_size))
    row = {"model": target.name, "split": split, **result.to_dict()}
    if as_json:
        click.echo(json.dumps(row))
        return
    console.print(table(f"evaluation on {split}", ["model", "images", "top-1 err", "top-5 err"],
                        [[target.name, result.images, f"{result.top1_err:.4f}", f"{result.top5_err:.4f}"]],
                        [False, True, True, True]))


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


def _build(recipe, data_dir, run_dir, checkpoint, from_variant, name, force, trust_pickle):
    from vggtool.compress import build
    from vggtool.runs import Run

    run = Run.open(run_dir)
    with console.status(f"building {name or recipe.name} ...") as status:
        metas = build(run, recipe, data_dir or default_data_dir(), name, checkpoint, from_variant, force, trust_pickle,
                      _tuning_display(status))
    _print_variants(run, metas)


def _tuning_display(status):
    """Progress bars and a line per epoch while a recipe fine-tunes, in place of the spinner."""
    from contextlib import contextmanager

    from vggtool.console import TrainDisplay

    @contextmanager
    def display():
        status.stop()
        try:
            with TrainDisplay(console) as shown:
                yield shown
        finally:
            status.start()

    return display


def _print_variants(run, metas):
    from vggtool.console import table
    from vggtool.report import variant_figure_rows

    if metas:  # nothing built (all kept): no empty table
        console.print(table(f"variants in {run.variants_dir}", *variant_figure_rows(metas)))


def finetune_options(f):
    for opt in reversed([
        click.option("--finetune-epochs", type=int, default=None,
                     help="Retrain this many epochs on the training split (the best epoch on the validation split "
                          "is kept) [global/local/cluster: 0, structured: 5, qat: 3]."),
        click.option("--finetune-lr", type=FINITE, default=None,
                     help="Peak learning rate of fine-tuning [0.01; qat, cluster: 0.001]."),
        click.option("--finetune-schedule", type=click.Choice(["onecycle", "cosine"]), default=None,
                     help="Learning-rate schedule of fine-tuning [onecycle]."),
        click.option("--distill", is_flag=True, default=None,
                     help="Fine-tune with knowledge distillation from the unpruned parent (or --teacher)."),
        click.option("--temperature", type=FINITE, default=None, help="Distillation temperature T [4]."),
        click.option("--distill-weight", type=FINITE, default=None,
                     help="Weight of the distillation term, w * T^2 * KL, added to cross-entropy [1]."),
        click.option("--teacher", default=None, help="Teacher: a float variant of the run or a model file [the parent]."),
    ]):
        f = opt(f)
    return f


def _recipe(modes: dict[str, type], mode: str, options: dict):
    """The recipe of `mode` from the options given; an option another mode owns is a one-line error."""
    given = {k: v for k, v in options.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(modes[mode])}
    for key in given:
        if key not in fields:
            owners = [f"--{m}" for m, cls in modes.items() if key in {f.name for f in dataclasses.fields(cls)}]
            option = {"prune_linear": "keep-linear", "per_channel": "per-tensor"}.get(key, key.replace("_", "-"))
            raise VggtoolError(f"--{option} applies to {' or '.join(owners) or 'another command'} only")
    return modes[mode](**given)


@main.command()
@click.option("--dynamic", is_flag=True, help="Dynamic quantization of the Linear layers (torch.ao).")
@click.option("--static", is_flag=True, help="Static int8 of the whole network, calibrated (torch.ao).")
@click.option("--qat", is_flag=True, help="Quantization-aware training, then int8 (torch.ao).")
@click.option("--onnx", "onnx_", is_flag=True, help="ONNX Runtime static int8 (QDQ), calibrated.")
@click.option("--pt2e", is_flag=True,
              help="PyTorch 2 export int8 (torchao, x86 Inductor quantizer), run with torch.compile; current stacks only.")
@click.option("--dtype", type=click.Choice(["int8", "float16"]), default=None, help="Dynamic: weight type [int8].")
@click.option("--fuse", is_flag=True, default=None,
              help="Static: fold each Conv2d+BatchNorm2d before preparing (QAT always fuses).")
@click.option("--fuse-relu", is_flag=True, default=None, help="Static with --fuse: fold the ReLU too.")
@click.option("--engine", default=None, help="torch.ao quantized engine: fbgemm/x86, or qnnpack on ARM [fbgemm].")
@click.option("--per-tensor", is_flag=True, default=None,
              help="Static, QAT, ONNX: one weight scale per tensor (default per channel, the report's).")
@click.option("--calib-size", type=int, default=None,
              help="Static, ONNX, PT2E: validation images used for calibration, never test images [1000].")
@click.option("--calib-seed", type=int, default=None, help="Static, ONNX, PT2E: seed choosing the calibration images [0].")
@click.option("--calibration", type=click.Choice(["minmax", "entropy", "percentile"]), default=None,
              help="ONNX: how activation ranges are chosen from calibration [minmax].")
@click.option("--activations", type=click.Choice(["u8", "s8"]), default=None, help="ONNX: activation type [u8].")
@click.option("--reduce-range", type=click.Choice(["auto", "on", "off"]), default=None,
              help="ONNX, PT2E: 7-bit weights; auto = on where the CPU lacks VNNI, whose u8s8 sums can saturate [auto].")
@click.option("--exclude", multiple=True, default=None,
              help="ONNX: keep this node in float (repeatable; see the layer sensitivity in meta.json / REPORT.md).")
@click.option("--sensitivity-images", type=int, default=None,
              help="ONNX: quantize each layer alone and record its validation error on this many images [0: off].")
@click.option("--opset", type=int, default=None, help="ONNX: opset of the exported graph [15].")
@finetune_options
@variant_options
def quantize(dynamic, static, qat, onnx_, pt2e, per_tensor, exclude, **options):
    """Quantization: `--dynamic`, `--static [--fuse]` (the report's), `--qat`
    (quantization-aware training), `--onnx` (ONNX Runtime int8) or `--pt2e`
    (PyTorch 2 export with torch.compile).

    \b
      vggtool quantize --static --fuse                # the report's best variant
      vggtool quantize --dynamic --dtype float16
      vggtool quantize --qat --finetune-epochs 3 --distill
      vggtool quantize --onnx --calibration entropy --sensitivity-images 500
      vggtool quantize --pt2e
      vggtool quantize --static --fuse --from-variant structured-0.5-kd
    """
    from vggtool.compress.quant_onnx import OnnxInt8
    from vggtool.compress.quant_pt2e import Pt2eQuant
    from vggtool.compress.quant_torch import DynamicQuant, QatQuant, StaticQuant

    common = {k: options.pop(k) for k in ("data_dir", "run_dir", "checkpoint", "from_variant", "name", "force",
                                          "trust_pickle")}
    chosen = [m for m, on in (("dynamic", dynamic), ("static", static), ("qat", qat), ("onnx", onnx_), ("pt2e", pt2e))
              if on]
    if len(chosen) != 1:
        raise VggtoolError("choose exactly one of --static, --dynamic, --qat, --onnx or --pt2e")
    mode = chosen[0]
    if mode != "dynamic" and options.get("dtype") == "float16":
        raise VggtoolError("static quantization is int8 only; float16 weights need --dynamic")
    if mode != "dynamic":
        options.pop("dtype")
    options["per_channel"] = False if per_tensor else None
    options["exclude"] = tuple(exclude) or None
    modes = {"dynamic": DynamicQuant, "static": StaticQuant, "qat": QatQuant, "onnx": OnnxInt8, "pt2e": Pt2eQuant}
    _build(_recipe(modes, mode, options), **common)


@main.command(name="prune")
@click.option("--global", "scope", flag_value="global", help="Unstructured: one L1 ranking over all Conv2d weights.")
@click.option("--local", "scope", flag_value="local", help="Unstructured: each Conv2d pruned at --amount on its own.")
@click.option("--structured", "scope", flag_value="structured",
              help="Remove whole filters and hidden units (Torch-Pruning): smaller and faster.")
@click.option("--amount", type=FINITE, default=None,
              help="Global/local: fraction of Conv2d weights set to zero [0.6]. Structured: fraction of the "
                   "parameters (or MACs, --target macs) removed [0.5].")
@click.option("--linear-amount", type=FINITE, default=None, help="Global/local: fraction of Linear weights [0].")
@click.option("--target", type=click.Choice(["params", "macs"]), default=None,
              help="Structured: what --amount counts [params].")
@click.option("--importance", type=click.Choice(["l1", "l2", "bn"]), default=None,
              help="Structured: rank filters by L1 or L2 norm, or by BatchNorm scale [l1].")
@click.option("--allocation", type=click.Choice(["uniform", "global"]), default=None,
              help="Structured: the same share from every layer, or one ranking across layers [uniform].")
@click.option("--keep-linear", is_flag=True, default=None, help="Structured: leave the hidden Linear layers whole.")
@click.option("--steps", type=int, default=None, help="Structured: prune a little, fine-tune, repeat, in this many rounds [1].")
@click.option("--slimming-epochs", type=int, default=None,
              help="Structured: first train with an L1 penalty on BatchNorm scales (network slimming) [0].")
@click.option("--slimming-penalty", type=FINITE, default=None, help="Structured: that penalty's weight [1e-4].")
@click.option("--sensitivity-images", type=int, default=None,
              help="Structured: also record validation error after pruning 0.1..0.9 without fine-tuning, on this "
                   "many validation images [0: off].")
@finetune_options
@variant_options
def prune_cmd(scope, **options):
    """Pruning: L1 unstructured (`--global`, `--local`, as the report: zeros, same size)
    or structured (`--structured`: filters removed, really smaller and faster).

    \b
      vggtool prune --global --amount 0.6
      vggtool prune --structured --amount 0.5 --finetune-epochs 5 --distill
      vggtool quantize --static --fuse --from-variant structured-0.5-kd
    """
    from vggtool.compress.pruning import L1Prune
    from vggtool.compress.structured import StructuredPrune

    common = {k: options.pop(k) for k in ("data_dir", "run_dir", "checkpoint", "from_variant", "name", "force",
                                          "trust_pickle")}
    if scope is None:
        raise VggtoolError("choose --global, --local or --structured")
    options["prune_linear"] = False if options.pop("keep_linear") else None
    if scope != "structured":
        options["scope"] = scope
    modes = {"global": L1Prune, "local": L1Prune, "structured": StructuredPrune}
    _build(_recipe(modes, scope, options), **common)


@main.command(name="cluster")
@click.option("--bits", type=int, default=None, help="Index bits of every layer's codebook (sets both below; 1-8).")
@click.option("--conv-bits", type=int, default=None, help="Conv2d codebooks: at most 2^B shared values per layer [8].")
@click.option("--linear-bits", type=int, default=None, help="Linear codebooks: at most 2^B shared values per layer [5].")
@finetune_options
@variant_options
def cluster_cmd(bits, **options):
    """Deep Compression weight sharing: per-layer k-means codebooks (zeros of a
    pruned parent stay zero), optional centroid fine-tuning, stored Huffman-coded;
    the file on disk is the size. Loads as a dense float model.

    \b
      vggtool cluster --conv-bits 8 --linear-bits 5
      vggtool prune --global --amount 0.9 --linear-amount 0.97 --finetune-epochs 5
      vggtool cluster --from-variant prune-global-0.9-linearamount0.97-finetuneepochs5 --finetune-epochs 3
      vggtool compress --set deep-compression
    """
    from vggtool.compress.cluster import WeightSharing

    common = {k: options.pop(k) for k in ("data_dir", "run_dir", "checkpoint", "from_variant", "name", "force",
                                          "trust_pickle")}
    if bits is not None:
        for key in ("conv_bits", "linear_bits"):
            if options[key] is not None and options[key] != bits:
                raise VggtoolError(f"--bits {bits} contradicts --{key.replace('_', '-')} {options[key]}")
            options[key] = bits
    _build(_recipe({"cluster": WeightSharing}, "cluster", options), **common)


@main.command(name="export")
@click.option("--onnx", "onnx_", is_flag=True, required=True, help="Export to ONNX (the only format so far).")
@click.option("--opset", type=int, default=15, show_default=True, help="ONNX opset (the report's: 15; 7-21).")
@variant_options
def export_cmd(onnx_, opset, **common):
    """ONNX export with a dynamic batch axis, checked, with a parity check against torch."""
    from vggtool.compress.onnx_export import OnnxExport

    _build(OnnxExport(opset), **common)


@main.command(name="compress")
@click.option("--variant", "names", multiple=True,
              help="Build these registered variants (repeatable; A+B chains B onto A) [default: --set report].")
@click.option("--set", "set_names", multiple=True,
              help="Build every variant of a named set: report, beyond, deep-compression, full-size (repeatable).")
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
    eight (baseline, dynamic fp16/int8, static int8 with and without fusion,
    global/local pruning at 0.6, ONNX).

    \b
      vggtool compress                                   # the report's eight
      vggtool compress --set beyond                      # structured pruning, stacked with int8
      vggtool compress --set deep-compression            # prune, share weights, Huffman-code
      vggtool compress --variant structured-0.5-kd+static-int8-fused
    """
    from vggtool.compress import REGISTRY, SETS, STACKS, compress
    from vggtool.console import table
    from vggtool.runs import Run

    if list_:
        sets = {n: ", ".join(s for s, members in SETS.items() if n in members) for n in [*REGISTRY, *STACKS]}
        rows = [[n, r.output.value, *r.label, sets[n]] for n, r in REGISTRY.items()]
        console.print(table("registered variants", ["name", "produces", "method", "type", "sets"], rows))
        chains = [[n, REGISTRY[parts[-1]].output.value, sets[n]] for n, parts in STACKS.items()]
        console.print(table("registered chains (each step built on the one before, each its own variant)",
                            ["name", "produces", "sets"], chains))
        return
    unknown = [s for s in set_names if s not in SETS]
    if unknown:
        raise VggtoolError(f"unknown set {unknown[0]!r}: choose one of {', '.join(SETS)}")
    wanted = list(dict.fromkeys([*names, *(n for s in set_names for n in SETS[s])])) or SETS["report"]
    run = Run.open(run_dir)
    with console.status("building variants ...") as status:
        def done(name, meta):
            if meta is None:
                console.print(f"kept {name}: built before (--force rebuilds it)")
                return
            status.update(f"built {name}; building the rest ...")
            console.print(f"built {name}: {meta['figures']['size_mb']:.2f} MB")

        metas = compress(run, wanted, data_dir or default_data_dir(), checkpoint, force, trust_pickle, done,
                         _tuning_display(status))
    _print_variants(run, metas)


BENCH = BenchSettings()  # the measured defaults, shown in `bench --help`
QUICK = BenchSettings.quick()


@main.command(name="bench")
@data_dir_option
@run_dir_option
@click.option("--variant", "names", multiple=True, help="Measure only these (repeatable) [all built].")
@click.option("--quick", is_flag=True, help="Minutes on 2 cores (the quick settings below).")
@click.option("--threads", type=int, default=None, help="Threads for torch and ONNX Runtime [torch's].")
@click.option("--cpus", default=None, help="Pin the process to these CPUs, e.g. 0-1.")
@click.option("--batch-size", type=int, default=None, help=f"The protocol batch [{BENCH.batch_size}, the report's].")
@click.option("--rounds", type=int, default=None, help=f"The fewest interleaved rounds [{BENCH.rounds}].")
@click.option("--time-budget", type=FINITE, default=None,
              help=f"Seconds of timing: rounds are added while it lasts; 0 = exactly --rounds "
                   f"[{BENCH.time_budget:g}; quick: {QUICK.time_budget:g}].")
@click.option("--loads", type=int, default=None, help=f"Parts, each loading every variant afresh [{BENCH.loads}].")
@click.option("--protocol", type=click.Choice(["time", "report"]), default=None,
              help="time: whole batches for --min-time [default]; report: each image once.")
@click.option("--min-time", type=FINITE, default=None,
              help=f"Seconds each timed block covers [{BENCH.min_time:g}; quick: {QUICK.min_time:g}].")
@click.option("--latency-images", type=int, default=None,
              help=f"Test images used for timing [all; quick: {QUICK.latency_images}].")
@click.option("--accuracy-images", type=int, default=None,
              help=f"Test images scored, class-balanced [all; quick: {QUICK.accuracy_images}].")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where results.json/csv, REPORT.md and plots go [<run>/results].")
def bench_cmd(data_dir, run_dir, names, quick, cpus, results_dir, **options):
    """Measure every variant: error, ms/image at the batch size and at 1,
    speed-up over the baseline (95% interval), size. Variants are timed side by
    side in interleaved rounds; docs/bench.md explains the protocol and defaults.

    \b
      vggtool bench --quick                  # minutes
      vggtool bench --cpus 0-1 --threads 2   # the study's figures
    """
    from vggtool.bench.run import bench_run
    from vggtool.console import BenchDisplay
    from vggtool.report import check_writable, console_table, publish
    from vggtool.runs import Run

    settings = BenchSettings.chosen(quick, cpus=parse_cpus(cpus), **options)
    run = Run.open(run_dir)
    folder = results_dir or run.results_dir
    check_writable(folder)  # before minutes of measuring, not after
    size = {"batch_size": settings.batch_size}
    with BenchDisplay(console, lambda rows: console_table({"settings": size, "rows": rows})) as shown:
        results = bench_run(run, data_dir or default_data_dir(), names, settings, shown.on_progress, shown.on_row)
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

    folder = results_dir or Run.open(run_dir).results_dir
    results = load_results(folder)
    written = render_all(results, folder, copy_to)
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
    from rich.table import Table

    from vggtool.files import write_text
    from vggtool.report import baseline_moved, compare, durations, load_results, moved, render_comparison

    if write_to is not None and write_to.name == "results.json":
        raise VggtoolError(f"--write {write_to}: refusing to write markdown over a results.json; name it e.g. SPREAD.md")
    cmp = compare(load_results(first), load_results(second))
    if write_to:  # before anything is printed: a failed write is the only line shown
        try:
            write_text(write_to, render_comparison(cmp, (str(first), str(second))))
        except OSError as e:
            raise VggtoolError(f"cannot write {write_to}: {e.strerror or e}") from None
    t = Table(title="speed-ups over baseline: first / second (moved)")
    for c in ("variant", "batch", "b1"):
        t.add_column(c, no_wrap=c == "variant", justify="left" if c == "variant" else "right")
    for name, v in cmp["variants"].items():
        t.add_row(name, *(f"{v[k][0]:.2f} / {v[k][1]:.2f} ({100 * moved(v[k]):.1f}%)"
                          for k in ("batch_speedup", "b1_speedup")))
    console.print(t)
    console.print(f"largest difference: {100 * cmp['batch_speedup_max_rel_diff']:.1f}% (batch), "
                  f"{100 * cmp['b1_speedup_max_rel_diff']:.1f}% (batch 1)")
    for said in (durations(cmp), baseline_moved(cmp)):
        if said:
            console.print(said)
    if cmp["settings_differ"]:
        console.print("the two benches differ in " + ", ".join(cmp["settings_differ"]) + ": not only noise")
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


if __name__ == "__main__":
    main(prog_name="vggtool", args=sys.argv[1:])
