"""Writing files so that a crash, a full disk or a refused write never leaves a partial file.

Every output of the project goes through here: the bytes are written under a temporary name in
the destination folder, flushed to disk, then renamed onto the final name (``os.replace`` is
atomic on POSIX within one filesystem), so readers see the old file or the new one, never a
mix. A failed write removes its temporary file and leaves the old file as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Writer = Callable[[Path], object]


def _stage(path: Path, write: Writer, mode: int) -> Path:
    """``write`` into a new temp file beside ``path``, synced to disk; returns the temp path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600; outputs are shared, like any written file
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename itself durable (POSIX); atomicity does not depend on it."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str | os.PathLike, write: Writer, *, mode: int = 0o644) -> Path:
    """Call ``write(temp_path)``, then move the result onto ``path`` in one rename."""
    return write_together({Path(path): write}, mode=mode)[0]


def write_together(writers: Mapping[Path, Writer], *, mode: int = 0o644) -> list[Path]:
    """Write every file under a temp name first, then rename them all into place.

    A failure while writing any of them happens while only temp files exist (they are
    removed), so a set of files that belong together (a table and its chart) stays whole.
    """
    staged: dict[Path, Path] = {}
    try:
        for path, write in writers.items():
            staged[Path(path)] = _stage(Path(path), write, mode)
        for path, tmp in staged.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        raise
    for folder in {p.parent for p in staged}:
        fsync_directory(folder)
    return list(staged)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """JSON with sorted keys and one-space indents (diffable, stable across runs)."""
    return write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def probe_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and write (then remove) a file in it; raises ``OSError``.

    A real write rather than ``os.access``: it also catches a read-only filesystem, a full
    disk, a parent that is a regular file, and it is right for root, whom permission bits do
    not stop.
    """
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".ssft-write-check-"):
        pass
    return path
