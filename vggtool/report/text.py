"""Small formatting pieces every view shares."""

from __future__ import annotations


def fmt(value, spec: str) -> str:
    """`value` formatted, or "-" where it was not measured."""
    return "-" if value is None else format(value, spec)


def md_table(header: list[str], rows: list[list[str]], align: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def speedup(row: dict, kind: str) -> str:
    """A speed-up ("3.64x"), with its interval over the rounds where the bench drew one."""
    mid, lo, hi = row[f"{kind}_speedup"], row[f"{kind}_speedup_lo"], row[f"{kind}_speedup_hi"]
    text = "-" if mid is None else f"{mid:.2f}x"
    return text if lo is None or hi is None else f"{text} [{lo:.2f}-{hi:.2f}]"


def points(row: dict, base: dict | None) -> str:
    """A variant's top-1 error minus the baseline's, in percentage points."""
    if base is None or row["top1_err"] is None or base["top1_err"] is None:
        return "-"
    return f"{100 * (row['top1_err'] - base['top1_err']):+.1f}"


def several_runtimes(rows: list[dict]) -> bool:
    """Whether a bench ran variants elsewhere than in their own runtime (`--runtime openvino`): then its tables
    show a runtime column."""
    return any("@" in r["variant"] for r in rows)
