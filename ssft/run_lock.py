"""One writer per run directory: a lock file holding the writer's PID and host.

A training killed with its driver can leave a worker that trains on for a few steps and
writes a checkpoint while the rerun of the same command starts: two writers, one run
directory. The training's rank-0 worker therefore takes ``<run dir>/.writer.lock`` (created
with O_EXCL, so only one process can make it) for as long as it writes:

- a lock of a process that is still alive on this host: wait up to ``wait_s`` for it to end
  (the orphan of a killed driver usually does within seconds), then ``RunLocked``;
- a lock of a dead process (a crash, a Ray Train restart): taken over, with a warning;
- a lock from another host: its process cannot be checked from here, so ``RunLocked``,
  saying how to clear it if that process is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ssft.errors import InputError

log = logging.getLogger("ssft.run_lock")
LOCK_FILE = ".writer.lock"


class RunLocked(InputError):
    """Another live process writes this run directory (an ``InputError``: the entrypoint
    exits 2 with its one line)."""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal check is all there is
    return state not in ("Z", "X")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written or garbage: its writer died while writing it


def _try_create(path: Path, owner: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(owner, f)
    return True


def _wait_or_raise(path: Path, held: dict, deadline: float, wait_s: float) -> bool:
    """True: ``held``'s process is alive here, wait and look again; False: it is gone."""
    pid, where, host = held.get("pid"), held.get("host"), socket.gethostname()
    name = path.parent.name
    if where not in (None, host):
        raise RunLocked(
            f"{path}: run {name!r} is being written by PID {pid} on host {where!r} (it cannot "
            "be checked from here). If that process is gone, delete the lock file and rerun."
        )
    if not (isinstance(pid, int) and pid != os.getpid() and _alive(pid)):
        return False
    if time.monotonic() > deadline:
        raise RunLocked(
            f"{path}: run {name!r} is still being written by PID {pid} on this host after "
            f"{wait_s:.0f}s of waiting. Wait for it to end (or stop it), then rerun; two "
            "writers would corrupt its checkpoints."
        )
    return True


def wait_until_free(
    run_dir: str | os.PathLike, *, wait_s: float = 120.0, poll_s: float = 1.0
) -> None:
    """Return once no live process on this host holds the run's lock (the driver's check,
    before it starts the workers); ``RunLocked`` after ``wait_s``."""
    path = Path(run_dir) / LOCK_FILE
    deadline = time.monotonic() + wait_s
    announced = False
    while (held := _read(path)) is not None and _wait_or_raise(path, held, deadline, wait_s):
        if not announced:
            print(
                f"[train] {path.parent.name}: PID {held.get('pid')} (an earlier attempt) still "
                f"writes this run; waiting up to {wait_s:.0f}s for it to end",
                flush=True,
            )
            announced = True
        time.sleep(poll_s)


@contextlib.contextmanager
def run_lock(
    run_dir: str | os.PathLike, *, wait_s: float = 120.0, poll_s: float = 1.0
) -> Iterator[None]:
    """Hold ``<run_dir>/.writer.lock`` for the block (see the module docstring)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    deadline = time.monotonic() + wait_s
    announced = False
    while not _try_create(path, owner):
        held = _read(path)
        if held is None:
            continue  # released meanwhile: try again
        if _wait_or_raise(path, held, deadline, wait_s):
            if not announced:
                log.warning("run %s: PID %s (an earlier attempt) still writes it; waiting "
                            "up to %.0fs", run_dir.name, held.get("pid"), wait_s)  # fmt: skip
                announced = True
            time.sleep(poll_s)
            continue
        log.warning("run %s: taking over the lock of PID %s, which is gone (a crash or a "
                    "restart)", run_dir.name, held.get("pid"))  # fmt: skip
        path.unlink(missing_ok=True)
    try:
        yield
    finally:
        if (_read(path) or {}).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
