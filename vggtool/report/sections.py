"""The sections of REPORT.md after its tables: each present only where the bench measured it."""

from __future__ import annotations

from vggtool.bench.stats import spread
from vggtool.report.text import fmt, md_table


def architecture(ok: list[dict], batch: str) -> list[str]:
    """Parameters and MACs beside measured speed."""
    counted = [r for r in ok if r["macs"]]
    if not counted:
        return []
    base = next((r for r in counted if r["variant"] == "baseline"), None)
    table = md_table(
        ["Variant", "Params (M)", "MACs (M)", "MACs / baseline", f"Speed-up {batch}", "Speed-up b1", "Size MB"],
        [[r["label"], fmt(r["arch_params"] / 1e6, ".3f"), fmt(r["macs"] / 1e6, ".1f"),
          fmt(r["macs"] / base["macs"] if base else None, ".3f"), fmt(r["batch_speedup"], ".2f") + "x",
          fmt(r["b1_speedup"], ".2f") + "x", fmt(r["size_mb"], ".2f")] for r in counted],
        ["-"] + [":-:"] * 6,
    )
    return ["## Parameters, MACs and measured speed",
            "Parameters and multiply-accumulates per 32x32 image of the float architecture each variant has "
            "(Conv2d and Linear weights; a quantized variant keeps its parent's). A MACs ratio is not a speed-up: "
            "both are shown, the speed-ups measured above.", table]


def stored_size(ok: list[dict]) -> list[str]:
    """Coded variants (weight sharing): the file on disk beside what the decoded model would take."""
    coded = [r for r in ok if r["state_dict_mb"] is not None]
    if not coded:
        return []
    base = next((r["size_mb"] for r in ok if r["variant"] == "baseline"), None)
    table = md_table(
        ["Variant", "Stored file MB", "Baseline / stored", "Decoded `torch.save` MB", "Decoded, zlib MB",
         "Non-zero params (M)", "Top1err"],
        [[r["label"], fmt(r["size_mb"], ".3f"), fmt(base / r["size_mb"] if base else None, ".1f") + "x",
          fmt(r["state_dict_mb"], ".2f"), fmt(r["dense_zlib_mb"], ".2f"), fmt(r["nonzero_params"] / 1e6, ".3f"),
          fmt(r["top1_err"], ".3f")] for r in coded],
        ["-"] + [":-:"] * 6,
    )
    return ["## Stored size of the coded variants",
            "Weight-shared variants are stored as codebooks, Huffman-coded indices and relative positions; the size "
            "is that file's bytes. Beside it, what the decoded dense model takes as `torch.save(state_dict)` (the "
            "report's measure) and zlib-compressed, so no row looks smaller than what is on disk. Errors are "
            "measured on the model decoded from the stored file.", table]


def between_parts(parts: dict | None, labels: dict[str, str]) -> list[str]:
    """Each part of a bench timed alone: how far its speed-ups moved. Named beside each figure: the variant
    whose range it is, and for the batch figure each side's ms per part, so a reader sees whether the variant
    or the baseline moved (where the results hold the ms per part)."""
    if not parts:
        return []

    def series(values: list[float], unit: str) -> str:
        return ", ".join(f"{v:.2f}{unit}" for v in values)

    variants = parts["variants"]
    worst = max(variants.items(), key=lambda kv: spread(kv[1]["b1_speedup"]))
    widest = max(variants.items(), key=lambda kv: spread(kv[1]["batch_speedup"]))
    name = labels.get(widest[0], widest[0])
    text = (f"Each part's rounds alone give their own speed-ups; the widest range between parts (relative to their "
            f"mean) was {100 * parts['batch_speedup_max_range']:.1f}% (batch; {name}: "
            f"{series(widest[1]['batch_speedup'], 'x')}) and {100 * parts['b1_speedup_max_range']:.1f}% (batch 1; "
            f"{labels.get(worst[0], worst[0])}: {series(worst[1]['b1_speedup'], 'x')}). The figures above pool the "
            "parts, and their intervals resample them.")
    baseline = parts["baseline"]
    if baseline in variants and widest[0] != baseline:
        text += (f" Batch ms per image in those parts: {name} {series(widest[1]['batch_ms'], '')}, "
                 f"{labels.get(baseline, baseline)} {series(variants[baseline]['batch_ms'], '')}.")
    return ["## Spread between parts", text]


