"""Train SSFT or a baseline with Ray Train (TorchTrainer; DDP or FSDP; CPU gloo or GPU NCCL).

Locally (embedded Ray, SQLite MLflow under runs/):
    python -m workflows.train --config workflows/configs/tiny_cpu.yaml \
        data.train_path=<trace_sets.parquet> method=ssft name=tiny-ssft
On a cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m workflows.train --config <yaml> data.train_path=<shared path> name=<run>

Rerunning the same `name` resumes from its last checkpoint (Ray Train storage under
train.output_dir/<name>); the final model lands in train.output_dir/<name>/final_model, with
the MLflow run that trained it in final_model/mlflow_run.json (the run's resume key, tag
``ssft.run_key``, is `name` too).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import ray.train
import ray.train.torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

from ssft.config import (
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    flatten_config,
    parse_cli,
)
from ssft.data.trace_set import TraceSet
from ssft.report.train import log_tag_selection, log_training_artifacts, method_tags
from ssft.run_lock import run_lock, wait_until_free
from ssft.tracking import NullTracker, provenance_tags, start_run, write_run_record
from ssft.train.loop import TrainContext, train
from ssft.train.parallel import wrap_fsdp
from ssft.train.setup import check_training_data
from workflows import faults
from workflows.cli import preflight, run_main
from workflows.ray_runtime import (
    absolute_paths,
    init_ray,
    quiet_worker,
    ray_job_id,
    train_logging_config,
)
from workflows.rollout_tasks import ray_task_rollouts


def _wrapper(parallelism: str, world: int):
    """How workers share the model: DDP replicas (Ray's prepare_model) or FSDP2 shards."""
    if world == 1:
        return None
    return wrap_fsdp if parallelism == "fsdp" else ray.train.torch.prepare_model


# [1] The per-worker function: rebuild the typed config, open MLflow on rank 0 only, and run
#     the Ray-free loop with Ray's rank, device, checkpoint reporting and DDP/FSDP wrapping.
def train_worker(config: dict) -> None:
    quiet_worker()  # also on a cluster: drop Ray Train's per-report result dump
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg = config_from_dict(config["cfg"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    checkpoint = ray.train.get_checkpoint()
    tracker = NullTracker()
    if rank == 0:
        # The driver checked MLflow before starting; if it is gone by now (or when a restarted
        # worker resumes), training goes on and the calls are recorded in the run's folder.
        tracker = start_run(
            cfg.experiment, config.get("run_name") or cfg.name,
            tracking_uri=config["tracking_uri"], tags=config["tags"], resume_key=cfg.name,
            parent_run_id=config.get("parent_run_id"),  # a Tune trial's or the pipeline's
            local_dir=Path(config["final_dir"]).parent, offline_ok=True,
        )  # fmt: skip
        if checkpoint is None:
            tracker.log_params(flatten_config(cfg))

    def report(metrics: dict, ckpt_dir: Path | None) -> None:
        # [2] A barrier: every rank reports at the same steps; rank 0 attaches the checkpoint.
        ckpt = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    # Rank 0 writes the run directory (checkpoints, final model): one writer at a time, even
    # when the worker of a killed driver is still finishing its step.
    lock = run_lock(Path(config["final_dir"]).parent) if rank == 0 else contextlib.nullcontext()
    with (
        lock,
        tracker,
        checkpoint.as_directory() if checkpoint else tempfile.TemporaryDirectory() as d,
    ):
        ctx = TrainContext(
            rank=rank, world_size=world, device=ray.train.torch.get_device(), tracker=tracker,
            report=report, resume_from=Path(d) if checkpoint else None,
            wrap_model=_wrapper(cfg.train.parallelism, world),
            before_step=faults.before_train_step(rank, cfg.name),  # tests only ($SSFT_FAULT_DIR)
            final_dir=Path(config["final_dir"]),
            rollouts=ray_task_rollouts if cfg.gfpo.rollout_tasks else None,  # GFPO's, on Ray
        )  # fmt: skip
        result = train(cfg, ctx)
        if rank == 0:
            if result.final_dir is not None:  # the model folder names its run (evaluations)
                write_run_record(result.final_dir, tracker)
            log_training_artifacts(tracker, cfg, result.matching, result.final_dir)
            log_tag_selection(tracker, result.selection)


def torch_trainer(
    cfg: ExperimentConfig, name: str, storage: Path, tags: dict, tracking_uri: str,
    parent_run_id: str | None = None, callbacks: list | None = None,
    run_name: str | None = None,
) -> ray.train.torch.TorchTrainer:  # fmt: skip
    """The TorchTrainer of one training (``workflows.train`` and each sweep trial): workers run
    ``train_worker``; Ray Train storage, and so resuming, is ``storage/name``; the final model
    lands in ``storage/name/final_model``. ``run_name``: the MLflow run's display name
    (default ``cfg.name``, which stays its resume key)."""
    return ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config={
            "cfg": config_to_dict(cfg),
            "final_dir": str(storage / name / "final_model"),
            "tags": tags,
            "tracking_uri": tracking_uri,
            "parent_run_id": parent_run_id,
            "run_name": run_name,
        },
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=callbacks or None,
            logging_config=train_logging_config(),  # Ray Train's INFO chatter off (SSFT_RAY_LOGS)
        ),
    )


def run(
    cfg: ExperimentConfig, sets: list[TraceSet] | None = None, *,
    parent_run_id: str | None = None, run_name: str | None = None,
) -> Path:  # fmt: skip
    """Fit (or resume) the training named ``cfg.name``; returns the final model directory.

    ``sets``: the trace sets of ``cfg.data.train_path`` when the caller has read them (the
    pipeline reads the file once for all its trainings). ``parent_run_id``, ``run_name``: the
    pipeline's MLflow run (this run is its child) and a short display name for this run."""
    uri = preflight({"train.output_dir": cfg.train.output_dir})  # before any compute
    # Ray Train workers run in their own directory: hand them absolute paths.
    cfg = absolute_paths(cfg)
    digest = check_training_data(cfg, sets)  # before Ray: bad data fails fast, in one line
    storage = Path(cfg.train.output_dir).resolve()
    final_dir = storage / cfg.name / "final_model"
    wait_until_free(final_dir.parent)  # a live earlier attempt (a killed driver's worker)
    init_ray()
    tags = {"stage": "train", **method_tags(cfg), "dataset_digest": digest,
            **provenance_tags(), "seed": cfg.seed, "parallelism": cfg.train.parallelism,
            "ssft.name": cfg.name, "ray_job_id": ray_job_id()}  # fmt: skip
    # [3] The driver: a stable run name (cfg.name), so rebuilding the same trainer resumes.
    trainer = torch_trainer(cfg, cfg.name, storage, tags, uri, parent_run_id=parent_run_id,
                            run_name=run_name)  # fmt: skip
    result = trainer.fit()
    print(f"[train] {cfg.name}: finished; final model in {final_dir}", flush=True)
    print(f"[train] last checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    return final_dir


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    run_main(lambda: run(parse_cli(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
