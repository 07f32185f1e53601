"""One tracking facade: MLflow, or nothing. Every stage logs through it.

Built in one call (``start_run``), used as a context manager, closed with the run's status
(FINISHED, or FAILED when the block raised). Non-zero ranks and disabled runs get a
``NullTracker`` with the same methods, so calling code never branches to log.

Where runs go: ``tracking_uri`` if given, else ``MLFLOW_TRACKING_URI`` from the environment
(what Ray jobs and sweeps pass to workers, pointing at one ``mlflow server``), else a SQLite
file ``sqlite:///<default_dir>/mlflow.db`` (the embedded laptop default). An experiment this
facade creates in a SQLite store keeps its artifacts beside the database, in
``<db folder>/mlartifacts/<experiment>`` (MLflow's own default is ``./mlruns`` of whatever
directory the process runs in); a server decides for itself. MLflow is imported lazily:
importing ``ssft`` never pays for it.

Runs find each other through ``mlflow_run.json`` (``write_run_record``), which a stage writes
into the folder it produces (a final model, an evaluation), and through the resume key tag
``ssft.run_key`` (``MLflowTracker.find_run``).

Metric keys MLflow would reject (characters outside letters, digits, ``_.-:/`` and space) are
rewritten with ``_`` and a warning, once per key. Params are logged from a flat dict
(``ssft.config.flatten_config``); values longer than MLflow's limit are cut with a warning.
We use ``MlflowClient`` (explicit run ids, no global active run), so several runs can be
open at once in one process, e.g. a sweep's parent and a trial's child.

Failures, and what happens:

    tracking unusable at start (server down,   -> ``TrackingUnavailable`` from
    SQLite folder not writable)                   ``check_tracking_uri`` / ``start_run``, before
                                                  any compute: entrypoints check first
    a call fails after the run started         -> the call is NOT retried forever and never
    (server died, network, disk)                  raises: a warning per dropped call, a line in
                                                  ``<local_dir>/unlogged.jsonl`` (texts and
                                                  figures saved beside it), a summary at finish

Why degrade instead of failing: the run's real outputs (checkpoints, final model, Parquet)
live on disk; losing the tracking server must not throw away hours of training. After a failure
the tracker stops calling the server for ``OFFLINE_RETRY_S`` and then probes ``/health`` (2 s)
before trying again, so a dead server costs seconds, not MLflow's default minutes of retries
per call (the HTTP retry defaults are lowered too, unless set in the environment).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ssft.atomic_io import probe_writable, write_json_atomic

log = logging.getLogger(__name__)
_BAD_KEY = re.compile(r"[^\w.\-:/ ]")  # MLflow allows word chars, . - : / and space
_MAX_PARAM_CHARS = 6000
OFFLINE_RETRY_S = 30.0  # after a failed call, how long the tracker stops calling the server
LOCKED_RETRY_S = (0.2, 0.5, 1.0, 2.0, 4.0)  # waits before retrying a call SQLite found locked
UNLOGGED_FILE = "unlogged.jsonl"
ARTIFACTS_DIR = "mlartifacts"  # beside a SQLite store: its experiments' artifacts
RUN_RECORD = "mlflow_run.json"  # in a stage's output folder: the MLflow run that wrote it
# MLflow's own HTTP defaults (7 retries, backoff factor 2, 120 s timeout) make each call to a
# dead server hang for minutes; these apply unless the environment sets them.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
_START_HINT = (
    "Start it with `bash ops/local_services.sh start` or unset MLFLOW_TRACKING_URI to use the "
    "local SQLite file."
)


class TrackingUnavailable(RuntimeError):
    """MLflow cannot be used at start; raised before any compute, with the fix."""


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Raise ``TrackingUnavailable`` unless ``uri`` can take runs (cheap: one request or file).

    http(s): ``GET <uri>/health`` must get an answer (any HTTP status: a server that answers
    401 is up, and MLflow's own error will say why it refuses). sqlite: the database's folder
    must accept a new file. Other schemes are left to MLflow.
    """
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                r.read(64)
        except urllib.error.HTTPError:
            return  # it answered
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise TrackingUnavailable(
                f"MLflow tracking server at {uri} did not answer ({reason}). {_START_HINT}"
            ) from err
    elif scheme == "sqlite":
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            probe_writable(folder)
        except OSError as err:
            raise TrackingUnavailable(
                f"MLflow SQLite database {uri}: its folder {folder} is not writable "
                f"({err.strerror or err}). Fix the folder's permissions or free space, or point "
                "MLFLOW_TRACKING_URI at a running server (bash ops/local_services.sh start)."
            ) from err


