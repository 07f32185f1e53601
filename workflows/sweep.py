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
per checkpoint, so set train.checkpoint_every for ASHA to have something to stop on). With
sweep.evaluate=true the trial then evaluates its final model (``workflows.evaluate.run``, in a
task of its own: see ``evaluate_trial``) and reports the figures to Tune with its last training
ones; the summary ranks the trials by sweep.rank_by. A crashing trial does not stop the others;
the parent run records it (a failed evaluation: status eval_error). Rerunning the same command
resumes: Tune restores the experiment under <sweep.output_dir>/<name>/tune (the grid is the
saved one, errored trials run again), and each trial's TorchTrainer, named after its trial id,
resumes from its last checkpoint; the MLflow parent and child runs are reopened, not
duplicated. Finished trials are not run again: a rerun with another sweep.rank_by ranks the
same results anew.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ssft.config import (
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    flatten_config,
    parse_cli,
)
from ssft.data.question_sources import held_out_questions
from ssft.data.trace_set import read_trace_sets, trace_set_digest
from ssft.errors import InputError
from ssft.report.sweep import (
    EVAL_COLUMNS,
    apply_variant,
    error_text,
    grid,
    not_applicable,
    open_parent_run,
    rank_rows,
    report_to_parent,
    summary_rows,
)
from ssft.report.train import method_tags
from ssft.tracking import provenance_tags, start_run
from ssft.train.batching import planned_steps
from ssft.train.setup import check_training_data
from workflows import build_traces, evaluate
from workflows.cli import preflight, run_main
from workflows.ray_runtime import (
    absolute_paths,
    init_ray,
    ray_job_id,
    trainings_that_fit,
    tune_verbosity,
)
from workflows.train import torch_trainer

# A trial's driver only waits on its TorchTrainer: it reserves some memory and no CPU, so that
# trials of one 1-CPU worker each fill the CPUs (Tune needs a non-empty resource request).
DRIVER_RESOURCES = {"cpu": 0, "memory": 256 * 1024**2}


def trial_name(sweep: str, label: str, trial_id: str) -> str:
    """A trial's training (and evaluation) name: stable across restores (Tune keeps trial
    ids), so a rerun resumes this Train run."""
    return f"{sweep}-{label}-{trial_id}"


# [1] The trial: a driver function that builds and fits one TorchTrainer (Train V2 style).
def train_trial(config: dict, base: dict, shared: dict) -> None:
    variant = config["variant"]
    trial_id = tune.get_context().get_trial_id()
    name = trial_name(shared["sweep"], variant["label"], trial_id)
    cfg = apply_variant(config_from_dict(base), variant, name)
    tags = {
        **shared["tags"], **method_tags(cfg), **not_applicable(cfg.method),
        "sweep.label": variant["label"], "trial_id": trial_id,
        # The tracker merges these tags over its own: this makes the run a child of the sweep.
        "mlflow.parentRunId": shared["parent_run_id"],
    }  # fmt: skip
    # [2] Every ray.train.report of the workers becomes a Tune result of this trial.
    trainer = torch_trainer(
        cfg, name, Path(shared["train_dir"]), tags, shared["tracking_uri"],
        parent_run_id=shared["parent_run_id"], callbacks=[TuneReportCallback()],
    )  # fmt: skip
    result = trainer.fit()
    if shared["evaluate"]:
        # [3] The last result of the trial: its training figures and its evaluation's.
        final_dir = Path(shared["train_dir"]) / name / "final_model"
        tune.report({**(result.metrics or {}), **evaluate_trial(cfg, final_dir, shared)})


@ray.remote(num_cpus=0, max_retries=1)
def _evaluate_task(cfg_dict: dict, tracking_uri: str, parent_run_id: str) -> dict[str, float]:
    """``workflows.evaluate.run`` of one model; its MLflow run goes where the sweep's go, a
    child of the sweep's parent beside the trial's run (which gets its headline figures)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # a pooled worker: put it back after
    try:
        return evaluate.run(config_from_dict(cfg_dict), parent_run_id=parent_run_id)[1]
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def evaluate_trial(cfg: ExperimentConfig, final_dir: Path, shared: dict) -> dict:
    """Evaluate a trial's final model on the held-out questions (``cfg.eval``), as
    ``workflows.evaluate`` does: outputs in ``<eval_dir>/<trial name>``, an MLflow run
    ``eval-<trial name>``, the headline figures copied onto the trial's run (``eval/pass1``,
    ...), which this tags ``eval.status`` (and ``eval.error``). Returns what the trial reports
    to Tune: ``eval_status`` ("ok" or "error"), ``eval_error``, and ``eval/<column>`` for each
    ``EVAL_COLUMNS`` column the evaluation has. Never raises: a failed evaluation leaves the
    training result as it is.

    The trial's process holds no CPU and Tune schedules its tasks into the trial's placement
    group (one bundle of ``DRIVER_RESOURCES``), where an evaluation shard (1 CPU) cannot go. So
    the evaluation runs in a 0-CPU task outside that group, and its shards take the CPUs that
    the TorchTrainer's workers gave back when fit() returned."""
    out_dir = Path(shared["eval_dir"]) / cfg.name
    eval_cfg = dataclasses.replace(
        cfg, eval=dataclasses.replace(cfg.eval, model_dir=str(final_dir),
                                      output_dir=shared["eval_dir"]),
    )  # fmt: skip
    outside = PlacementGroupSchedulingStrategy(placement_group=None)
    task = _evaluate_task.options(scheduling_strategy=outside)
    try:
        metrics = ray.get(task.remote(config_to_dict(eval_cfg), shared["tracking_uri"],
                                      shared["parent_run_id"]))  # fmt: skip
    except Exception as err:  # the training result stays; the row says eval_error and why
        error = error_text(err)
        print(f"[sweep] {cfg.name}: evaluation failed: {error}", flush=True)
        _tag_trial_run(cfg, shared, {"eval.status": "error", "eval.error": error})
        return {"eval_status": "error", "eval_error": error}
    _tag_trial_run(cfg, shared, {"eval.status": "ok", "eval.output_dir": str(out_dir)})
    figures = {f"eval/{c}": float(metrics[key]) for c, key in EVAL_COLUMNS.items()
               if key in metrics}  # fmt: skip
    return {"eval_status": "ok", **figures}


