"""Connecting to Ray the same way from a laptop and from ``ray job submit``.

Under ``ray job submit`` (or with ``RAY_ADDRESS`` exported) the driver joins that cluster
(a dashboard URL ``http://...:8265``, what ``ray job submit`` takes, means the local cluster).
Otherwise Ray starts embedded in this process (``address="local"``), so a stray
``ray start`` on the machine never captures a laptop run or a test.
"""

from __future__ import annotations

import json
import os

import ray


def init_ray(num_cpus: int | None = None) -> None:
    """``ray.init`` once: the cluster in ``RAY_ADDRESS`` if set, else an embedded local one."""
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        # The dashboard URL `ray job submit` uses; a driver joins that cluster's GCS instead.
        address = "auto"
    # The driver's working directory is shipped to local workers via PYTHONPATH, so
    # `python -m workflows.x` from the repo root finds `ssft` and `workflows` in every worker.
    runtime_env = None if address else {"env_vars": {"PYTHONPATH": os.getcwd()}}
    ray.init(
        address=address or "local",
        num_cpus=None if address else num_cpus,
        runtime_env=runtime_env,
        log_to_driver=True,
        include_dashboard=False if not address else None,
    )


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
