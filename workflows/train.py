"""Train SSFT or a baseline with Ray Train (TorchTrainer; DDP or FSDP; CPU gloo or GPU NCCL).

Locally (embedded Ray, SQLite MLflow under runs/):
    python -m workflows.train --config workflows/configs/tiny_cpu.yaml \
        data.train_path=<trace_sets.parquet> method=ssft name=tiny-ssft
On a cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m workflows.train --config <yaml> data.train_path=<shared path> name=<run>

Rerunning the same `name` resumes from its last checkpoint (Ray Train storage under
train.output_dir/<name>); the final model lands in train.output_dir/<name>/final_model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
import time
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
from ssft.data.trace_set import TraceSet, read_trace_sets, trace_set_digest
from ssft.errors import ConfigError, InputError
from ssft.method.forking_tokens import add_forking_tokens
from ssft.models import load_tokenizer
from ssft.report.train import log_tag_selection, log_training_artifacts
from ssft.run_lock import run_lock, wait_until_free
from ssft.tracking import NullTracker, git_commit, start_run
from ssft.train.loop import TrainContext, train
from ssft.train.parallel import wrap_fsdp
from ssft.train.setup import load_training_data
from workflows.cli import preflight, run_main
from workflows.ray_runtime import init_ray, ray_job_id


def _crash_hook(rank: int, run_name: str):
    """Fault-injection hook for tests, in ``$SSFT_FAULT_DIR``:

    - ``crash-train-step-<k>``: rank 0 dies (process exit) when it reaches step k, once (the
      file is removed).
    - ``crash-train-always-step-<k>``: rank 0 of every run whose name contains the file's
      text (empty: every run) dies at step k on every attempt; each death appends the run
      name to ``<file>.hits``, so a test can count the attempts.
    - ``pause-train-step-<k>``: rank 0 writes ``<file>.reached`` at step k and waits until
      the file is removed (a test does something to the world meanwhile, e.g. kills MLflow).

    It dies a few seconds late: Train V2's controller collects reported checkpoints when it
    polls the workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, default 2 s), and a checkpoint
    reported less than one poll before a worker dies is lost (the rerun then starts from an
    older checkpoint, or from scratch). Waiting makes "resumes from the last checkpoint"
    what the tests see.
    """
    fault_dir = os.environ.get("SSFT_FAULT_DIR")
    poll_s = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))

    def before_step(step: int) -> None:
        if not fault_dir or rank != 0:
            return
        pause = Path(fault_dir) / f"pause-train-step-{step}"
        if pause.exists():
            pause.with_name(pause.name + ".reached").write_text(run_name)
            while pause.exists():
                time.sleep(0.1)
        once = Path(fault_dir) / f"crash-train-step-{step}"
        always = Path(fault_dir) / f"crash-train-always-step-{step}"
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


def _wrapper(parallelism: str, world: int):
    """How workers share the model: DDP replicas (Ray's prepare_model) or FSDP2 shards."""
    if world == 1:
        return None
    return wrap_fsdp if parallelism == "fsdp" else ray.train.torch.prepare_model


# [1] The per-worker function: rebuild the typed config, open MLflow on rank 0 only, and run
#     the Ray-free loop with Ray's rank, device, checkpoint reporting and DDP/FSDP wrapping.
def train_worker(config: dict) -> None:
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
            cfg.experiment,
            cfg.name,
            tracking_uri=config["tracking_uri"],
            tags=config["tags"],
            resume_key=cfg.name,
            parent_run_id=config.get("parent_run_id"),  # a Tune trial's child run
            local_dir=Path(config["final_dir"]).parent,
            offline_ok=True,
        )
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
            rank=rank,
            world_size=world,
            device=ray.train.torch.get_device(),
            tracker=tracker,
            report=report,
            resume_from=Path(d) if checkpoint else None,
            wrap_model=_wrapper(cfg.train.parallelism, world),
            before_step=_crash_hook(rank, cfg.name),
            final_dir=Path(config["final_dir"]),
        )
        result = train(cfg, ctx)
        if rank == 0:
            log_training_artifacts(tracker, cfg, result.matching, result.final_dir)
            log_tag_selection(tracker, result.selection)


