"""One tracking facade: MLflow, or nothing. Every stage logs through it.

Built in one call (``start_run``), used as a context manager, closed with the run's status
(FINISHED, or FAILED when the block raised). Non-zero ranks and disabled runs get a
``NullTracker`` with the same methods, so calling code never branches to log.

Where runs go: ``tracking_uri`` if given, else ``MLFLOW_TRACKING_URI`` from the environment
(what Ray jobs and sweeps pass to workers, pointing at one ``mlflow server``), else a SQLite
file ``sqlite:///<default_dir>/mlflow.db`` (the embedded laptop default). MLflow is imported
lazily: importing ``ssft`` never pays for it.

Metric keys MLflow would reject (characters outside letters, digits, ``_.-:/`` and space) are
rewritten with ``_`` and a warning, once per key. Params are logged from a flat dict
(``ssft.config.flatten_config``); values longer than MLflow's limit are cut with a warning.
We use ``MlflowClient`` (explicit run ids, no global active run), so several runs can be
open at once in one process, e.g. a sweep's parent and a trial's child.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_BAD_KEY = re.compile(r"[^\w.\-:/ ]")  # MLflow allows word chars, . - : / and space
_MAX_PARAM_CHARS = 6000


def default_tracking_uri(default_dir: str | os.PathLike = "runs") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite under ``default_dir``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = Path(default_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The checkout's HEAD commit, or None outside a git checkout (e.g. a Ray job's copy)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class NullTracker:
    """Accepts every call and does nothing (non-zero ranks, tracking disabled)."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FAILED" if exc_type else "FINISHED")


class MLflowTracker(NullTracker):
    """One MLflow run, addressed by id through ``MlflowClient``."""

    def __init__(self, client: Any, run_id: str, tracking_uri: str) -> None:
        self.client, self.run_id, self.tracking_uri = client, run_id, tracking_uri
        self._renamed: dict[str, str] = {}
        self._finished = False

    def _key(self, key: str) -> str:
        if key in self._renamed:
            return self._renamed[key]
        clean = _BAD_KEY.sub("_", key)
        if clean != key:
            log.warning("metric key %r is not valid in MLflow; logging it as %r", key, clean)
        self._renamed[key] = clean
        return clean

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(self._key(k), float(v), now, step or 0)
            for k, v in metrics.items()
            if v is not None
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        batch = []
        for key, value in params.items():
            text = "null" if value is None else str(value)
            if len(text) > _MAX_PARAM_CHARS:
                log.warning(
                    "param %r is %d characters; logging the first %d",
                    key,
                    len(text),
                    _MAX_PARAM_CHARS,
                )
                text = text[:_MAX_PARAM_CHARS]
            batch.append(Param(self._key(key), text))
        for start in range(0, len(batch), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=batch[start : start + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            if value is not None:
                self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        if not self._finished:
            self._finished = True
            self.client.set_terminated(self.run_id, status)


def start_run(
    experiment: str,
    run_name: str,
    *,
    tracking_uri: str | None = None,
    default_dir: str | os.PathLike = "runs",
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    resume_key: str | None = None,
    enabled: bool = True,
) -> NullTracker:
    """Open a run (a child run when ``parent_run_id`` is given); use it as a context manager.

    ``resume_key``: a run of this experiment tagged ``ssft.run_key=<resume_key>`` that did
    not finish is reopened instead of creating a new one, so a training resumed after a crash
    keeps one MLflow run. Fails fast with a clear error when the tracking server cannot be
    reached, before any compute is spent.
    """
    if not enabled:
        return NullTracker()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or default_tracking_uri(default_dir)
    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    except MlflowException as err:
        raise RuntimeError(
            f"MLflow at {uri} could not be used ({err.__class__.__name__}: {err}). Check that "
            "the tracking server is running and reachable, or unset MLFLOW_TRACKING_URI to log "
            "to a local SQLite file."
        ) from err
    all_tags = {"mlflow.parentRunId": parent_run_id, "ssft.run_key": resume_key, **(tags or {})}
    if resume_key is not None:
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`ssft.run_key` = '{resume_key}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if found and found[0].info.status != "FINISHED":
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            log.info("reopening MLflow run %s (%s) to continue it", run_id, resume_key)
            return MLflowTracker(client, run_id, uri)
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={k: str(v) for k, v in all_tags.items() if v is not None},
    )
    return MLflowTracker(client, run.info.run_id, uri)