def preflight_tracking(default_dir: str | os.PathLike = "runs", enabled: bool = True) -> str:
    """The tracking URI the stage will use, checked before any compute; returns it."""
    try:
        uri = default_tracking_uri(default_dir)
    except OSError as err:
        raise TrackingUnavailable(
            f"MLflow's default folder {Path(default_dir).resolve()} cannot be created "
            f"({err.strerror or err}); set MLFLOW_TRACKING_URI or fix that path."
        ) from err
    if enabled:
        check_tracking_uri(uri)
    return uri


def default_tracking_uri(default_dir: str | os.PathLike = "runs") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite under ``default_dir``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = Path(default_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


def local_artifact_root(uri: str) -> Path | None:
    """Where the experiments of a SQLite store keep their artifacts: ``mlartifacts`` beside
    the database file. None for any other store (a server has its own artifact root)."""
    if urlparse(uri).scheme != "sqlite" or not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve().parent / ARTIFACTS_DIR


def _experiment_folder(experiment: str) -> str:
    """The experiment's folder name under the artifact root: its name when that is a plain
    file name, else a cleaned name with a digest (two names never share a folder)."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "_", experiment)
    if clean == experiment:
        return clean
    return f"{clean}-{hashlib.sha256(experiment.encode()).hexdigest()[:8]}"


def run_link(experiment_id: str | None, run_id: str) -> str:
    """A run's page in the MLflow UI, relative to the UI's address (for run descriptions)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def write_run_record(folder: str | os.PathLike, tracker: NullTracker) -> None:
    """Write ``folder/mlflow_run.json``: the run (id, experiment, store) that produced the
    folder, so whatever reads the folder later finds its run. Nothing for a run without an id
    (tracking off, or MLflow unreachable when the run opened)."""
    if tracker.run_id is None:
        return
    write_json_atomic(Path(folder) / RUN_RECORD, {
        "run_id": tracker.run_id, "experiment_id": tracker.experiment_id,
        "tracking_uri": tracker.tracking_uri,
    })  # fmt: skip


def read_run_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``mlflow_run.json`` of ``folder``, or {} when there is none (or it is unreadable)."""
    try:
        record = json.loads((Path(folder) / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def browse_hint(uri: str, experiment: str) -> str:
    """Where to look at an experiment's runs: its page on a server, or the `mlflow ui` command
    for a SQLite file (its artifacts are files beside it, which the UI reads directly;
    ``--artifacts-destination`` puts those of experiments created in the UI there too). MLflow
    3's UI opens on a GenAI overview; the runs table is /runs."""
    experiment_id = None
    try:
        check_tracking_uri(uri, timeout_s=2.0)  # never wait out MLflow's retries on a dead server
        from mlflow import MlflowClient

        found = MlflowClient(uri).get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else None
    except Exception:  # a hint must never fail a finished job
        pass
    page = f"#/experiments/{experiment_id}/runs" if experiment_id else "#/experiments"
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/{page}"
    root = local_artifact_root(uri)
    serve = f" --artifacts-destination {root}" if root is not None else ""
    return f"mlflow ui --backend-store-uri {uri}{serve}  then open http://127.0.0.1:5000/{page}"


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The checkout's HEAD commit, or None outside a git checkout (e.g. a Ray job's copy)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# The packages whose versions decide a run's numbers (the same commit trained to other figures
# after a set-up resolved newer releases), recorded on every run beside the commit.
RESULT_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "numpy", "scipy",
                   "ray", "mlflow", "math-verify", "vllm")  # fmt: skip


