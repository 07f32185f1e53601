"""Fault injection for the test suite: the one hook the workflows call, so that the tests
can crash, fail or pause real Ray workers; a no-op unless ``$SSFT_FAULT_DIR`` is set.

A test drops a file into ``$SSFT_FAULT_DIR`` (set before Ray starts, so every worker
inherits it; ``tests/conftest.py``), and the matching point fires:

- ``before_shard(i)`` (``workflows.build_traces``), each file removed when it fires so the
  retry runs clean: ``crash-shard-<i>``: the worker process dies (Ray's retry of a dead
  worker runs for real); ``raise-shard-<i>``: the task raises (``retry_exceptions``).
- ``before_train_step(rank, run_name)`` (``workflows.train``; rank 0 only):
  ``crash-train-step-<k>``: dies at step k, once (the file is removed);
  ``crash-train-always-step-<k>``: every run whose name contains the file's text (empty:
  every run) dies at step k on every attempt, appending its name to ``<file>.hits``;
  ``pause-train-step-<k>``: writes ``<file>.reached`` and waits until the file is removed.

A training dies a few seconds late: Train V2's controller collects reported checkpoints when
it polls the workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, default 2 s), and a checkpoint
reported less than one poll before a worker dies is lost. Waiting makes "resumes from the
last checkpoint" what the tests see.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def _fault_dir() -> Path | None:
    value = os.environ.get("SSFT_FAULT_DIR")
    return Path(value) if value else None


def before_shard(index: int) -> None:
    """Called by a build shard task before it samples."""
    fault_dir = _fault_dir()
    if fault_dir is None:
        return
    for kind in ("crash", "raise"):
        request = fault_dir / f"{kind}-shard-{index}"
        if request.exists():
            request.unlink()
            if kind == "crash":
                os._exit(1)
            raise RuntimeError(f"injected failure in shard {index} (test hook {request})")


def before_train_step(rank: int, run_name: str) -> Callable[[int], None] | None:
    """The training loop's ``TrainContext.before_step`` for this worker (None: no faults)."""
    fault_dir = _fault_dir()
    if fault_dir is None or rank != 0:
        return None
    poll_s = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))

    def before_step(step: int) -> None:
        pause = fault_dir / f"pause-train-step-{step}"
        if pause.exists():
            pause.with_name(pause.name + ".reached").write_text(run_name)
            while pause.exists():
                time.sleep(0.1)
        once = fault_dir / f"crash-train-step-{step}"
        always = fault_dir / f"crash-train-always-step-{step}"
        if once.exists():
            once.unlink()
        elif always.exists() and always.read_text().strip() in run_name:
            with always.with_name(always.name + ".hits").open("a") as hits:
                hits.write(run_name + "\n")
        else:
            return
        time.sleep(2 * poll_s + 1)
        os._exit(1)

    return before_step
