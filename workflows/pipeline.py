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

In MLflow a pipeline is one tree: a parent run (stage=pipeline: the whole config, the
comparison table and chart, and in its description a link to every training and evaluation)
with the build, each training and each evaluation as children. A rerun of the same config
reopens its parent; a training or evaluation reused from an earlier pipeline stays a child of
the pipeline that ran it, and is linked from the new parent's description.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

import ray

from ssft.config import (
    ExperimentConfig,
    VariantConfig,
    apply_overrides,
    config_to_dict,
    config_to_yaml,
    flatten_config,
    parse_cli,
)
from ssft.data.question_sources import held_out_questions
from ssft.data.trace_set import TraceSet, read_trace_sets, trace_set_digest
from ssft.final_model import is_finished_model
from ssft.method.table import get_method
from ssft.models import check_model_exists
from ssft.report.comparison import load_eval
from ssft.tracking import (
    NullTracker,
    browse_hint,
    provenance_tags,
    read_run_record,
    run_link,
    start_run,
)
from workflows import build_traces, compare, evaluate, gfpo, train
from workflows.cli import NothingLearned, preflight, run_main
from workflows.ray_runtime import init_ray, ray_job_id, trainings_that_fit

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
    # eval.mask_forking_tokens (in validation sampling too) is left out of the key: a forking
    # token almost never appears in an SSFT model's answer, and the trainings named before
    # the setting existed stay reusable.
    decoding = {k: getattr(cfg.eval, k) for k in ("temperature", "top_p", "max_new_tokens")}
    key = _key(cfg.method, seed, digest, sections, decoding)
    run.name = f"{cfg.name}-{label}-s{seed}-{key}"
    return run.validate()


def display_name(label: str, run_cfg: ExperimentConfig) -> str:
    """A training's MLflow run name, short enough to read in the runs table: the variant, N
    and the seed (``ssft-n4-s0``; N left out when the variant's name says it). The full name
    (``run_cfg.name``, with its digest) is the run's ``ssft.name`` and ``ssft.run_key``."""
    n, seed = run_cfg.forking.num_tags, run_cfg.seed
    if re.search(rf"(^|[-_.])n{n}($|[-_.])", label, flags=re.IGNORECASE):
        return f"{label}-s{seed}"
    return f"{label}-n{n}-s{seed}"


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


@dataclasses.dataclass
class _Arm:
    """One (variant, seed): its training and evaluation configs and run names."""

    label: str
    display: str
    train_cfg: ExperimentConfig
    eval_cfg: ExperimentConfig

    @property
    def final(self) -> Path:
        return Path(self.train_cfg.train.output_dir) / self.train_cfg.name / "final_model"

    @property
    def eval_dir(self) -> Path:
        return Path(self.eval_cfg.eval.output_dir) / self.eval_cfg.name


def _train_job(arm: _Arm, sets: list[TraceSet], parent_run_id: str | None) -> Callable[[], None]:
    def job() -> None:
        if is_finished_model(arm.final):
            print(f"[pipeline] train {arm.train_cfg.name}: inputs unchanged, reusing {arm.final}")
        else:
            train.run(arm.train_cfg, sets, parent_run_id=parent_run_id, run_name=arm.display)

    return job


def _trains_tags(method: str) -> bool:
    """An arm GFPO can start from: its method trains forking tokens (and is not GFPO)."""
    entry = get_method(method)
    return not (entry.shared_tag or entry.after_ssft)


def make_arm(label: str, cfg: ExperimentConfig, seed: int, traces: Path, digest: str) -> _Arm:
    """The (variant, seed) arm of variant ``label`` (config ``cfg``): its training config
    (``train_config``) and the evaluation of its final model."""
    run_cfg = train_config(cfg, label, seed, traces, digest)
    final = Path(run_cfg.train.output_dir) / run_cfg.name / "final_model"
    eval_cfg = dataclasses.replace(
        run_cfg,
        name=f"{run_cfg.name}-{_key(dataclasses.asdict(cfg.eval))}",
        eval=dataclasses.replace(run_cfg.eval, model_dir=str(final)),
    )
    return _Arm(label, display_name(label, run_cfg), run_cfg, eval_cfg)


