"""What a bench ran on and with: CPU and its flags, threads, pinning, library versions,
the code's commit (marked -dirty when modified), the date, the peak memory."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from vggtool.compress import versions
from vggtool.cpu import cpu_info

PACKAGE = Path(__file__).resolve().parent.parent  # vggtool/


def git_commit(where: Path | None = None) -> str:
    """The commit of vggtool's checkout (of `where`), with "-dirty" when a tracked file in the
    package's folder (`where`, and below) differs from it: a figure measured with modified code
    says so, while results written into the checkout do not. "unknown" outside a git checkout."""
    where = where or PACKAGE

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=where).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if not commit:
            return "unknown"
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no", "--", ".") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def peak_rss_mb() -> float:
    """The largest resident memory this process has used."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def environment() -> dict:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        **cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "affinity": ",".join(map(str, affinity)),
        **versions(),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
    }
