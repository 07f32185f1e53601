"""The main job: build traces -> train every variant and seed -> evaluate -> compare.

On a laptop (embedded Ray, SQLite MLflow under runs/), the README's main job:
    python -m workflows.pipeline --config workflows/configs/tiny_cpu.yaml
On a cluster, unchanged:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m workflows.pipeline --config workflows/configs/tiny_cpu.yaml

Stages are content-addressed: each training and evaluation is named after a digest of what
decides its result (its config section and the digest of its input), so a rerun with the
same inputs reuses finished outputs (and says so), an interrupted one resumes, and a changed
config reruns only what depends on it. The trace build is keyed the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

import ray

from ssft.config import ExperimentConfig, VariantConfig, apply_overrides, parse_cli
from ssft.data.question_sources import held_out_questions
from ssft.data.trace_set import TraceSet, read_trace_sets, trace_set_digest
from ssft.final_model import is_finished_model
from ssft.models import check_model_exists
from ssft.tracking import browse_hint, default_tracking_uri
from workflows import build_traces, compare, evaluate, train
from workflows.cli import preflight, run_main
from workflows.ray_runtime import init_ray, trainings_that_fit

T = TypeVar("T")


def _key(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def variant_configs(cfg: ExperimentConfig) -> list[tuple[VariantConfig, ExperimentConfig]]:
    """Every variant with its config (its overrides applied); checked before any compute."""
    return [
        (v, apply_overrides(cfg, v.override_list(), f"pipeline.variants[{i}] ({v.name!r})"))
        for i, v in enumerate(cfg.pipeline.variant_list())
    ]


def train_config(cfg: ExperimentConfig, label: str, seed: int, traces: Path, digest: str):
    """The config of one (variant, seed) training, named after what decides its result.

    ``cfg`` is the variant's config. The key covers the sections that shape the model and
    its tag selection (validation samples with the eval section's decoding settings)."""
    run = dataclasses.replace(cfg, seed=seed)
    run.data = dataclasses.replace(cfg.data, train_path=str(traces))
    run.eval = dataclasses.replace(cfg.eval, model_dir=None)
    sections = [dataclasses.asdict(getattr(run, s)) for s in ("model", "data", "forking",
                                                              "matching", "train",
                                                              "tag_selection")]  # fmt: skip
    for section in sections:
        section.pop("output_dir", None)
        section.pop("train_path", None)
    decoding = {k: getattr(cfg.eval, k) for k in ("temperature", "top_p", "max_new_tokens")}
    key = _key(cfg.method, seed, digest, sections, decoding)
    run.name = f"{cfg.name}-{label}-s{seed}-{key}"
    return run.validate()


def in_parallel(jobs: list[Callable[[], T]], limit: int) -> list[T]:
    """Run ``jobs`` at most ``limit`` at a time, in threads (each one only waits on Ray).

    Every job runs to its end even when another fails, so a rerun reuses all finished work;
    then the first error is raised. Interrupted (Ctrl-C), Ray is shut down so the jobs'
    waits end with it instead of keeping the process alive."""
    pool = ThreadPoolExecutor(max_workers=max(1, min(limit, len(jobs))))
    try:
        futures = [pool.submit(job) for job in jobs]
        wait(futures)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        ray.shutdown()
        raise
    pool.shutdown()
    for future in futures:
        if future.exception() is not None:
            raise future.exception()
    return [f.result() for f in futures]


def _train_job(run_cfg: ExperimentConfig, sets: list[TraceSet]) -> Callable[[], None]:
    def job() -> None:
        final = Path(run_cfg.train.output_dir) / run_cfg.name / "final_model"
        if is_finished_model(final):
            print(f"[pipeline] train {run_cfg.name}: inputs unchanged, reusing {final}")
        else:
            train.run(run_cfg, sets)

    return job


def _eval_job(eval_cfg: ExperimentConfig) -> Callable[[], str]:
    def job() -> str:
        out = Path(eval_cfg.eval.output_dir) / eval_cfg.name
        if (out / "metrics.json").exists():
            print(f"[pipeline] eval {eval_cfg.name}: inputs unchanged, reusing {out}")
            return str(out)
        return str(evaluate.run(eval_cfg)[0])

    return job


def run(cfg: ExperimentConfig) -> str:
    """Run every stage (reusing finished ones); returns the comparison report."""
    # Every stage checks again, but a typo in the last stage's folder should not wait for it.
    preflight({"build.output_dir": cfg.build.output_dir, "train.output_dir": cfg.train.output_dir,
               "eval.output_dir": cfg.eval.output_dir,
               "pipeline.output_dir": cfg.pipeline.output_dir})  # fmt: skip
    variants = variant_configs(cfg)  # a bad variant fails here, before any compute
    held_out_questions(cfg.build, cfg.eval)  # and a source without a held-out split
    for _, variant_cfg in variants:  # and a student model that is not on disk
        check_model_exists(variant_cfg.model)
    init_ray()
    traces = build_traces.run(cfg)
    sets = read_trace_sets(traces)  # read once here: the digest and every training's check
    digest = trace_set_digest(sets)
    runs, labels = [], []  # (training config, evaluation config) per (variant, seed)
    for variant, variant_cfg in variants:
        for seed in cfg.pipeline.seeds:
            run_cfg = train_config(variant_cfg, variant.name, seed, traces, digest)
            final = Path(run_cfg.train.output_dir) / run_cfg.name / "final_model"
            eval_cfg = dataclasses.replace(
                run_cfg,
                name=f"{run_cfg.name}-{_key(dataclasses.asdict(variant_cfg.eval))}",
                eval=dataclasses.replace(run_cfg.eval, model_dir=str(final)),
            )
            runs.append((run_cfg, eval_cfg))
            labels.append(variant.name)
    # All trainings, then all evaluations: trainings never wait for CPUs that evaluation
    # tasks hold (a Ray Train worker group that waits too long to start fails).
    limit = cfg.pipeline.max_concurrent or trainings_that_fit(cfg.train)
    if limit > 1 and len(runs) > 1:
        print(f"[pipeline] {len(runs)} trainings, {min(limit, len(runs))} at a time", flush=True)
    # transformers resolves its classes lazily on first use; two training threads doing that
    # at once can fail ("cannot import name 'AutoTokenizer'"), so resolve them here, once.
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    in_parallel([_train_job(run_cfg, sets) for run_cfg, _ in runs], limit)
    eval_dirs = in_parallel([_eval_job(eval_cfg) for _, eval_cfg in runs], limit)
    out = Path(cfg.pipeline.output_dir) / cfg.name
    table = compare.compare(eval_dirs, out, cfg.experiment, labels)
    print(
        f"[pipeline] done. Comparison: {out / 'comparison.md'}\n"
        f"[pipeline] browse every run: {browse_hint(default_tracking_uri(), cfg.experiment)}",
        flush=True,
    )
    return table


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    run_main(lambda: run(parse_cli(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