def absolute_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """A copy of ``cfg`` whose data and model paths are absolute (resolved on the driver)."""

    def resolve(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path else path

    data = dataclasses.replace(
        cfg.data, train_path=resolve(cfg.data.train_path), eval_path=resolve(cfg.data.eval_path)
    )
    model = cfg.model
    if model.init == "pretrained" and model.name_or_path and Path(model.name_or_path).exists():
        model = dataclasses.replace(model, name_or_path=resolve(model.name_or_path))
    if model.tokenizer and model.tokenizer != "char" and Path(model.tokenizer).exists():
        model = dataclasses.replace(model, tokenizer=resolve(model.tokenizer))
    return dataclasses.replace(cfg, data=data, model=model)


def check_training_data(cfg: ExperimentConfig, sets: list[TraceSet] | None = None) -> str:
    """Validate and prepare ``cfg``'s training data on the driver; returns its digest.

    Runs before Ray starts, so bad data costs a second and one line naming the file, row and
    field (``workflows.cli.run_main``), not a Ray-wrapped traceback from every worker. The trace
    sets are read and validated, then tokenized as every worker will tokenize them: the
    configured tokenizer with the forking tokens added (no model is loaded), the same
    ``load_training_data``. That raises on more usable traces than tags (M > N, with
    ``data.too_many_traces=error``) and on an overlong trace (``data.overlong=error``).
    ``sets``: the file's trace sets when the caller has read them already.
    """
    path = cfg.data.train_path
    if path is None:
        raise ConfigError(
            "data.train_path=null: training needs trace sets. Set data.train_path=<path to the "
            "trace_sets.parquet written by workflows.build_traces>."
        )
    sets = read_trace_sets(path) if sets is None else sets
    digest = trace_set_digest(sets)
    tokenizer = load_tokenizer(cfg.model)
    f = cfg.forking
    add_forking_tokens(tokenizer, num_tags=f.num_tags, tag_format=f.tag_format,
                       shared_tag=f.shared_tag)  # fmt: skip
    questions, prep = load_training_data(cfg, tokenizer, path, sets)
    if not questions:
        raise InputError(
            f"trace set file {path!r}: no trainable question ({prep.summary()}). Every question "
            "lost all its traces to the reasons listed; raise data.max_seq_len if they are "
            "overlong, or rebuild the trace sets if none is correct."
        )
    return digest


def method_tags(cfg: ExperimentConfig) -> dict:
    """The MLflow tags that say what a training run trained (runs table columns)."""
    m = cfg.matching
    return {"method": cfg.method, "num_tags": cfg.forking.num_tags, "cost": m.cost,
            "prefix_tokens": m.prefix_tokens or "all"}  # fmt: skip


def torch_trainer(
    cfg: ExperimentConfig,
    name: str,
    storage: Path,
    tags: dict,
    tracking_uri: str,
    parent_run_id: str | None = None,
    callbacks: list | None = None,
) -> ray.train.torch.TorchTrainer:
    """The TorchTrainer of one training (``workflows.train`` and each sweep trial): workers run
    ``train_worker``; Ray Train storage, and so resuming, is ``storage/name``; the final model
    lands in ``storage/name/final_model``."""
    return ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config={
            "cfg": config_to_dict(cfg),
            "final_dir": str(storage / name / "final_model"),
            "tags": tags,
            "tracking_uri": tracking_uri,
            "parent_run_id": parent_run_id,
        },
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=callbacks or None,
        ),
    )


def run(cfg: ExperimentConfig) -> Path:
    """Fit (or resume) the training named ``cfg.name``; returns the final model directory."""
    uri = preflight({"train.output_dir": cfg.train.output_dir})  # before any compute
    # Ray Train workers run in their own directory: hand them absolute paths.
    cfg = absolute_paths(cfg)
    digest = check_training_data(cfg)  # before Ray: bad data fails fast, in one line
    storage = Path(cfg.train.output_dir).resolve()
    final_dir = storage / cfg.name / "final_model"
    wait_until_free(final_dir.parent)  # a live earlier attempt (a killed driver's worker)
    init_ray()
    tags = {"stage": "train", **method_tags(cfg), "dataset_digest": digest,
            "git_commit": git_commit(), "seed": cfg.seed, "parallelism": cfg.train.parallelism,
            "ray_job_id": ray_job_id()}  # fmt: skip
    # [3] The driver: a stable run name (cfg.name), so rebuilding the same trainer resumes.
    result = torch_trainer(cfg, cfg.name, storage, tags, uri).fit()
    print(f"[train] {cfg.name}: finished; final model in {final_dir}", flush=True)
    print(f"[train] last checkpoint: {result.checkpoint.path if result.checkpoint else None}")
    return final_dir


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    run_main(lambda: run(parse_cli(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
