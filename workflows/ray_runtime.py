"""Connecting to Ray the same way from a laptop and from ``ray job submit``.

Under ``ray job submit`` (or with ``RAY_ADDRESS`` exported) the driver joins that cluster
(a dashboard URL ``http://...:8265``, what ``ray job submit`` takes, means the local cluster).
Otherwise Ray starts embedded in this process (``address="local"``), so a stray
``ray start`` on the machine never captures a laptop run or a test.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
from pathlib import Path

import ray

from ssft.config import ExperimentConfig


def init_ray(num_cpus: int | None = None) -> None:
    """``ray.init`` once: the cluster in ``RAY_ADDRESS`` if set, else an embedded local one.

    The console shows every line of ours once and little of Ray's own (see ``quiet_ray``);
    ``SSFT_RAY_LOGS=1`` shows Ray's start-up, controller and worker-group lines again.
    """
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        # The dashboard URL `ray job submit` uses; a driver joins that cluster's GCS instead.
        address = "auto"
    quiet_ray()
    level = logging.INFO if ray_logs_shown() else logging.WARNING
    if address:
        context = ray.init(address=address, runtime_env=None, log_to_driver=True,
                           logging_level=level)  # fmt: skip
        gcs = (context.address_info or {}).get("gcs_address") or address
        _say_where(context, f"Connected to the Ray cluster at {gcs}")
        return
    # Local workers get the driver's import path for `ssft` and `workflows` (and its working
    # directory and PYTHONPATH), so `python -m workflows.x` runs from any folder.
    # Ray Train's PlacementGroupCleaner asks the state API (served by the dashboard) whether
    # the training's controller is alive. Without a dashboard every poll fails with a warning;
    # without an address it looks for "the" Ray on the machine and raises "Found multiple
    # active Ray instances" when another one runs. So the embedded Ray gets its dashboard on
    # a loopback port chosen here, and every worker is told where it is.
    # Ray Train's print patch tees each worker print to stdout and, through the root logger,
    # to stderr: every line would reach the driver twice (ops/runtime_env.yaml does the same).
    # Its preemption watcher (nothing preempts a laptop's node) logs a core-worker error line
    # from every training's controller.
    port = _free_loopback_port()
    env = {
        "PYTHONPATH": _worker_pythonpath(),
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    }
    context = ray.init(
        address="local",
        num_cpus=num_cpus,
        runtime_env={"env_vars": env, "worker_process_setup_hook": f"{__name__}.quiet_worker"},
        log_to_driver=True,
        logging_level=level,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
    )
    # The same words as Ray's own line, which the log level above hides (tests look for them).
    _say_where(context, "Started a local Ray instance")


RAY_LOGS_ENV = "SSFT_RAY_LOGS"


def ray_logs_shown() -> bool:
    """``SSFT_RAY_LOGS=1``: Ray's own INFO lines reach the console (start-up, Ray Train's
    controller and worker group, checkpoint reports); otherwise warnings and errors only."""
    return os.environ.get(RAY_LOGS_ENV, "").strip().lower() not in ("", "0", "false", "no")


def train_log_level() -> str:
    """The ``ray.train.LoggingConfig(log_level=...)`` of every training (``RunConfig``)."""
    return "INFO" if ray_logs_shown() else "WARNING"


def train_logging_config():
    """``RunConfig(logging_config=...)`` for Ray Train: its INFO lines ("Requesting
    resources", "Started training worker group", "Setting up process group", "Checkpoint
    successfully created", the "Reporting training result ... metrics={...}" dump) only with
    ``SSFT_RAY_LOGS=1``. They are still in Ray's session logs (``logs/train/``)."""
    import ray.train

    return ray.train.LoggingConfig(log_level=train_log_level())


def tune_verbosity() -> int:
    """``tune.RunConfig(verbose=...)`` of a sweep: 0 (silent) unless ``SSFT_RAY_LOGS=1`` (1:
    Tune's configuration box, a trial-status table every 30 s, each trial's config and its
    last result as boxes). Each trial's training prints its own step lines with an ETA, and
    the sweep its summary table."""
    return 1 if ray_logs_shown() else 0


def quiet_ray() -> None:
    """Driver-side settings for how worker lines are shown; the environment wins if it says.

    - Ray's log deduplication buffers lines that match "ignoring words with numbers" across
      processes for 5 s and then prints one with "[repeated Nx across cluster]": two
      trainings' ``[train <name>] step ...`` lines are such lines, so steps vanished and the
      rest came late and out of order. Off, unless ``RAY_DEDUP_LOGS`` is set. Ray reads that
      variable when it is imported, so the flag is also turned off in the module that reads it.
    - The colour codes around each ``(RayTrainWorker pid=...)`` prefix are kept for a terminal
      only, not for a file or a pipe (``RAY_COLOR_PREFIX``, read at each line).
    """
    if "RAY_DEDUP_LOGS" not in os.environ:
        os.environ["RAY_DEDUP_LOGS"] = "0"  # for child processes that import Ray
        try:
            import ray._private.ray_logging as ray_logging

            ray_logging.RAY_DEDUP_LOGS = False
        except (ImportError, AttributeError):  # pragma: no cover - a Ray that moved it
            pass
    if "RAY_COLOR_PREFIX" not in os.environ and not _is_terminal():
        os.environ["RAY_COLOR_PREFIX"] = "0"


def quiet_worker() -> None:
    """Each worker process of the embedded Ray runs this first (``worker_process_setup_hook``);
    nothing with ``SSFT_RAY_LOGS=1``.

    - Ray Train logs "Reporting training result N: TrainingReport(checkpoint=...,
      metrics={...})" at every report through a logger named after its file, outside
      ``ray.train``, so ``train_logging_config`` does not reach it: WARNING here. (On a
      cluster, where this hook does not run, a training worker may call this itself.)
    - A training's controller registers its workers' resources with Ray's autoscaling
      coordinator, an actor it creates on first use and waits 5 s for; on a busy laptop that
      times out and logs a warning with a traceback, in a run that then trains normally. An
      embedded Ray has no autoscaler: only errors of that client are shown. (A filter, not a
      level: Ray Train's logging set-up resets the levels of the loggers under ``ray.train``.)
    """
    if ray_logs_shown():
        return
    train = Path(ray.__file__).parent / "train" / "v2" / "_internal" / "execution"
    logging.getLogger(str(train / "context.py")).setLevel(logging.WARNING)
    coordinator = logging.getLogger(
        "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"
    )
    if not any(isinstance(f, _ErrorsOnly) for f in coordinator.filters):
        coordinator.addFilter(_ErrorsOnly())


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def _say_where(context, what: str) -> None:
    """One line on stderr instead of Ray's start-up lines: where its dashboard and logs are."""
    if ray_logs_shown():
        return  # Ray says it itself
    dashboard = getattr(context, "dashboard_url", None) or ""
    if dashboard and "://" not in dashboard:
        dashboard = f"http://{dashboard}"
    session = (getattr(context, "address_info", None) or {}).get("session_dir")
    where = [f"dashboard {dashboard}" if dashboard else None,
             f"logs {session}/logs" if session else None,
             f"{RAY_LOGS_ENV}=1 prints Ray's own lines here"]  # fmt: skip
    print(f"[ray] {what} ({'; '.join(w for w in where if w)})", file=sys.stderr, flush=True)


def _worker_pythonpath() -> str:
    """Where this driver imports ``ssft`` and ``workflows`` from, then its working directory
    and its own PYTHONPATH: a worker imports the same code the driver runs."""
    import ssft
    import workflows

    roots = [str(Path(m.__file__).resolve().parent.parent) for m in (ssft, workflows)]
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys([*roots, os.getcwd(), *inherited]))


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trainings_that_fit(train_cfg) -> int:
    """Trainings that run at once on this Ray: free GPUs (or CPUs) over each training's
    workers (``train.num_workers``), at least 1."""
    free = ray.available_resources()
    workers = train_cfg.num_workers
    if train_cfg.use_gpu:
        return max(1, int(free.get("GPU", 0) // workers))
    return max(1, int(free.get("CPU", 1) // workers))


def ray_job_id() -> str | None:
    """The submission id (``raysubmit_...``) of the ``ray job submit`` job this driver runs in,
    what ``ray job logs/status`` take (a tag on every MLflow run); None otherwise: an embedded
    Ray's job id (``01000000``, the same in every laptop run) names nothing to look up."""
    explicit = os.environ.get("RAY_JOB_SUBMISSION_ID")
    if explicit:
        return explicit
    # The job supervisor hands the driver its metadata (with the submission id) in this JSON.
    try:
        job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except json.JSONDecodeError:
        job_config = {}
    metadata = job_config.get("metadata") if isinstance(job_config, dict) else None
    return (metadata or {}).get("job_submission_id") or None


def absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """A copy of ``cfg`` whose local paths are absolute, resolved on the driver: Ray workers
    (and Ray Train, which changes directory) must find the same files. Trace sets, the model
    and tokenizer directories, GFPO's starting model, and each teacher's local model and replay
    file."""

    def resolve(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path else path

    def local(path: str | None) -> str | None:  # a hub id that is no local path stays as is
        return resolve(path) if path and Path(path).exists() else path

    data = dataclasses.replace(
        cfg.data, train_path=resolve(cfg.data.train_path), eval_path=resolve(cfg.data.eval_path)
    )
    model = cfg.model
    if model.init == "pretrained":
        model = dataclasses.replace(model, name_or_path=local(model.name_or_path))
    if model.tokenizer and model.tokenizer != "char":
        model = dataclasses.replace(model, tokenizer=local(model.tokenizer))
    teachers = [
        dataclasses.replace(t, model=local(t.model), replay_path=local(t.replay_path))
        for t in cfg.build.teachers
    ]
    build = dataclasses.replace(cfg.build, teachers=teachers)
    gfpo = dataclasses.replace(cfg.gfpo, init_from=local(cfg.gfpo.init_from))
    return dataclasses.replace(cfg, data=data, model=model, build=build, gfpo=gfpo)
