"""The report in a few lines: the baseline, and the fastest and smallest variants that keep its accuracy."""

from __future__ import annotations

from vggtool.report.text import fmt, points, speedup

SUMMARY_POINTS = 1.0  # the summary's accuracy budget: top-1 error at most this many points above the baseline's


def summary(ok: list[dict], batch: int, env: dict) -> list[str]:
    """The baseline, then the fastest variant at batch 1 and at `batch`, and the smallest, each among
    those within SUMMARY_POINTS of the baseline's top-1 error; no section without a baseline."""
    base = next((r for r in ok if r["variant"] == "baseline"), None)
    if base is None or base["top1_err"] is None:
        return []
    budget = base["top1_err"] + SUMMARY_POINTS / 100
    within = [r for r in ok if r["variant"] != "baseline" and r["top1_err"] is not None
              and r["top1_err"] <= budget + 1e-12]

    def figures(r: dict) -> str:
        return (f"top-1 error {r['top1_err']:.3f}, {points(r, base)} points; {speedup(r, 'b1')} at batch 1, "
                f"{speedup(r, 'batch')} at batch {batch}; {r['size_mb']:.2f} MB, "
                f"{base['size_mb'] / r['size_mb']:.1f}x smaller")

    lines = [f"- **Baseline**: top-1 / top-5 error {base['top1_err']:.3f} / {base['top5_err']:.3f}, "
             f"{fmt(base['b1_ms_median'], '.2f')} ms per image at batch 1, {fmt(base['batch_ms'], '.2f')} at "
             f"batch {batch}, {base['size_mb']:.2f} MB."]
    picks: list[tuple[list[str], dict | None]] = []  # the titles each chosen row earns: one line per variant
    for title, key in (("Fastest at batch 1", "b1_speedup"), (f"Fastest at batch {batch}", "batch_speedup"),
                       ("Smallest", "size_mb")):
        ranked = [r for r in within if r[key] is not None]
        best = None if not ranked else (min(ranked, key=lambda r: r[key]) if key == "size_mb"
                                        else max(ranked, key=lambda r: r[key]))
        same = next((titles for titles, row in picks if best is not None and row is best), None)
        if same is None:
            picks.append(([title], best))
        else:
            same.append(title)
    for titles, best in picks:
        if best is None:
            lines.append(f"- **{titles[0]}**: no variant within {SUMMARY_POINTS:g} point of the baseline's error.")
        else:
            lines.append(f"- **{_joined(titles)}** within {SUMMARY_POINTS:g} point: {best['label']} ({figures(best)}).")
    return ["## Summary",
            f"Speed-ups are over the baseline in the same bench, on {env['cpu_model'] or '?'} (CPU flags "
            f"`{env['cpu_flags'] or '?'}`); errors on {ok[0]['images_accuracy'] or 'the'} test images.",
            "\n".join(lines)]


def _joined(titles: list[str]) -> str:
    """ "Fastest at batch 1", "Fastest at batch 16", "Smallest" -> "Fastest at batch 1, at batch 16 and smallest"."""
    words = titles[:1] + [t.removeprefix("Fastest ") if t.startswith("Fastest") and titles[0].startswith("Fastest")
                          else t.lower() for t in titles[1:]]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
