"""REPORT.md: the summary, the report's own table beside the published one, then everything else."""

from __future__ import annotations

from vggtool.report import sections
from vggtool.report.results import PUBLISHED, ordered, upgrade
from vggtool.report.search import section as search_section
from vggtool.report.summary import summary
from vggtool.report.text import fmt, md_table, points, several_runtimes, speedup


def render_markdown(results: dict) -> str:
    results = upgrade(results)
    env, settings, subject = results["environment"], results["settings"], results["subject"]
    batch = f"b{settings['batch_size']}"
    rows = ordered(results["rows"])
    ok = [r for r in rows if r["status"] == "ok"]
    labels = {r["variant"]: r["label"] for r in rows}
    images = ok[0]["images_accuracy"] if ok else 0
    parts = [
        "# VGG compression report",
        _about(subject) + f"Measured by `vggtool bench` on {env['date'] or '?'}; rendered by `vggtool report` from "
        "results.json. No figure here is typed by hand.",
        *summary(ok, settings["batch_size"], env),
        *(search_section(results["search"]) if results.get("search") else []),
        *_published(ok),
        "## All variants",
        f"Errors over {images} test images"
        + (f", a class-balanced subset of the {subject['test_images']} (`--accuracy-images`: the first images of "
           "every class; without it every test image is scored)" if settings["accuracy_images"] and subject
           and images < subject["test_images"] else "") + ". " + _protocol(settings, ok)
        + " Size is `torch.save(state_dict)` in MB (ONNX and coded variants: the stored file).",
        _all_variants(ok),
        *_latency(ok, settings, batch),
        *sections.architecture(ok, batch),
        *sections.stored_size(ok),
        *sections.between_parts(results["parts"], labels),
        *sections.finetuning(results["finetune"], ok, labels),
        *sections.sensitivity(results["sensitivity"], labels),
        *sections.layer_sensitivity(results["layer_sensitivity"], labels),
        *sections.runtimes(ok, results["skipped"], env),
        *sections.float_layers(results.get("float_layers"), labels),
        *sections.engines(results.get("engine"), labels),
    ]
    failed = [f"- {r['label']}: {r['status']}" for r in rows if r["status"] != "ok"]
    if failed:
        parts += ["## Variants that failed", "\n".join(failed)]
    parts += [*sections.names(rows),
              "## Environment", "\n".join(f"- {k}: `{v}`" for k, v in env.items() if v is not None),
              "## Settings", "\n".join(f"- {k}: `{v}`" for k, v in settings.items() if v is not None)]
    return "\n\n".join(parts) + "\n"


def _all_variants(ok: list[dict]) -> str:
    """The report's columns, and the runtime where a bench ran variants in more than one."""
    extra = several_runtimes(ok)
    return md_table(["Variant", "Type"] + ["Runtime"] * extra + ["Top1err", "Top5err", "Runtime (ms)",
                                                                 "Model size (MB)"],
                    [[r["label"], r["type"]] + [r["runtime"] or "-"] * extra
                     + [fmt(r["top1_err"], ".3f"), fmt(r["top5_err"], ".3f"), fmt(r["batch_ms"], ".2f"),
                        fmt(r["size_mb"], ".2f")] for r in ok],
                    ["-", "-"] + ["-"] * extra + [":-:"] * 4)


def _about(subject: dict | None) -> str:
    if subject is None:
        return ""
    trained = (f"imported from `{subject['imported_from']}`" if subject["imported_from"] else
               f"trained {subject['epochs']} epochs" if subject["epochs"] else "trained elsewhere")
    return (f"Model: `{subject['arch']}` at width {subject['width']}, {trained} (run `{subject['run']}`); data: "
            f"{subject['data']} test split, {subject['test_images']} images. ")


def _published(ok: list[dict]) -> list[str]:
    """The seed report's own table: its eight variants, our figures beside its published ones."""
    ours = [r for r in ok if r["variant"] in PUBLISHED]
    if not ours:
        return []
    base = next((r for r in ok if r["variant"] == "baseline"), None)

    def pair(value, published, spec: str) -> str:
        return f"{fmt(value, spec)} / {fmt(published, spec)}"

    table = md_table(
        ["Variant", "Method", "Type", "Top1err ours / published", "Top5err ours / published",
         "Top-1 change from baseline, points: ours / published", "Runtime ms ours / published",
         "Size MB ours / published"],
        [[r["label"], r["method"], r["type"], pair(r["top1_err"], p[0], ".3f"), pair(r["top5_err"], p[1], ".3f"),
          f"{points(r, base)} / {100 * (p[0] - PUBLISHED['baseline'][0]):+.1f}", pair(r["batch_ms"], p[2], ".2f"),
          pair(r["size_mb"], p[3], ".2f")] for r in ours for p in [PUBLISHED[r["variant"]]]],
        ["-", "-", "-"] + [":-:"] * 5,
    )
    return ["## The report's table",
            "The seed report's variants, our figures beside its published ones. The published figures come from a "
            "T4 machine's Xeon CPU and the official CIFAR-100 split; ours from the environment below (errors and "
            "runtime as measured under All variants).",
            table]