def provenance_tags() -> dict[str, str | None]:
    """``git_commit`` and ``version.<package>`` of Python and each installed
    ``RESULT_PACKAGES`` entry: what a run's figures were computed with."""
    import importlib.metadata
    import platform

    tags: dict[str, str | None] = {"git_commit": git_commit(),
                                   "version.python": platform.python_version()}  # fmt: skip
    for name in RESULT_PACKAGES:
        try:
            tags[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed (vllm on a CPU machine): no tag
    return tags


# Matplotlib is not thread-safe: its mathtext parser (log-scale tick labels) fails when two
# threads draw at once, e.g. the pipeline's evaluations logging their plots side by side.
_RENDER_LOCK = threading.Lock()


def _render(draw: Callable[[], Any]) -> Any:
    """Run ``draw`` (a savefig) while no other thread draws."""
    with _RENDER_LOCK:
        return draw()


class NullTracker:
    """Accepts every call and does nothing (non-zero ranks, tracking disabled)."""

    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None
    reopened: bool = False  # an earlier run of the same resume key was reopened

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_table(self, data: Any, artifact_file: str) -> None: ...
    def find_run(self, run_id: str | None = None, key: str | None = None,
                 tag: str = "ssft.run_key") -> Any: ...  # fmt: skip
    def log_to_run(self, run_id: str, metrics: Mapping[str, float] | None = None,
                   tags: Mapping[str, Any] | None = None) -> None: ...  # fmt: skip

    def finish(self, status: str = "FINISHED") -> None: ...

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FAILED" if exc_type else "FINISHED")


class MLflowTracker(NullTracker):
    """One MLflow run, addressed by id through ``MlflowClient``; never raises after start.

    A failing call is recorded in ``local_dir/unlogged.jsonl`` (one JSON object per call:
    time, call, what it carried, the error); texts and figures are saved under
    ``local_dir/unlogged/`` so nothing is lost. ``client=None`` is an offline tracker: the
    server was gone when a resumed worker started, so every call is recorded that way.

    ``resumed``: the run was reopened (a training resumed from its last checkpoint replays
    the steps after it). A metric is then not logged again at a step its history already
    holds: each step appears once, with the value the first attempt logged.
    """

    def __init__(
        self,
        client: Any,
        run_id: str | None,
        tracking_uri: str,
        local_dir: str | os.PathLike | None = None,
    ) -> None:
        self.client, self.run_id, self.tracking_uri = client, run_id, tracking_uri
        self.experiment_id: str | None = None
        self._renamed: dict[str, str] = {}
        self._finished = False
        self.local_dir = Path(local_dir or Path("runs") / "unlogged" / str(run_id))
        self.unlogged: Counter = Counter()  # dropped calls by kind
        self._offline_until = math.inf if client is None else 0.0
        self.resumed = False
        self.reopened = False
        self._logged_through: dict[str, int] = {}  # resumed: metric -> last step in history

    def _last_logged_step(self, key: str) -> int:
        if key not in self._logged_through:
            try:
                history = self.client.get_metric_history(self.run_id, key)
            except Exception:  # unreachable: log it; a duplicate beats a lost value
                return -1
            self._logged_through[key] = max((m.step for m in history), default=-1)
        return self._logged_through[key]

    @property
    def unlogged_path(self) -> Path:
        return self.local_dir / UNLOGGED_FILE

    def _key(self, key: str) -> str:
        if key in self._renamed:
            return self._renamed[key]
        clean = _BAD_KEY.sub("_", key)
        if clean != key:
            log.warning("metric key %r is not valid in MLflow; logging it as %r", key, clean)
        self._renamed[key] = clean
        return clean

    def _online(self) -> bool:
        """False while the server is known down; after ``OFFLINE_RETRY_S`` a quick probe."""
        if time.monotonic() < self._offline_until:
            return False
        if self._offline_until:  # it failed before: probe cheaply before a slow MLflow call
            try:
                check_tracking_uri(self.tracking_uri, timeout_s=2.0)
            except TrackingUnavailable:
                self._offline_until = time.monotonic() + OFFLINE_RETRY_S
                return False
        return True

    def _send(
        self,
        call: str,
        detail: dict[str, Any],
        send: Callable[[], Any],
        keep: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Run ``send``; on failure record the call locally instead of raising.

        ``keep``: saves content that only lives in memory (a text, a figure) locally and
        returns where, for the record.
        """
        error = None
        if not self._online():
            error = "not sent: the tracking server was unreachable"
        else:
            for wait in (*LOCKED_RETRY_S, None):
                try:
                    send()
                    self._offline_until = 0.0
                    break
                except Exception as err:  # tracking must never kill the work it logs
                    # Several processes writing one SQLite file (concurrent trainings of the
                    # pipeline) collide now and then: a short wait, not an outage.
                    if wait is not None and "database is locked" in str(err):
                        time.sleep(wait)
                        continue
                    self._offline_until = time.monotonic() + OFFLINE_RETRY_S
                    error = " ".join(f"{type(err).__name__}: {err}".split())[:500]
                    break
        if error is not None:
            self._record(call, {**detail, **(keep() if keep else {})}, error)

    def _record(self, call: str, detail: dict[str, Any], error: str) -> None:
        self.unlogged[call] += 1
        entry = {"time": time.time(), "run_id": self.run_id, "call": call, **detail,
                 "error": error}  # fmt: skip
        try:
            self.local_dir.mkdir(parents=True, exist_ok=True)
            with self.unlogged_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, default=str) + "\n")
            where = str(self.unlogged_path)
        except OSError as err:  # the local disk failing too: the log line is all that is left
            where = f"nowhere ({err.strerror or err})"
        log.warning("MLflow %s of run %s not logged (%s); recorded in %s",
                    call, self.run_id, error[:200], where)  # fmt: skip

    def _save_local(self, artifact_file: str, write: Callable[[Path], Any]) -> str | None:
        """Keep an artifact that could not be sent under ``local_dir/unlogged/``."""
        path = self.local_dir / "unlogged" / artifact_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
            return str(path)
        except Exception:  # best effort; the jsonl line still says what was lost
            return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = {self._key(k): float(v) for k, v in metrics.items() if v is not None}
        if self.resumed and self.client is not None:  # replayed steps: keep the first values
            values = {k: v for k, v in values.items() if (step or 0) > self._last_logged_step(k)}
        batch = [Metric(k, v, now, step or 0) for k, v in values.items()]
        if batch:
            self._send(
                "log_metrics",
                {"step": step, "metrics": values},
                lambda: self.client.log_batch(self.run_id, metrics=batch),
            )

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
            part = batch[start : start + 100]
            self._send(
                "log_params",
                {"params": {p.key: p.value for p in part}},
                lambda part=part: self.client.log_batch(self.run_id, params=part),
            )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            if value is not None:
                self._send(
                    "set_tag",
                    {"tags": {key: str(value)}},
                    lambda k=key, v=value: self.client.set_tag(self.run_id, k, str(v)),
                )

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            send = lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path)  # noqa: E731
        else:
            send = lambda: self.client.log_artifact(self.run_id, str(path), artifact_path)  # noqa: E731
        # The file itself stays where it is: the record says where to upload it from.
        self._send("log_artifact", {"local_path": str(path), "artifact_path": artifact_path}, send)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._send(
            "log_text",
            {"artifact_file": artifact_file},
            lambda: self.client.log_text(self.run_id, text, artifact_file),
            keep=lambda: {"saved_to": self._save_local(
                artifact_file, lambda p: p.write_text(text, "utf-8"))},
        )  # fmt: skip

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._send(
            "log_figure",
            {"artifact_file": artifact_file},
            lambda: _render(lambda: self.client.log_figure(self.run_id, figure, artifact_file)),
            keep=lambda: {"saved_to": self._save_local(
                artifact_file, lambda p: _render(lambda: figure.savefig(p, dpi=120)))},
        )  # fmt: skip

    TABLE_CELL_CHARS = 2000  # longer texts are cut in the middle (log_table)

    @staticmethod
    def _cut_middle(value: Any, limit: int) -> Any:
        if not isinstance(value, str) or len(value) <= limit:
            return value
        head, tail = value[: limit * 3 // 4], value[len(value) - limit // 4 :]
        return f"{head} [... {len(value) - len(head) - len(tail)} characters cut ...] {tail}"

    def log_table(self, data: Any, artifact_file: str) -> None:
        """A table the MLflow UI shows as one (sortable, paged) in the run's artifact view.

        ``data``: a dict of equal-length columns (``dict[str, list]``) or a pandas DataFrame;
        ``artifact_file``: a ``.json`` path (MLflow's ``log_table`` format, ``orient="split"``;
        ``MlflowClient.load_table`` reads it back). Text cells longer than
        ``TABLE_CELL_CHARS`` keep their first three quarters and last quarter of that (where
        an answer is) around ``[... N characters cut ...]``: the UI lays out every cell of a
        page, so log the full texts in a file beside (e.g. Parquet). MLflow appends to a table
        of that name already in the run: log each table once. Unusable ``data`` is a warning
        and a line in ``unlogged.jsonl``; with MLflow down the table is saved as that JSON
        under ``local_dir/unlogged/``."""
        try:
            import pandas as pd

            frame = data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
            limit = self.TABLE_CELL_CHARS
            for column in frame.columns:
                if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
                    frame[column] = frame[column].map(lambda v: self._cut_middle(v, limit))
        except Exception as err:  # a bad table must not fail the work it describes
            self._record("log_table", {"artifact_file": artifact_file},
                         f"not a table: {type(err).__name__}: {err}"[:500])  # fmt: skip
            return
        self._send(
            "log_table",
            {"artifact_file": artifact_file, "rows": len(frame)},
            lambda: self.client.log_table(self.run_id, frame, artifact_file),
            keep=lambda: {"saved_to": self._save_local(
                artifact_file, lambda p: frame.to_json(p, orient="split", index=False))},
        )  # fmt: skip

    def find_run(self, run_id: str | None = None, key: str | None = None,
                 tag: str = "ssft.run_key") -> Any:  # fmt: skip
        """Another run of this store (``mlflow.entities.Run``): ``run_id`` when it exists
        here, else the latest run of this experiment whose ``tag`` is ``key`` (by default its
        resume key). None when neither is found or MLflow cannot be asked; never raises."""
        if self.client is None or not self._online():
            return None
        if run_id:
            try:
                return self.client.get_run(run_id)
            except Exception:  # recorded against another store, or deleted: try the key
                pass
        if key is None or self.experiment_id is None:
            return None
        value = key.replace("'", "\\'")
        try:
            found = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                order_by=["attributes.start_time DESC"], max_results=1,
            )  # fmt: skip
        except Exception:
            return None
        return found[0] if found else None

    def log_to_run(self, run_id: str, metrics: Mapping[str, float] | None = None,
                   tags: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        """Log metrics (step 0) and tags on another run, e.g. an evaluation's headline figures
        on the training run it evaluated; a failure is recorded like any other call."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        values = {self._key(k): float(v) for k, v in (metrics or {}).items() if v is not None}
        texts = {k: str(v) for k, v in (tags or {}).items() if v is not None}
        if not values and not texts:
            return
        batch = [Metric(k, v, now, 0) for k, v in values.items()]
        labels = [RunTag(k, v) for k, v in texts.items()]
        self._send(
            "log_to_run",
            {"target_run_id": run_id, "metrics": values, "tags": texts},
            lambda: self.client.log_batch(run_id, metrics=batch, tags=labels),
        )

    def child_runs(self) -> list[Any]:
        """This run's child runs (``mlflow.entities.Run``), oldest first; raises if MLflow is
        unreachable (the caller decides what a summary without them says)."""
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        return self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'",
            order_by=["attributes.start_time ASC"],
        )

    def close_run(self, run_id: str, status: str) -> None:
        """End another run (a child a dead worker left RUNNING) with ``status``; may raise."""
        self.client.set_terminated(run_id, status)

    def delete_tags(self, keep: Callable[[str], bool]) -> None:
        """Delete this run's tags for which ``keep(key)`` is false; may raise."""
        for key in self.client.get_run(self.run_id).data.tags:
            if not keep(key):
                self.client.delete_tag(self.run_id, key)

    def finish(self, status: str = "FINISHED") -> None:
        if self._finished:
            return
        self._finished = True
        if self.unlogged:
            # Recorded on the run too, in case the server is back for these last calls.
            count = str(sum(self.unlogged.values()))
            tag = "ssft.unlogged_calls"
            self._send("set_tag", {"tags": {tag: count}},
                       lambda: self.client.set_tag(self.run_id, tag, count))  # fmt: skip
        self._send("set_terminated", {"status": status},
                   lambda: self.client.set_terminated(self.run_id, status))  # fmt: skip
        if self.unlogged:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.unlogged.items()) if n)
            line = (f"[tracking] MLflow run {self.run_id} at {self.tracking_uri}: "
                    f"{sum(self.unlogged.values())} call(s) were not logged ({kinds}); "
                    f"what they carried is in {self.unlogged_path}")  # fmt: skip
            log.warning(line)
            print(line, flush=True)


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
    local_dir: str | os.PathLike | None = None,
    offline_ok: bool = False,
    reopen_finished: bool = False,
) -> NullTracker:
    """Open a run (a child run when ``parent_run_id`` is given); use it as a context manager.

    ``resume_key``: a run of this experiment tagged ``ssft.run_key=<resume_key>`` that did
    not finish is reopened instead of creating a new one, so a training resumed after a crash
    keeps one MLflow run (``reopen_finished``: a finished one too, e.g. a sweep's parent run,
    which a rerun updates). ``local_dir``: the stage's output folder, where calls that could not
    be logged are recorded (``unlogged.jsonl``). Raises ``TrackingUnavailable`` when MLflow
    cannot be used, unless ``offline_ok`` (a worker resumed after the server died: its work
    must go on), which returns a tracker that records every call locally instead.
    """
    if not enabled:
        return NullTracker()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient

    uri = tracking_uri or default_tracking_uri(default_dir)
    client = MlflowClient(tracking_uri=uri)
    try:
        check_tracking_uri(uri)
        return _open_run(client, uri, experiment, run_name, tags, parent_run_id, resume_key,
                         local_dir, reopen_finished)  # fmt: skip
    except Exception as err:  # MlflowException, OSError, urllib errors alike
        if not offline_ok:
            if isinstance(err, TrackingUnavailable):
                raise
            raise TrackingUnavailable(
                f"MLflow at {uri} could not be used ({type(err).__name__}: {err}). Check that "
                "the tracking server is running and reachable, or unset MLFLOW_TRACKING_URI to "
                "log to a local SQLite file."
            ) from err
        log.warning("MLflow at %s cannot be used (%s); recording this run's calls locally",
                    uri, err)  # fmt: skip
        return MLflowTracker(None, None, uri, local_dir=local_dir)


