"""Ray Tune sweep: SSFT over the number of forking tokens N x the matching cost (cost kind, prefix
L), with the baselines as extra trials; one MLflow parent run, one child run per trial.

Locally (embedded Ray; MLflow from MLFLOW_TRACKING_URI, else SQLite under runs/; builds the
trace sets first when data.train_path is null):
    python -m workflows.sweep --config workflows/configs/sweep_tiny.yaml \
        sweep.num_tags=2,4,6,8 sweep.costs=mean_nll,sum_nll sweep.prefixes=none,16 \
        sweep.baselines=sft_mixed,random [sweep.asha=true] [key=value ...]
On a cluster (several trials write at once: point MLFLOW_TRACKING_URI at an `mlflow server`,
e.g. from ops/local_services.sh, never at one SQLite file):
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m workflows.sweep --config workflows/configs/sweep_tiny.yaml \
        data.train_path=<shared path> sweep.output_dir=<shared path>

Each trial is a driver function that builds and fits a TorchTrainer around
``workflows.train.train_worker``; metrics reach Tune through ``TuneReportCallback`` (one report
per checkpoint, so set train.checkpoint_every for ASHA to have something to stop on). A crashing
trial does not stop the others; the parent run records it. Rerunning the same command resumes:
Tune restores the experiment under <sweep.output_dir>/<name>/tune (the grid is the saved one,
errored trials run again), and each trial's TorchTrainer, named after its trial id, resumes
from its last checkpoint; the MLflow parent and child runs are reopened, not duplicated.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from ssft.config import (
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    flatten_config,
    parse_cli,
)
from ssft.data.trace_set import read_trace_sets, trace_set_digest
from ssft.report.sweep import (
    apply_variant,
    grid,
    open_parent_run,
    report_to_parent,
    summary_rows,
)
from ssft.report.train import method_tags
from ssft.tracking import git_commit
from ssft.train.batching import planned_steps
from ssft.train.setup import check_training_data
from workflows import build_traces
from workflows.cli import preflight, run_main
from workflows.ray_runtime import absolute_paths, init_ray, ray_job_id, trainings_that_fit
from workflows.train import torch_trainer

# A trial's driver only waits on its TorchTrainer: it reserves some memory and no CPU, so that
# trials of one 1-CPU worker each fill the CPUs (Tune needs a non-empty resource request).
DRIVER_RESOURCES = {"cpu": 0, "memory": 256 * 1024**2}


# [1] The trial: a driver function that builds and fits one TorchTrainer (Train V2 style).
def train_trial(config: dict, base: dict, shared: dict) -> None:
    variant = config["variant"]
    trial_id = tune.get_context().get_trial_id()
    # Stable across restores (Tune keeps trial ids), so a rerun resumes this Train run.
    name = f"{shared['sweep']}-{variant['label']}-{trial_id}"
    cfg = apply_variant(config_from_dict(base), variant, name)
    tags = {
        **shared["tags"], **method_tags(cfg), "sweep.label": variant["label"],
        "trial_id": trial_id,
        # The tracker merges these tags over its own: this makes the run a child of the sweep.
        "mlflow.parentRunId": shared["parent_run_id"],
    }  # fmt: skip
    # [2] Every ray.train.report of the workers becomes a Tune result of this trial.
    trainer = torch_trainer(
        cfg, name, Path(shared["train_dir"]), tags, shared["tracking_uri"],
        parent_run_id=shared["parent_run_id"], callbacks=[TuneReportCallback()],
    )  # fmt: skip
    trainer.fit()


def _scheduler(cfg: ExperimentConfig, n_questions: int) -> ASHAScheduler | None:
    """ASHA on the training loss, one rung unit per report (= per checkpoint)."""
    if not cfg.sweep.asha:
        return None
    tc = cfg.train
    steps = planned_steps(n_questions, tc.questions_per_step, tc.epochs, tc.max_steps)
    every = cfg.train.checkpoint_every
    reports = math.ceil(steps / every) if every else 1
    if reports < 3:
        print(f"[sweep] sweep.asha: {reports} report(s) per trial leave ASHA nothing to stop; "
              "lower train.checkpoint_every", flush=True)  # fmt: skip
    return ASHAScheduler(time_attr="training_iteration", max_t=max(reports, 1), grace_period=1)


def _trial_name(trial) -> str:
    return f"{trial.config['variant']['label']}_{trial.trial_id}"


def _tuner(trainable, root: Path, variants: list[dict], tune_config: tune.TuneConfig):
    """Restore the sweep stored under ``root/tune`` if there is one, else start it."""
    path = root / "tune"
    if tune.Tuner.can_restore(str(path)):
        print(f"[sweep] resuming {path}: the saved grid runs, errored trials again", flush=True)
        return tune.Tuner.restore(str(path), trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={"variant": tune.grid_search(variants)},
        tune_config=tune_config,
        run_config=tune.RunConfig(name="tune", storage_path=str(root)),
    )


def run(cfg: ExperimentConfig) -> list[dict]:
    """Run (or resume) the sweep named ``cfg.name`` over the grid of ``cfg.sweep``; returns
    one summary row per trial."""
    sw = cfg.sweep
    outputs = {"sweep.output_dir": sw.output_dir}
    if cfg.data.train_path is None:
        outputs["build.output_dir"] = cfg.build.output_dir
    uri = preflight(outputs)  # MLflow and the folders, before any compute
    variants = grid(sw.num_tags, sw.costs, sw.prefixes, sw.baselines, cfg)
    trials = [apply_variant(cfg, v, cfg.name) for v in variants]  # each one valid, up front
    prebuilt = cfg.data.train_path is not None
    if prebuilt:  # bad data: one line now, not a failed trial per grid point
        cfg = absolute_paths(cfg).validate()
        sets = read_trace_sets(cfg.data.train_path)
        # Only the method and N change how the data is prepared (M > N, the shared tag).
        distinct = {(t.method, t.forking.num_tags): t for t in trials}
        for trial in distinct.values():
            check_training_data(dataclasses.replace(trial, data=cfg.data), sets)
    init_ray()
    if not prebuilt:
        traces = build_traces.run(cfg)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_path=str(traces)))
        cfg = absolute_paths(cfg).validate()
        sets = read_trace_sets(cfg.data.train_path)
    root = Path(sw.output_dir).resolve() / cfg.name
    concurrent = sw.max_concurrent_trials or trainings_that_fit(cfg.train)
    if uri.startswith("sqlite") and concurrent > 1:
        print("[sweep] MLflow is one SQLite file and trials write at once: on 'database is "
              "locked', use ops/local_services.sh start and its MLFLOW_TRACKING_URI")  # fmt: skip
    tags = {"dataset_digest": trace_set_digest(sets), "git_commit": git_commit(),
            "seed": cfg.seed, "ray_job_id": ray_job_id(), "sweep": cfg.name}  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    parent, reopened = open_parent_run(cfg, uri, {**tags, "stage": "sweep"}, local_dir=root)
    with parent:
        if not reopened:
            parent.log_params({f"base.{k}": v for k, v in flatten_config(cfg).items()})
        shared = {
            "sweep": cfg.name, "parent_run_id": parent.run_id, "tracking_uri": uri,
            "train_dir": str(root / "train"),
            "tags": {**tags, "stage": "train", "parallelism": cfg.train.parallelism},
        }  # fmt: skip
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, base=config_to_dict(cfg), shared=shared),
            DRIVER_RESOURCES,
        )
        tune_config = tune.TuneConfig(
            metric="loss", mode="min", scheduler=_scheduler(cfg, len(sets)),
            max_concurrent_trials=concurrent, trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        )  # fmt: skip
        print(f"[sweep] {cfg.name}: {len(variants)} trials, {concurrent} at a time; MLflow "
              f"parent run {parent.run_id} at {uri}", flush=True)  # fmt: skip
        results = _tuner(trainable, root, variants, tune_config).fit()
        rows = summary_rows(results, parent)
        report_to_parent(parent, rows, root / "summary")
    return rows


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    rows = run_main(lambda: run(parse_cli(sys.argv[1:] if argv is None else argv)))
    if any(r["status"] == "error" for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
