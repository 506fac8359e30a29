"""Atomic writes: a reader or a killed process never sees half a file or folder."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vggtool.errors import VggtoolError


@contextmanager
def disk_full_is_one_line(path: Path) -> Iterator[None]:
    """An ENOSPC (or quota) error while writing `path` becomes one line; what was there stays."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise VggtoolError(f"disk full while writing {path}: nothing was replaced, the previous version (if any) "
                               "is intact; free some space and run the command again") from None
        raise


def temp_prefix(path: Path) -> str:
    """Hidden temporary names carry the writer's pid, so a later run can tell litter of a
    killed process (its pid gone) from a write in progress."""
    return f".{Path(path).name}.{os.getpid()}."


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it into place only on success."""
    path = Path(path)
    with disk_full_is_one_line(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            with open(tmp, "rb+") as f:  # on disk before it takes the name
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete hidden `.NAME.PID.*.tmp` files and folders left by killed writers (pid no longer alive)."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for item in Path(folder).iterdir():
        parts = item.name.split(".")
        if not (item.name.startswith(".") and item.name.endswith((".tmp", ".old")) and len(parts) >= 4):
            continue
        pid = next((int(p) for p in parts[2:-1] if p.isdigit()), None)
        if pid is None or _alive(pid):
            continue
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
        removed.append(item)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, what: str = "JSON file"):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VggtoolError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VggtoolError(f"{what} {path} cannot be parsed: {e}") from None


@contextmanager
def atomic_dir(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; it replaces `path` only if the block succeeds.

    An existing `path` is refused unless `force`, and survives a failed build.
    """
    path = Path(path)
    if path.exists() and not force:
        raise VggtoolError(f"{path} already exists; pass --force to replace it")
    with disk_full_is_one_line(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".old", dir=path.parent))
                os.replace(path, old / "x")
                os.replace(tmp, path)
                shutil.rmtree(old)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
