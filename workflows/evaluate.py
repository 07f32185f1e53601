"""Evaluate one trained model: tag-conditioned samples, Pass@1, Cons@k, pass@k, diagnostics.

Locally (embedded Ray, SQLite MLflow under runs/):
    python -m workflows.evaluate --config workflows/configs/tiny_cpu.yaml name=tiny-ssft
    python -m workflows.evaluate --config <yaml> eval.model_dir=<final_model dir> name=<label>
On a cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m workflows.evaluate --config <yaml> eval.model_dir=<shared path> name=<label>

Questions come from build.questions (eval.split, eval.num_questions); samples and metrics go
to eval.output_dir/<name>/ and to an MLflow run "eval-<name>".
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
    compute_metrics,
    evaluate_questions,
    load_eval_model,
    sampling_plan,
)
from ssft.eval.sampling import tag_probabilities
from ssft.final_model import read_model_tags
from ssft.report.eval import log_eval, write_eval_outputs
from ssft.tracking import git_commit, start_run
from workflows.cli import preflight, run_main
from workflows.ray_runtime import init_ray, ray_job_id


# [1] One Ray task per shard of questions: load the model, sample under every tag, grade.
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
    for greedy in (False, True) if cfg.eval.greedy else (False,):
        rows += evaluate_questions(model_dir, qs, cfg.eval, cfg.data, cfg.seed, model=model,
                                   tokenizer=tok, trust_remote_code=trust,
                                   greedy=greedy)  # fmt: skip
    tags, _ = sampling_plan(read_model_tags(model_dir), 1)
    probs = tag_probabilities(model, tok, qs, tags, use_chat_template=cfg.data.use_chat_template,
                              prompt_template=cfg.data.prompt_template)  # fmt: skip
    return rows, probs


def model_dir_of(cfg: ExperimentConfig) -> Path:
    if cfg.eval.model_dir:
        return Path(cfg.eval.model_dir)
    return Path(cfg.train.output_dir) / cfg.name / "final_model"


def run(cfg: ExperimentConfig) -> tuple[Path, dict[str, float]]:
    """Evaluate ``cfg``'s model; returns (output folder, metrics)."""
    preflight({"eval.output_dir": cfg.eval.output_dir})  # MLflow and the folder, before compute
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
    metrics = compute_metrics(rows, info, cfg.eval)
    out_dir = Path(cfg.eval.output_dir) / cfg.name
    write_eval_outputs(out_dir, rows, prob_rows, metrics, info)
    keys = ("pass1", "tag_accuracy_min", "cons_native", "cons_k", "mode_purity",
            "distinct_strategies")  # fmt: skip
    shown = " | ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)
    print(f"[eval] {cfg.name}: {shown} -> {out_dir}", flush=True)
    # [3] MLflow: config, metrics, the sample table, plots.
    tags = {"stage": "eval", "method": info["method"], "model_dir": str(model_dir),
            "pass1_tag": cfg.eval.pass1_tag or info["pass1_tag"], "seed": cfg.seed,
            "git_commit": git_commit(), "ray_job_id": ray_job_id()}  # fmt: skip
    # The results are on disk: an MLflow that died meanwhile must not fail the stage.
    with start_run(cfg.experiment, f"eval-{cfg.name}", tags=tags, local_dir=out_dir,
                   offline_ok=True) as tracker:  # fmt: skip
        tracker.log_params(flatten_config(cfg))
        log_eval(tracker, out_dir, rows, metrics, f"{cfg.name} ({info['method']})")
    return out_dir, metrics


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    run_main(lambda: run(parse_cli(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