def _gfpo_arm(arm: _Arm) -> _Arm:
    """The GFPO stage after ``arm``: from its final model, named after that model and what
    decides the stage's result (the gfpo section, the rollouts' decoding)."""
    cfg = arm.train_cfg
    section = {k: v for k, v in dataclasses.asdict(cfg.gfpo).items() if k != "init_from"}
    rollouts = {k: getattr(cfg.eval, k) for k in ("top_p", "max_new_tokens", "mask_forking_tokens",
                                                  "answer_extraction")}  # fmt: skip
    run_cfg = dataclasses.replace(
        gfpo.stage_config(cfg, arm.final), name=f"{cfg.name}-gfpo-{_key(section, rollouts)}"
    )
    eval_cfg = dataclasses.replace(
        arm.eval_cfg, name=f"{run_cfg.name}-{_key(dataclasses.asdict(arm.eval_cfg.eval))}",
        eval=dataclasses.replace(arm.eval_cfg.eval, model_dir=str(
            Path(run_cfg.train.output_dir) / run_cfg.name / "final_model")),
    )  # fmt: skip
    return _Arm(f"{arm.label}-gfpo", f"{arm.display}-gfpo", run_cfg, eval_cfg)


def _eval_job(arm: _Arm, parent_run_id: str | None) -> Callable[[], str]:
    def job() -> str:
        if (arm.eval_dir / "metrics.json").exists():
            print(f"[pipeline] eval {arm.eval_cfg.name}: inputs unchanged, reusing {arm.eval_dir}")
            return str(arm.eval_dir)
        out, _ = evaluate.run(arm.eval_cfg, parent_run_id=parent_run_id,
                              run_name=f"eval-{arm.display}",
                              train_run_key=arm.train_cfg.name)  # fmt: skip
        return str(out)

    return job


def open_pipeline_run(cfg: ExperimentConfig, uri: str, out: Path) -> NullTracker:
    """The pipeline's parent run, reopened when the same config ran before (finished or not).

    Its resume key is the pipeline's name and a digest of its whole config, so the params a
    first run logged (the config) stay true; a changed config is a new parent."""
    key = f"pipeline:{cfg.name}:{_key(config_to_dict(cfg))}"
    parent = start_run(cfg.experiment, f"pipeline-{cfg.name}", tracking_uri=uri,
                       tags={"stage": "pipeline", "ssft.name": cfg.name}, resume_key=key,
                       reopen_finished=True, local_dir=out)  # fmt: skip
    parent.resumed = False  # whole-pipeline figures, no replayed steps: a rerun's values replace
    parent.set_tags({**provenance_tags(), "ray_job_id": ray_job_id()})
    if not parent.reopened:
        parent.log_params(flatten_config(cfg))
        parent.log_text(config_to_yaml(cfg), "config.yaml")
    return parent


def _run_cell(run) -> str:
    if run is None:
        return "–"
    return f"[{run.info.run_name}]({run_link(run.info.experiment_id, run.info.run_id)})"


