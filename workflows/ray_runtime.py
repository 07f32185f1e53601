"""Connecting to Ray the same way from a laptop and from ``ray job submit``.

Under ``ray job submit`` (or with ``RAY_ADDRESS`` exported) the driver joins that cluster
(a dashboard URL ``http://...:8265``, what ``ray job submit`` takes, means the local cluster).
Otherwise Ray starts embedded in this process (``address="local"``), so a stray
``ray start`` on the machine never captures a laptop run or a test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import ray

from ssft.config import ExperimentConfig


def init_ray(num_cpus: int | None = None) -> None:
    """``ray.init`` once: the cluster in ``RAY_ADDRESS`` if set, else an embedded local one."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        # The dashboard URL `ray job submit` uses; a driver joins that cluster's GCS instead.
        address = "auto"
    if address:
        ray.init(address=address, runtime_env=None, log_to_driver=True)
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
    port = _free_loopback_port()
    env = {
        "PYTHONPATH": _worker_pythonpath(),
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    }
    ray.init(
        address="local",
        num_cpus=num_cpus,
        runtime_env={"env_vars": env},
        log_to_driver=True,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
    )


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
    """This driver's job as ``ray job`` commands name it (a tag on every MLflow run): the
    submission id (``raysubmit_...``) under ``ray job submit``, else Ray's job id; None outside
    Ray."""
    if not ray.is_initialized():
        return None
    # The job supervisor hands the driver its metadata (with the submission id) in this JSON.
    try:
        job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except json.JSONDecodeError:
        job_config = {}
    submission_id = (job_config.get("metadata") or {}).get("job_submission_id")
    return submission_id or ray.get_runtime_context().get_job_id()


def absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """A copy of ``cfg`` whose local paths are absolute, resolved on the driver: Ray workers
    (and Ray Train, which changes directory) must find the same files. Trace sets, the model
    and tokenizer directories, and each teacher's local model and replay file."""

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
    return dataclasses.replace(cfg, data=data, model=model, build=build)
