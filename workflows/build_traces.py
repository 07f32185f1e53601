"""Build trace sets: every teacher samples every question; keep distinct correct traces.

Locally (embedded Ray, SQLite MLflow under runs/):
    python -m workflows.build_traces --config workflows/configs/tiny_cpu.yaml
On a cluster:
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m workflows.build_traces --config workflows/configs/tiny_cpu.yaml

Writes <build.output_dir>/<split>-<key>/trace_sets.parquet (+ rejected_questions.json,
rejected_samples.parquet: every sample not kept and why, summary.json), where <key> digests
the build config. Rerunning skips finished shards, so a crashed build resumes; every shard is
a Ray task retried on failure (build.max_task_retries). A build in which no question gets a
trace writes no trace-set file and exits 2 with the per-teacher counts and the top rejection
reasons; one below build.min_coverage warns with the same figures. A replay teacher with
replay_source: champ writes its replay file first when it is missing.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

import ray

from ssft.atomic_io import write_json_atomic
from ssft.config import ExperimentConfig, config_from_dict, config_to_dict, parse_cli
from ssft.data.question_sources import load_questions
from ssft.data.teachers import Question
from ssft.data.teachers.replay import prepare_replay_files
from ssft.data.trace_building import (
    ShardStats,
    build_key,
    build_shard,
    finished_shard,
    merge_rejected,
    merge_shards,
    remove_stale_temp_files,
    write_shard,
)
from ssft.errors import InputError
from ssft.report.build import EmptyBuild, log_build_config, log_build_report, yield_report
from ssft.tracking import provenance_tags, start_run
from workflows import faults
from workflows.cli import preflight, run_main
from workflows.ray_runtime import absolute_paths, init_ray, ray_job_id

log = logging.getLogger("ssft.build_traces")


# [1] One Ray task per shard. It rebuilds the typed config from a plain dict, runs the
#     Ray-free shard builder and commits the shard atomically; Ray retries it on failure.
@ray.remote(num_cpus=1)
def build_shard_task(cfg_dict: dict, questions: list[dict], build_dir: str, index: int) -> dict:
    cfg = config_from_dict(cfg_dict)
    faults.before_shard(index)
    try:
        sets, stats, rejected = build_shard([Question(**q) for q in questions], cfg.build, cfg.seed)
    except InputError as err:
        # Not worth a retry (a wrong API key, a refused model name): returned, not raised,
        # so Ray does not retry it and the driver stops the build with this one line.
        return {"input_error": str(err)}
    write_shard(Path(build_dir), index, sets, stats, rejected)
    return stats.to_json()


def run(cfg: ExperimentConfig, *, parent_run_id: str | None = None) -> Path:
    """Build (or resume) the trace sets of ``cfg``; returns the trace-set Parquet path.

    ``parent_run_id``: the pipeline's MLflow run, of which this build's run is a child."""
    build = cfg.build
    uri = preflight({"build.output_dir": build.output_dir})  # MLflow and the folder, first
    questions = load_questions(build)
    cfg = absolute_paths(cfg)
    prepare_replay_files(cfg.build)  # before Ray: a bad replay row stops here, in one line
    # Absolute: Ray workers (and Ray Train, which changes directory) must find the same place.
    build_dir = Path(build.output_dir).resolve() / f"{build.split}-{build_key(build, cfg.seed)}"
    per = build.questions_per_shard
    shards = [questions[i : i + per] for i in range(0, len(questions), per)]
    print(
        f"[build] {len(questions)} questions, {len(build.teachers)} teachers, "
        f"{len(shards)} shards -> {build_dir}",
        flush=True,
    )
    # [4] MLflow, opened before the work so that the run lasts as long as the build: config,
    #     shard progress as it happens, then dataset digest and counts, per-teacher
    #     accuracy/yield, artifacts. The trace sets are on disk: an MLflow that dies
    #     meanwhile must not fail the stage.
    tags = {"stage": "build_traces", **provenance_tags(), "seed": cfg.seed,
            "ray_job_id": ray_job_id()}  # fmt: skip
    with start_run(cfg.experiment, f"build-traces-{build_dir.name}", tracking_uri=uri,
                   tags=tags, parent_run_id=parent_run_id, local_dir=build_dir,
                   offline_ok=True) as tracker:  # fmt: skip
        print(f"[build] MLflow run {tracker.run_id} at {tracker.tracking_uri}", flush=True)
        log_build_config(tracker, cfg)
        start = time.monotonic()
        out_path = _build(cfg, build_dir, shards, tracker)
        tracker.log_metrics({"wall_time_s": time.monotonic() - start})
    return out_path


def _build(cfg: ExperimentConfig, build_dir: Path, shards: list[list[Question]], tracker) -> Path:
    """The build itself, logging to the open ``tracker``; returns the trace-set path."""
    build = cfg.build
    init_ray()
    removed = remove_stale_temp_files(build_dir)
    if removed:
        print(f"[build] removed {removed} partial file(s) a killed writer left", flush=True)
    totals, pending = ShardStats(), {}
    for index, shard in enumerate(shards):
        done = finished_shard(build_dir, index)
        if done is not None:
            totals.add(done)
            continue
        # [2] Submit the shards not on disk yet; retries cover crashes and dead workers.
        ref = build_shard_task.options(
            max_retries=build.max_task_retries, retry_exceptions=True, num_gpus=build.gpus_per_task
        ).remote(config_to_dict(cfg), [asdict(q) for q in shard], str(build_dir), index)
        pending[ref] = index
    skipped = len(shards) - len(pending)
    if skipped:
        print(f"[build] resuming: {skipped} of {len(shards)} shards already on disk", flush=True)
    tracker.log_metrics({"shards_total": len(shards), "shards_reused": skipped})
    tracker.log_metrics({"shards_done": skipped}, step=skipped)
    start, finished = time.monotonic(), 0
    # [3] Progress as shards finish, with an ETA from the mean shard time so far.
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready[0])
        result = ray.get(ready[0])
        if "input_error" in result:
            for ref in pending:  # finished shards stay on disk; a rerun reuses them
                ray.cancel(ref)
            raise InputError(f"shard {index}: {result['input_error']}")
        stats = ShardStats.from_json(result)
        totals.add(stats)
        finished += 1
        tracker.log_metrics({"shards_done": skipped + finished}, step=skipped + finished)
        elapsed = time.monotonic() - start
        eta = elapsed / finished * len(pending)
        print(
            f"[build] shard {index} done: {stats.traces} traces for {stats.questions} "
            f"questions | {finished}/{finished + len(pending)} new shards | "
            f"{elapsed:.0f}s elapsed, ETA {eta:.0f}s",
            flush=True,
        )
    merge_rejected(build_dir, len(shards))
    write_json_atomic(build_dir / "rejected_questions.json", totals.rejected)
    report = yield_report(totals, build_dir)
    if totals.traces == 0:
        raise EmptyBuild(
            f"the build gave no trace for any of its {totals.questions} questions, so there is "
            f"nothing to train on (no trace-set file written):\n{report}\nCheck the teachers' "
            "answer format against build.teachers[i].answer_extraction (boxed by default) and "
            "the gold answers, or raise samples_per_question."
        )
    out_path = build_dir / "trace_sets.parquet"
    sets, digest = merge_shards(build_dir, len(shards), out_path)
    summary = {"digest": digest, "build_dir": str(build_dir), **totals.to_json()}
    summary.pop("rejected")
    summary["rejected_questions"] = len(totals.rejected)
    write_json_atomic(build_dir / "summary.json", summary)
    print(
        f"[build] {totals.traces} traces for {totals.questions_with_traces}/{totals.questions} "
        f"questions ({len(totals.rejected)} without a correct trace) -> {out_path} [{digest}]",
        flush=True,
    )
    print(f"[build] per teacher:\n{report}", flush=True)
    coverage = totals.questions_with_traces / max(1, totals.questions)
    if coverage < build.min_coverage:
        log.warning(
            "only %d of %d questions (%.0f%%) got a trace, below build.min_coverage=%.2f; "
            "training sees only those:\n%s", totals.questions_with_traces, totals.questions,
            100 * coverage, build.min_coverage, report,
        )  # fmt: skip
    tracker.set_tags({"dataset_digest": digest})
    log_build_report(tracker, sets, totals, build_dir)
    return out_path


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run_main(lambda: run(parse_cli(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