def finetuning(tunings: dict[str, list[dict]], ok: list[dict], labels: dict[str, str]) -> list[str]:
    """What each variant's own fine-tuning cost: epochs, peak learning rate, precision, training minutes (a
    stacked variant inherits its parent's and is not listed again)."""
    if not tunings:
        return []
    errors = {r["variant"]: r["top1_err"] for r in ok}
    rows = []
    for variant, runs in tunings.items():
        history = [e for run in runs for e in run["history"]]
        seconds = [e["seconds"] for e in history]
        kept = [e["val_top1_err"] for e in runs[-1]["history"] if e["val_top1_err"] is not None]  # the last round's
        rates = [f"{run['lr']:g}" for run in runs if run.get("lr") is not None]  # written before the rate: -
        rows.append([labels.get(variant, f"`{variant}`"), str(len(history)), ", ".join(dict.fromkeys(rates)) or "-",
                     ", ".join(sorted({e["precision"] or "?" for e in history})),
                     "-" if None in seconds else f"{sum(seconds) / 60:.1f}", fmt(min(kept, default=None), ".3f"),
                     fmt(errors.get(variant), ".3f")])
    return ["## Fine-tuning",
            "Each variant's own fine-tuning on the training split (the best epoch on validation kept): its epochs, "
            "peak learning rate, the precision of its training steps and the minutes they took on the machine that "
            "built it (network slimming's epochs, if any, are not counted).",
            md_table(["Variant", "Epochs", "Peak lr", "Precision", "Training minutes", "Best val top-1 err",
                      "Test top-1 err"], rows, ["-"] + [":-:"] * 6)]


def sensitivity(scans: dict[str, list[dict]], labels: dict[str, str]) -> list[str]:
    """Validation error after structured pruning without fine-tuning, per amount removed."""
    parts = []
    for variant, rows in scans.items():
        parts += [f"## Pruning sensitivity: {labels.get(variant, variant)}",
                  "Validation top-1 error right after removing each share, before any fine-tuning: where the "
                  "curve turns up, fine-tuning has the most to recover.",
                  md_table(["Removed", "Params (M)", "MACs (M)", "Val top-1 err"],
                           [[f"{r['amount']:.1f}", fmt(r["params"] / 1e6, ".3f"), fmt(r["macs"] / 1e6, ".1f"),
                             fmt(r["val_top1_err"], ".3f")] for r in rows], [":-:"] * 4)]
    return parts


def layer_sensitivity(scans: dict[str, list[dict]], labels: dict[str, str]) -> list[str]:
    """int8 layer by layer: each weight layer quantized alone, the most harmful first."""
    parts = []
    for variant, rows in scans.items():
        parts += [f"## int8 sensitivity per layer: {labels.get(variant, variant)}",
                  "Each layer quantized alone, the rest kept float: validation top-1 error and agreement with the "
                  "float model. The layers at the top are the candidates for `--exclude`.",
                  md_table(["Layer", "Val top-1 err (float)", "Top-1 agreement", "Max |logit diff|"],
                           [[f"`{r['node']}`", f"{fmt(r['val_top1_err'], '.3f')} ({fmt(r['fp32_val_top1_err'], '.3f')})",
                             fmt(r["top1_agreement"], ".3f"), fmt(r["max_abs_logit_diff"], ".3f")] for r in rows],
                           ["-"] + [":-:"] * 3)]
    return parts


def names(rows: list[dict]) -> list[str]:
    """The one table that gives each label its variant's full name: what `vggtool compress --variant`,
    `bench --variant` and the run's variants/ folder call it, and the method its recipe declares; # is its
    number in the error-latency plot."""
    number = {r["variant"]: str(i + 1) for i, r in enumerate(r for r in rows if r["status"] == "ok")}
    return ["## Variant names",
            "Every label above, the variant it stands for, its method, and its number in `error_vs_latency.png`.",
            md_table(["#", "Label", "Variant", "Method"],
                     [[number.get(r["variant"], "-"), r["label"], f"`{r['variant']}`", r["method"] or "-"]
                      for r in rows], [":-:", "-", "-", "-"])]


