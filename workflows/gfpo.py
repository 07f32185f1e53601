"""GFPO after SSFT on Ray Train: RL on the tag position of an SSFT model (ssft.method.gfpo).

Locally (embedded Ray, SQLite MLflow under runs/):
    python -m workflows.gfpo --config workflows/configs/known_modes_gfpo.yaml \
        gfpo.init_from=runs/train/<ssft run>/final_model data.train_path=<trace_sets.parquet> \
        name=<gfpo run>
On a cluster, unchanged under `ray job submit ... -- python -m workflows.gfpo ...`.

The run is a training like any other (``workflows.train``: checkpoints, resume by name, the
final model in train.output_dir/<name>/final_model, one MLflow run), of method ``gfpo``
with the gfpo section's steps, batch and learning rate (``ssft.config.gfpo_run``), starting
from the SSFT model; its tags and N are read from that model's folder. Evaluate it with
``python -m workflows.evaluate ... eval.model_dir=<its final model> eval.self_selected=true``.
The pipeline runs it as a stage after every SSFT arm with ``pipeline.gfpo=true``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ssft.config import ConfigError, ExperimentConfig, gfpo_run, parse_cli
from ssft.data.trace_set import TraceSet
from ssft.final_model import read_model_tags
from ssft.method.table import uses_shared_tag
from workflows import train
from workflows.cli import run_main


def stage_config(cfg: ExperimentConfig, init_from: str | Path | None = None) -> ExperimentConfig:
    """The GFPO run's config from ``cfg`` and the SSFT model it starts from (default
    ``gfpo.init_from``): N and the tag format as that model was trained with."""
    path = init_from or cfg.gfpo.init_from
    if path is None:
        return gfpo_run(cfg)  # raises the error that says what to set
    try:
        info = read_model_tags(path)
    except FileNotFoundError as err:
        raise ConfigError(f"gfpo.init_from={str(path)!r}: {err}") from None
    if uses_shared_tag(info["method"]):
        raise ConfigError(
            f"gfpo.init_from={str(path)!r} was trained with method {info['method']!r}, which "
            "has one shared tag and so no tag to choose: start GFPO from an SSFT model."
        )
    forking = dataclasses.replace(cfg.forking, num_tags=len(info["tags"]))
    return gfpo_run(dataclasses.replace(cfg, forking=forking), str(path))


def run(
    cfg: ExperimentConfig, sets: list[TraceSet] | None = None, *,
    init_from: str | Path | None = None, parent_run_id: str | None = None,
    run_name: str | None = None,
) -> Path:  # fmt: skip
    """Train (or resume) the GFPO run ``cfg.name``; returns its final model directory."""
    run_cfg = stage_config(cfg, init_from)
    g = run_cfg.gfpo
    per_step = (g.rollouts_per_tag * run_cfg.forking.num_tags if g.rollout_tags == "every_tag"
                else g.group_size) * g.questions_per_step  # fmt: skip
    print(f"[gfpo] {run_cfg.name}: {g.steps} steps from {g.init_from}, form={g.form}, "
          f"{per_step} rollouts a step", flush=True)  # fmt: skip
    return train.run(run_cfg, sets, parent_run_id=parent_run_id, run_name=run_name)


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    run_main(lambda: run(parse_cli(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