def describe(parent: NullTracker, cfg: ExperimentConfig, arms: list[_Arm], table: str) -> str:
    """The parent run's description: a link to every training and evaluation run (reused ones
    too, wherever they were run) with its Pass@1, then the comparison table when it fits."""
    lines = [f"Pipeline `{cfg.name}`: every trained model and its evaluation. The comparison's "
             "files are under Artifacts, `comparison/`.", "",
             "| variant | seed | training run | evaluation run | Pass@1 |",
             "|---|---|---|---|---|"]  # fmt: skip
    for arm in arms:
        trained = parent.find_run(read_run_record(arm.final).get("run_id"), arm.train_cfg.name)
        evaluated = parent.find_run(read_run_record(arm.eval_dir).get("run_id"),
                                    arm.eval_cfg.name, tag="ssft.name")  # fmt: skip
        pass1 = evaluated.data.metrics.get("pass1") if evaluated is not None else None
        lines.append(f"| {arm.label} | {arm.train_cfg.seed} | {_run_cell(trained)} | "
                     f"{_run_cell(evaluated)} | "
                     f"{'–' if pass1 is None else f'{pass1:.3f}'} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    with_table = f"{text}\n{table}"
    return with_table if len(with_table) <= 7500 else text  # MLflow: 8000 characters a tag


def run(cfg: ExperimentConfig) -> str:
    """Run every stage (reusing finished ones); returns the comparison report."""
    # Every stage checks again, but a typo in the last stage's folder should not wait for it.
    uri = preflight({"build.output_dir": cfg.build.output_dir,
                     "train.output_dir": cfg.train.output_dir,
                     "eval.output_dir": cfg.eval.output_dir,
                     "pipeline.output_dir": cfg.pipeline.output_dir})  # fmt: skip
    variants = variant_configs(cfg)  # a bad variant fails here, before any compute
    held_out_questions(cfg.build, cfg.eval)  # and a source without a held-out split
    for _, variant_cfg in variants:  # and a student model that is not on disk
        check_model_exists(variant_cfg.model)
    out = Path(cfg.pipeline.output_dir) / cfg.name
    with open_pipeline_run(cfg, uri, out) as parent:
        arms, table = _run_stages(cfg, variants, parent, out)
        parent.set_tags({"mlflow.note.content": describe(parent, cfg, arms, table)})
        print(
            f"[pipeline] done. Comparison: {out / 'comparison.md'}\n"
            f"[pipeline] browse every run: {browse_hint(uri, cfg.experiment)}",
            flush=True,
        )
        problem = nothing_learned(cfg, arms, out)
        if problem:  # raised inside: the parent run ends FAILED, and its tag says why
            parent.set_tags({"ssft.nothing_learned": problem})
            raise NothingLearned(problem)
    return table


def nothing_learned(cfg: ExperimentConfig, arms: list[_Arm], out: Path) -> str | None:
    """Why the job's results show nothing, or None: no arm's Pass@1 is above
    ``pipeline.require_pass1_above`` (null: never). A table of models that did not learn
    their task says nothing about the method and must not look like a result."""
    floor = cfg.pipeline.require_pass1_above
    if floor is None:
        return None
    pass1 = {}  # read by the comparison's parser, which names a broken file
    for arm in arms:
        metrics = load_eval(arm.eval_dir)["metrics"]
        pass1[f"{arm.display} (seed {arm.train_cfg.seed})"] = metrics["pass1"]
    best = max(pass1, key=pass1.get)
    if pass1[best] > floor:
        return None
    return (
        f"no model learned its task: the best Pass@1 is {pass1[best]:.3f} ({best}), not above "
        f"pipeline.require_pass1_above={floor}. Every result is kept ({out / 'comparison.md'}, "
        "and MLflow). Look at the trainings' loss curves; train longer (train.epochs, "
        "train.max_steps), change train.lr or the model, or check eval.answer_extraction "
        "and eval.max_new_tokens against the held-out answers. For a wiring check, set "
        "pipeline.require_pass1_above=null."
    )


def _run_stages(
    cfg: ExperimentConfig, variants, parent: NullTracker, out: Path
) -> tuple[list[_Arm], str]:
    """Build, train every arm, evaluate each, compare; every run a child of ``parent``.
    Returns the arms and the comparison report."""
    init_ray()
    traces = build_traces.run(cfg, parent_run_id=parent.run_id)
    sets = read_trace_sets(traces)  # read once here: the digest and every training's check
    digest = trace_set_digest(sets)
    arms = [make_arm(variant.name, variant_cfg, seed, traces, digest)
            for variant, variant_cfg in variants for seed in cfg.pipeline.seeds]  # fmt: skip
    # All trainings, then all evaluations: trainings never wait for CPUs that evaluation
    # tasks hold (a Ray Train worker group that waits too long to start fails).
    limit = cfg.pipeline.max_concurrent or trainings_that_fit(cfg.train)
    if limit > 1 and len(arms) > 1:
        print(f"[pipeline] {len(arms)} trainings, {min(limit, len(arms))} at a time", flush=True)
    # transformers resolves its classes lazily on first use; two training threads doing that
    # at once can fail ("cannot import name 'AutoTokenizer'"), so resolve them here, once.
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    in_parallel([_train_job(arm, sets, parent.run_id) for arm in arms], limit)
    if cfg.pipeline.gfpo:  # then a GFPO stage from every forking-token arm's final model
        stages = [_gfpo_arm(arm) for arm in arms if _trains_tags(arm.train_cfg.method)]
        if not stages:
            print("[pipeline] pipeline.gfpo=true but no arm trains forking tokens: no GFPO "
                  "stage", flush=True)  # fmt: skip
        in_parallel([_train_job(arm, sets, parent.run_id) for arm in stages], limit)
        arms += stages
    eval_dirs = in_parallel([_eval_job(arm, parent.run_id) for arm in arms], limit)
    labels = [arm.label for arm in arms]
    return arms, compare.compare(eval_dirs, out, cfg.experiment, labels, tracker=parent)


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    run_main(lambda: run(parse_cli(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