def _latency(ok: list[dict], settings: dict, batch: str) -> list[str]:
    lo, hi, span = ("batch_ms_lo", "batch_ms_hi", "95% interval") if any(r["batch_ms_lo"] is not None for r in ok) \
        else ("batch_ms_min", "batch_ms_max", "min-max")
    table = md_table(
        ["Variant", f"ms/image {batch} ({span})", f"Speed-up {batch}", "Batch-1 median ms", "p90", "IQR",
         "Speed-up b1", "File MB", "zlib MB", "Sparsity conv / all"],
        [[r["label"], f"{fmt(r['batch_ms'], '.2f')} ({fmt(r[lo], '.2f')}-{fmt(r[hi], '.2f')})",
          speedup(r, "batch"), fmt(r["b1_ms_median"], ".2f"), fmt(r["b1_ms_p90"], ".2f"), fmt(r["b1_ms_iqr"], ".2f"),
          speedup(r, "b1"), fmt(r["file_mb"], ".2f"), fmt(r["compressed_mb"], ".2f"),
          f"{fmt(r['sparsity_conv'], '.3f')} / {fmt(r['sparsity_all'], '.3f')}"] for r in ok],
        ["-"] + [":-:"] * 9,
    )
    how = (f"Speed-ups are over the baseline, in brackets their interval: {settings['estimator']}" if settings["estimator"]
           else "Speed-ups are over the baseline, computed round by round and then the median taken"
           + (" (in brackets: the lowest and highest per-round ratio)" if any(r["batch_speedup_lo"] for r in ok) else ""))
    return ["## Latency and speed-up", how + ". Batch-1: " + _batch1_protocol(settings) + ".", table]


def _protocol(settings: dict, ok: list[dict]) -> str:
    lat_images = ok[0]["images_latency"] if ok else 0
    pooled = max([r["rounds"] or 0 for r in ok] + [settings["rounds"]])
    if not settings["estimator"]:
        rounds = f"median of {settings['rounds']} interleaved rounds"
    else:
        center = "median" if settings["protocol"] == "report" else "median over every call"
        where = "each variant's turn" if settings["idle_before"] == "turn" else "each block"
        budget = (f" (as many as a {settings['time_budget']:g} s budget allowed, at least {settings['rounds']})"
                  if settings["time_budget"] else "")
        loads = (f"; every variant loaded afresh for each of {settings['loads']} parts of a pass"
                 + (", each part timed in a fresh process" if settings["fresh_process"] else "")
                 if settings["loads"] > 1 else "")
        rounds = f"{center} of {pooled} interleaved rounds{budget}, {settings['idle_gap']:g} s idle before " \
                 f"{where}{loads}"
    if settings["protocol"] == "report":
        return (f"Runtime is the report's protocol: batches of {settings['batch_size']}, time inside the model call "
                f"summed over {lat_images} images, per image ({rounds}).")
    timed = [r["images_timed"] for r in ok if r["images_timed"]]
    return (f"Runtime: time inside the model call over whole batches of {settings['batch_size']}, cycled through "
            f"{lat_images} test images (whole batches only; each block goes on where the last one stopped) until "
            f"at least {settings['min_time']:g} s were timed per block "
            f"({min(timed) if timed else '?'} to {max(timed) if timed else '?'} images per "
            f"{'block' if settings['estimator'] else 'round'}), per image "
            f"({rounds}); `vggtool bench --protocol report` times every image once, as the report did.")


def _batch1_protocol(settings: dict) -> str:
    if settings["min_time"] is None:  # before --min-time: a fixed number of warm-up calls
        warm = f"{settings['warmup']} warm-up calls"
    else:
        warm = f"up to {settings['warmup']} warm-up calls, stopping once the call time settles" + (
            f" (once per variant{' and part' if settings['loads'] > 1 else ''}; each block then starts with one "
            "untimed call)" if settings["estimator"] else "")
    if settings["protocol"] == "report":
        return f"{warm}, then {settings['single_calls']} timed calls per round"
    return (f"{warm}, then at least {settings['single_calls']} timed calls and {settings['min_time']:g} s per "
            + ("block" if settings["estimator"] else "round"))
