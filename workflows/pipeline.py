"""The main job: build traces -> train every method and seed -> evaluate -> compare.

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
from pathlib import Path

from ssft.config import ExperimentConfig, parse_cli
from ssft.trace_set import read_trace_sets, trace_set_digest
from ssft.tracking import browse_hint, default_tracking_uri
from workflows import build_traces, compare, evaluate, train
from workflows.cli import preflight, run_main
from workflows.ray_runtime import init_ray


def _key(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def train_config(cfg: ExperimentConfig, method: str, seed: int, traces: Path, digest: str):
    """The config of one (method, seed) training, named after what decides its result."""
    run = dataclasses.replace(cfg, method=method, seed=seed)
    run.data = dataclasses.replace(cfg.data, train_path=str(traces))
    run.eval = dataclasses.replace(cfg.eval, model_dir=None)
    sections = [dataclasses.asdict(getattr(run, s)) for s in ("model", "data", "forking",
                                                              "matching", "train")]  # fmt: skip
    for section in sections:
        section.pop("output_dir", None)
        section.pop("train_path", None)
    run.name = f"{cfg.name}-{method}-s{seed}-{_key(method, seed, digest, sections)}"
    return run.validate()


def run(cfg: ExperimentConfig) -> str:
    """Run every stage (reusing finished ones); returns the comparison table."""
    # Every stage checks again, but a typo in the last stage's folder should not wait for it.
    preflight({"build.output_dir": cfg.build.output_dir, "train.output_dir": cfg.train.output_dir,
               "eval.output_dir": cfg.eval.output_dir,
               "pipeline.output_dir": cfg.pipeline.output_dir})  # fmt: skip
    init_ray()
    traces = build_traces.run(cfg)
    digest = trace_set_digest(read_trace_sets(traces))
    eval_dirs = []
    for method in cfg.pipeline.method_list():
        for seed in cfg.pipeline.seed_list():
            run_cfg = train_config(cfg, method, seed, traces, digest)
            final = Path(run_cfg.train.output_dir) / run_cfg.name / "final_model"
            if (final / "ssft_tags.json").exists():
                print(f"[pipeline] train {run_cfg.name}: inputs unchanged, reusing {final}")
            else:
                train.run(run_cfg)
            eval_cfg = dataclasses.replace(
                run_cfg,
                name=f"{run_cfg.name}-{_key(dataclasses.asdict(cfg.eval))}",
                eval=dataclasses.replace(run_cfg.eval, model_dir=str(final)),
            )
            out = Path(eval_cfg.eval.output_dir) / eval_cfg.name
            if (out / "metrics.json").exists():
                print(f"[pipeline] eval {eval_cfg.name}: inputs unchanged, reusing {out}")
            else:
                out, _ = evaluate.run(eval_cfg)
            eval_dirs.append(str(out))
    out = Path(cfg.pipeline.output_dir) / cfg.name
    table = compare.compare(eval_dirs, out, cfg.experiment)
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
