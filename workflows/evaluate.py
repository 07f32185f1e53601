"""Evaluate one trained model: tag-conditioned samples, Pass@1, Cons@k, pass@k, diagnostics.

Locally (embedded Ray, SQLite MLflow under runs/):
    python -m workflows.evaluate --config workflows/configs/tiny_cpu.yaml name=tiny-ssft
    python -m workflows.evaluate --config <yaml> eval.model_dir=<final_model dir> name=<label>
On a cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m workflows.evaluate --config <yaml> eval.model_dir=<shared path> name=<label>

Questions come from build.questions (eval.split, eval.num_questions); samples and metrics go
to eval.output_dir/<name>/ and to an MLflow run "eval-<name>" (the pipeline names it after
its training run: eval-<variant>-n<N>-s<seed>), open for as long as the evaluation runs. The
run is linked to the training run that wrote the model (tag ``ssft.train_run_id`` and a link
in its description), found through the model folder's ``mlflow_run.json`` or, failing that,
the training's name (``ssft.run_key``); its headline metrics are copied onto that training
run as ``eval/<metric>``, so the runs table sorts trained models by Pass@1.

With eval.self_selected=true each task also lets the model pick its own tag
(``evaluate_questions(self_selected=True)``): those rows join the samples file, their
``self/`` metrics the others, and the per-question tag distribution goes to MLflow as the
table ``eval/tag_distribution.json`` (``ssft.report.eval``), so a model trained on the tag
choice (GFPO) is judged beside the fixed-tag figures.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import ray

from ssft.config import (
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    flatten_config,
    parse_cli,
)
from ssft.data.question_sources import held_out_questions
from ssft.data.teachers.base import Question
from ssft.eval.evaluation import (
    check_self_selected,
    compute_metrics,
    evaluate_questions,
    load_eval_model,
    sampling_plan,
    tag_distribution,
)
from ssft.final_model import read_model_tags
from ssft.report.eval import log_eval, self_selected_line, write_eval_outputs
from ssft.tracking import provenance_tags, read_run_record, run_link, start_run, write_run_record
from workflows.cli import preflight, run_main
from workflows.ray_runtime import init_ray, ray_job_id


# [1] One Ray task per shard of questions: load the model, sample under every tag (and, with
#     eval.self_selected, under tags the model draws itself), grade.
@ray.remote(num_cpus=1)
def evaluate_shard(cfg_dict: dict, model_dir: str, questions: list[dict]) -> tuple[list, list]:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg = config_from_dict(cfg_dict)
    qs = [Question(**q) for q in questions]
    # Loaded once (sampling and tag probabilities); custom model code only if opted in.
    trust = cfg.model.trust_remote_code
    model, tok = load_eval_model(model_dir, trust_remote_code=trust)
    rows = []
    passes: list[dict] = [{}]  # the sampling protocol, then the optional passes
    if cfg.eval.greedy:
        passes.append({"greedy": True})
    if cfg.eval.self_selected:
        passes.append({"self_selected": True})
    for kind in passes:
        rows += evaluate_questions(model_dir, qs, cfg.eval, cfg.data, cfg.seed, model=model,
                                   tokenizer=tok, trust_remote_code=trust, label=cfg.name,
                                   **kind)  # fmt: skip
    tags, _ = sampling_plan(read_model_tags(model_dir), 1)
    # The distribution self-selected samples draw from (the same prompts, the same numbers).
    return rows, tag_distribution(model, tok, qs, tags, cfg.data)


def model_dir_of(cfg: ExperimentConfig) -> Path:
    if cfg.eval.model_dir:
        return Path(cfg.eval.model_dir)
    return Path(cfg.train.output_dir) / cfg.name / "final_model"


def run(
    cfg: ExperimentConfig, *, parent_run_id: str | None = None, run_name: str | None = None,
    train_run_key: str | None = None,
) -> tuple[Path, dict[str, float]]:  # fmt: skip
    """Evaluate ``cfg``'s model; returns (output folder, metrics).

    From the pipeline: ``parent_run_id`` (its MLflow run: this one is a child), ``run_name``
    (the run's display name) and ``train_run_key`` (the training's name, to find its run when
    the model folder does not record it)."""
    uri = preflight({"eval.output_dir": cfg.eval.output_dir})  # MLflow and the folder, first
    check_self_selected(cfg.eval)  # not after the Ray tasks have sampled everything else
    model_dir = model_dir_of(cfg).resolve()
    info = read_model_tags(model_dir)
    questions, available = held_out_questions(cfg.build, cfg.eval)
    source = cfg.eval.questions_path or f"build.questions={cfg.build.questions} {cfg.eval.split}"
    if available > len(questions):
        print(f"[eval] evaluating the first {len(questions)} of the {available} questions of "
              f"{source} (eval.num_questions={cfg.eval.num_questions})", flush=True)  # fmt: skip
    per = cfg.eval.questions_per_task
    shards = [questions[i : i + per] for i in range(0, len(questions), per)]
    print(f"[eval] {cfg.name}: {info['method']} model {model_dir}, {len(questions)} "
          f"{cfg.eval.split} questions, {len(shards)} tasks", flush=True)  # fmt: skip
    out_dir = Path(cfg.eval.output_dir) / cfg.name
    tags = {"stage": "eval", "method": info["method"], "model_dir": str(model_dir),
            "pass1_tag": cfg.eval.pass1_tag or info["pass1_tag"], "seed": cfg.seed,
            "ssft.name": cfg.name, **provenance_tags(),
            "ray_job_id": ray_job_id()}  # fmt: skip
    # [3] MLflow, open for the whole evaluation: config, link to the training run, then
    #     metrics, the sample table, plots. The results are on disk: an MLflow that is down
    #     (or dies meanwhile) must not fail the stage.
    with start_run(cfg.experiment, run_name or f"eval-{cfg.name}", tracking_uri=uri, tags=tags,
                   parent_run_id=parent_run_id, local_dir=out_dir,
                   offline_ok=True) as tracker:  # fmt: skip
        tracker.log_params(flatten_config(cfg))
        trained = link_training_run(tracker, model_dir, train_run_key)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_run_record(out_dir, tracker)
        start = time.monotonic()
        rows, prob_rows, metrics = _evaluate(cfg, model_dir, info, shards, out_dir)
        log_eval(tracker, out_dir, rows, metrics, f"{cfg.name} ({info['method']})",
                 prob_rows=prob_rows)  # fmt: skip
        tracker.log_metrics({"wall_time_s": time.monotonic() - start})
        if trained is not None:  # sortable by Pass@1 per trained model in the runs table
            headline = {f"eval/{k}": metrics[k] for k in HEADLINE if k in metrics}
            tracker.log_to_run(trained.info.run_id, headline,
                               {"ssft.eval_run_id": tracker.run_id})  # fmt: skip
    return out_dir, metrics


# Copied onto the training run as eval/<key> (question_tag_mode_purity: per-question purity).
HEADLINE = ("pass1", "cons_native", "tag_accuracy_min", "mode_purity",
            "question_tag_mode_purity", "self/pass1")  # fmt: skip


def link_training_run(tracker, model_dir: Path, train_run_key: str | None = None):
    """Find the MLflow run of the training that wrote ``model_dir`` and link this run to it:
    tag ``ssft.train_run_id`` and a link in the description. Returns that run, or None.

    Found by the ``mlflow_run.json`` the training left in the model folder, else by the
    training's name (``train_run_key``; alone, the name of the folder holding
    ``final_model``), its resume key."""
    if train_run_key is None and model_dir.name == "final_model":
        train_run_key = model_dir.parent.name
    record = read_run_record(model_dir)
    trained = tracker.find_run(record.get("run_id"), train_run_key)
    if trained is None:
        tracker.set_tags({"mlflow.note.content": (
            f"Evaluation of the model in `{model_dir}`; no MLflow training run was found for "
            "it.")})  # fmt: skip
        return None
    info = trained.info
    link = run_link(info.experiment_id, info.run_id)
    tracker.set_tags({
        "ssft.train_run_id": info.run_id,
        "mlflow.note.content": (f"Evaluation of training run [{info.run_name}]({link}) "
                                f"(model `{model_dir}`)."),
    })  # fmt: skip
    return trained


def _evaluate(cfg: ExperimentConfig, model_dir: Path, info: dict, shards: list,
              out_dir: Path) -> tuple[list[dict], list[dict], dict[str, float]]:  # fmt: skip
    """Sample and grade every shard in Ray tasks; write the outputs; returns (rows, tag
    probability rows, metrics)."""
    init_ray()
    # [2] Shards in parallel, retried on failure; results gathered in question order.
    refs = [
        evaluate_shard.options(num_gpus=cfg.eval.gpus_per_task, max_retries=2).remote(
            config_to_dict(cfg), str(model_dir), [asdict(q) for q in shard]
        )
        for shard in shards
    ]
    results: dict[int, tuple[list, list]] = {}
    pending, start = {ref: i for i, ref in enumerate(refs)}, time.monotonic()
    while pending:  # progress as tasks finish (a 135M model takes minutes per task on CPU)
        [ready], _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready)
        results[index] = ray.get(ready)
        elapsed = time.monotonic() - start
        eta = elapsed / len(results) * len(pending)
        print(f"[eval] {cfg.name}: task {index} done ({len(shards[index])} questions) | "
              f"{len(results)}/{len(shards)} | {elapsed:.0f}s elapsed, ETA {eta:.0f}s",
              flush=True)  # fmt: skip
    rows, prob_rows = [], []
    for index in range(len(shards)):  # question order, whatever order the tasks finished in
        rows += results[index][0]
        prob_rows += results[index][1]
    metrics = compute_metrics(rows, info, cfg.eval, tag_probs=prob_rows)
    write_eval_outputs(out_dir, rows, prob_rows, metrics, info)
    keys = ("pass1", "tag_accuracy_min", "cons_native", "cons_k", "mode_purity",
            "distinct_strategies")  # fmt: skip
    shown = " | ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)
    print(f"[eval] {cfg.name}: {shown} -> {out_dir}", flush=True)
    if line := self_selected_line(metrics):
        print(f"[eval] {cfg.name}: {line}", flush=True)
    return rows, prob_rows, metrics


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    run_main(lambda: run(parse_cli(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