def _open_run(
    client, uri, experiment, run_name, tags, parent_run_id, resume_key, local_dir, reopen_finished
):
    """Find or create the experiment, then reopen the run of ``resume_key`` or create one."""
    experiment_id = _experiment_id(client, uri, experiment)
    all_tags = {"mlflow.parentRunId": parent_run_id, "ssft.run_key": resume_key, **(tags or {})}
    if resume_key is not None:
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`ssft.run_key` = '{resume_key}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if found and (reopen_finished or found[0].info.status != "FINISHED"):
            run_id, finished = found[0].info.run_id, found[0].info.status == "FINISHED"
            client.update_run(run_id, status="RUNNING")
            log.info("reopening MLflow run %s (%s) to continue it", run_id, resume_key)
            tracker = MLflowTracker(client, run_id, uri, local_dir=local_dir)
            tracker.resumed, tracker.reopened = not finished, True
            tracker.experiment_id = experiment_id
            return tracker
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={k: str(v) for k, v in all_tags.items() if v is not None},
    )
    tracker = MLflowTracker(client, run.info.run_id, uri, local_dir=local_dir)
    tracker.experiment_id = experiment_id
    return tracker


def _experiment_id(client, uri: str, experiment: str) -> str:
    """The experiment's id, created when missing: in a SQLite store with its artifacts in
    ``mlartifacts/<experiment>`` beside the database. An experiment that exists keeps the
    artifact location it was created with (e.g. an older ``./mlruns``)."""
    found = client.get_experiment_by_name(experiment)
    if found:
        return found.experiment_id
    root = local_artifact_root(uri)
    location = (root / _experiment_folder(experiment)).as_uri() if root is not None else None
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except Exception:  # another process of the same job created it meanwhile
        found = client.get_experiment_by_name(experiment)
        if found:
            return found.experiment_id
        raise
