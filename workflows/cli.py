"""What every entrypoint does around its work: check first, and fail with a message, not a trace.

Before any compute, each stage checks that MLflow answers (``ssft.tracking.preflight_tracking``)
and that its output folders accept a file (``check_output_dir``): a typo in a path or a server
that is down then costs a second, not a finished training whose results cannot be written.

``run_main`` turns the errors a user can fix into one line on stderr and exit status 2: bad
input (``ssft.errors.InputError`` and its subclasses: a config, trace-set, questions or
replay file, M > N or an overlong trace, a model's refused custom code; each names the file,
row and field and the fix), an unusable tracking server, and an output folder or disk that
refuses writes (permission, read-only, full). Every output is written under a temp name and
renamed into place, so such a failure leaves earlier outputs intact and a rerun resumes.
Anything else keeps its traceback: it is a bug to report, not a setting to change.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ssft.atomic_io import probe_writable
from ssft.errors import InputError
from ssft.tracking import TrackingUnavailable, preflight_tracking

T = TypeVar("T")

# Write failures a user fixes on their side (space, quota, permissions, a path through a file).
DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
     errno.ENOTDIR, errno.EEXIST}
)  # fmt: skip


class OutputNotWritable(RuntimeError):
    """An output folder refuses writes; raised before any compute, naming the folder."""


class NothingLearned(RuntimeError):
    """A job ran to the end, but its results show nothing (no model learned its task); every
    output is written. Exit status 1: the command worked, the experiment did not."""


def check_output_dir(path: str | os.PathLike, setting: str) -> Path:
    """Create ``path`` if needed and prove a file can be written there; returns it resolved.

    A real write (a temp file, removed at once) rather than ``os.access``: it also catches a
    read-only filesystem, a full disk's refusal to create files, a parent that is a regular
    file, and it is right for root, whom permission bits do not stop.
    """
    folder = Path(path).resolve()
    try:
        probe_writable(folder)
    except OSError as err:
        raise OutputNotWritable(
            f"{setting}={folder} cannot be written ({err.strerror or err}"
            f"{f': {err.filename}' if err.filename else ''}). Choose another folder with "
            f"{setting}=<path>, or fix its permissions or free space. Nothing was computed; "
            "earlier outputs there are untouched."
        ) from err
    return folder


def preflight(outputs: dict[str, str | os.PathLike], tracking_dir: str = "runs") -> str:
    """Check MLflow and every output folder (``{setting: path}``); returns the tracking URI."""
    uri = preflight_tracking(tracking_dir)
    for setting, path in outputs.items():
        check_output_dir(path, setting)
    return uri


def _disk_message(err: OSError) -> str:
    where = err.filename or "an output file"
    return (
        f"could not write {where}: {err.strerror or err}. Free space or fix permissions there, "
        "then rerun the same command: outputs are written under a temp name and renamed into "
        "place, so earlier ones are intact and finished work is reused."
    )


def run_main(fn: Callable[[], T]) -> T:
    """``fn()``; user-fixable errors become ``error: <message>`` on stderr and exit status 2,
    a job whose results show nothing (``NothingLearned``) exit status 1."""
    try:
        return fn()
    except NothingLearned as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except (InputError, TrackingUnavailable, OutputNotWritable) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except OSError as err:
        cause = getattr(err, "cause", None)  # a Ray task error wraps the worker's OSError
        cause = cause if isinstance(cause, OSError) else err
        if cause.errno not in DISK_ERRNOS:
            raise
        print(f"error: {_disk_message(cause)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