def _tag_trial_run(cfg: ExperimentConfig, shared: dict, tags: dict) -> None:
    """Reopen the trial's (finished) training run, tag it, close it again; never raises (an
    MLflow that is gone: the calls are recorded in the evaluation's folder)."""
    with start_run(
        cfg.experiment, cfg.name, tracking_uri=shared["tracking_uri"], resume_key=cfg.name,
        parent_run_id=shared["parent_run_id"], reopen_finished=True,
        local_dir=Path(shared["eval_dir"]) / cfg.name, offline_ok=True,
    ) as run:  # fmt: skip
        run.set_tags(tags)


def _scheduler(cfg: ExperimentConfig, n_questions: int) -> ASHAScheduler | None:
    """ASHA on the training loss, one rung unit per report (= per checkpoint). A trial that
    reaches the last rung is not stopped there: it writes its final model, closes its run and,
    with sweep.evaluate, evaluates."""
    if not cfg.sweep.asha:
        return None
    tc = cfg.train
    steps = planned_steps(n_questions, tc.questions_per_step, tc.epochs, tc.max_steps)
    every = cfg.train.checkpoint_every
    reports = math.ceil(steps / every) if every else 1
    if reports < 3:
        print(f"[sweep] sweep.asha: {reports} report(s) per trial leave ASHA nothing to stop; "
              "lower train.checkpoint_every", flush=True)  # fmt: skip
    return ASHAScheduler(time_attr="training_iteration", max_t=max(reports, 1), grace_period=1,
                         stop_last_trials=False)  # fmt: skip


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
        run_config=tune.RunConfig(name="tune", storage_path=str(root), verbose=tune_verbosity()),
    )


def _evaluation_inputs(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with the evaluation's question files absolute (trials run in other folders),
    after checking that the held-out questions load: a bad file is one line now, not an
    eval_error per trial."""

    def local(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path and Path(path).exists() else path

    cfg = dataclasses.replace(
        cfg, build=dataclasses.replace(cfg.build, questions_path=local(cfg.build.questions_path)),
        eval=dataclasses.replace(cfg.eval, questions_path=local(cfg.eval.questions_path)),
    )  # fmt: skip
    source = cfg.eval.questions_path or f"build.questions={cfg.build.questions} {cfg.eval.split}"
    if not held_out_questions(cfg.build, cfg.eval)[0]:
        raise InputError(f"sweep.evaluate=true, but {source} holds no held-out questions: set "
                         "eval.questions_path or eval.split, or sweep.evaluate=false.")  # fmt: skip
    return cfg


def run(cfg: ExperimentConfig) -> list[dict]:
    """Run (or resume) the sweep named ``cfg.name`` over the grid of ``cfg.sweep``; returns
    one summary row per trial (grid order, each with its ``rank`` by ``sweep.rank_by``)."""
    sw = cfg.sweep
    outputs = {"sweep.output_dir": sw.output_dir}
    if cfg.data.train_path is None:
        outputs["build.output_dir"] = cfg.build.output_dir
    uri = preflight(outputs)  # MLflow and the folders, before any compute
    variants = grid(sw.num_tags, sw.costs, sw.prefixes, sw.baselines, cfg)
    trials = [apply_variant(cfg, v, cfg.name) for v in variants]  # each one valid, up front
    if sw.evaluate:
        cfg = _evaluation_inputs(cfg)
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
    tags = {"dataset_digest": trace_set_digest(sets), **provenance_tags(),
            "seed": cfg.seed, "ray_job_id": ray_job_id(), "sweep": cfg.name}  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    parent, reopened = open_parent_run(cfg, uri, {**tags, "stage": "sweep"}, local_dir=root)
    with parent:
        if not reopened:
            parent.log_params({f"base.{k}": v for k, v in flatten_config(cfg).items()})
        shared = {
            "sweep": cfg.name, "parent_run_id": parent.run_id, "tracking_uri": uri,
            "train_dir": str(root / "train"), "eval_dir": str(root / "eval"),
            "evaluate": sw.evaluate,
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
        rows = rank_rows(summary_rows(results, parent), sw.ranked_by)
        report_to_parent(parent, rows, root / "summary", sw.ranked_by)
        for row in (r for r in rows if r["status"] == "eval_error"):
            model = root / "train" / trial_name(cfg.name, row["label"], row["trial_id"])
            print(f"[sweep] {row['label']}: its evaluation failed ({row['error']}); a rerun does "
                  f"not repeat it. Evaluate it alone: python -m workflows.evaluate --config "
                  f"<this config> eval.model_dir={model / 'final_model'} "
                  f"name={row['label']}", flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    rows = run_main(lambda: run(parse_cli(sys.argv[1:] if argv is None else argv)))
    if any(r["status"] in ("error", "eval_error") for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