def runtimes(ok: list[dict], skipped: dict[str, str], env: dict) -> list[str]:
    """Each row run in OpenVINO: the settings its compiled model was read back with, and the precision its
    convolutions really computed in; the rows a bench skipped, and why."""
    shown = [r for r in ok if r["runtime_settings"] and (r["runtime"] or "").startswith("openvino")]
    if not shown and not skipped:
        return []
    parts = ["## Runtimes",
             "Each ONNX variant was run in ONNX Runtime and in OpenVINO"
             + (f" {env['openvino']}" if env.get("openvino") else "") + ": a row per variant and runtime, its "
             "accuracy measured in that runtime. Settings and compute precision are read back from the compiled "
             "model (f32 is set explicitly: OpenVINO computes in bf16 by default where the CPU has it)."]
    if shown:
        parts.append(md_table(["Variant", "Runtime", "Compute precision", "Settings", "Top1err"],
                              [[r["label"], r["runtime"], r["compute_precision"] or "-", r["runtime_settings"],
                                fmt(r["top1_err"], ".3f")] for r in shown], ["-", "-", "-", "-", ":-:"]))
    if skipped:
        parts.append(not_run(skipped))
    return parts


def not_run(skipped: dict[str, str]) -> str:
    """The rows a bench skipped, one sentence per reason and set of runtimes, each variant named once:
    "Not run in openvino, openvino-bf16 (a torch model runs in torch only): `a`, `b`." """
    missed: dict[tuple[str, str], list[str]] = {}  # (reason, variant): the runtimes it was not run in
    for key, why in skipped.items():
        variant, _, runtime = key.partition("@")  # "name@runtime", or a name alone: runtime ""
        missed.setdefault((why, variant), []).append(runtime)
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (why, variant), where in missed.items():
        groups.setdefault((why, tuple(r for r in where if r)), []).append(variant)
    return " ".join(f"Not run{' in ' + ', '.join(where) if where else ''} ({why}): "
                    + ", ".join(f"`{v}`" for v in variants) + "." for (why, where), variants in groups.items())


def float_layers(kept: dict[str, list[str]] | None, labels: dict[str, str]) -> list[str]:
    """The layers each int8 file left in float: NNCF's accuracy control (`--max-drop`), ONNX Runtime's `--exclude`."""
    if not kept:
        return []
    rows = [[labels.get(name, name), ", ".join(f"`{n}`" for n in layers) if layers else "none: every Conv and Gemm int8"]
            for name, layers in kept.items()]
    return ["## Layers kept in float",
            "Which weight layers each int8 variant left in float, as its meta.json records (NNCF int8 under "
            "`--max-drop`: the ones its accuracy control reverted; ONNX Runtime int8: `--exclude`).",
            md_table(["Variant", "Float layers"], rows, ["-", "-"])]


def engines(chosen: dict[str, dict] | None, labels: dict[str, str]) -> list[str]:
    """`--engine auto`: each torch.ao engine's time per image at batch 1 and at the variant's batch, and which
    packing it kept, as measured at build time (short rounds, on the CPU named)."""
    if not chosen:
        return []
    engines = sorted({e for c in chosen.values() for per in c["ms_per_image"].values() for e in per})
    rows = [[labels.get(name, name), f"{b}", *[fmt(per.get(e), ".3f") for e in engines], c["by_batch"][b],
             "**" + c["chosen"] + "**" if b == str(c["for_batch"]) else ""]
            for name, c in chosen.items() for b, per in c["ms_per_image"].items()]
    cpus = sorted({f"{c.get('cpu_model')} (flags `{c.get('cpu_flags')}`), {c.get('threads')} threads"
                   for c in chosen.values()})
    return ["## Engine measured per batch size",
            "`--engine auto` timed the same int8 weights packed for each torch.ao engine when it built the variant, "
            f"in {next(iter(chosen.values()))['rounds']} interleaved short rounds on {'; '.join(cpus)}, and kept "
            "the faster at its batch (the first engine unless another is faster by more than "
            f"{next(iter(chosen.values()))['margin']:.0%}). Its rows above are that packing.",
            md_table(["Variant", "Batch", *[f"{e} ms/image" for e in engines], "Faster", "Kept"], rows,
                     ["-", ":-:"] + [":-:"] * len(engines) + [":-:", ":-:"])]
