"""What a training run leaves behind: the final model directory and its MLflow artifacts.

The final model directory loads with plain ``transformers`` (``from_pretrained``); beside the
weights and the tokenizer (tags included, as single special tokens) it holds
``ssft_tags.json``: the tags, the shared tag, the Pass@1 tag chosen as in the paper (the
tag matched to the most distinct traces over training) and the statistics behind it, so
evaluation needs nothing else. It is written under a temp name and renamed into place.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from ssft.checkpointing import save_model
from ssft.config import config_to_yaml
from ssft.matching_stats import MatchingTracker, heatmap

TAGS_FILE, ASSIGNMENTS_FILE = "ssft_tags.json", "assignments.parquet"
LOG_FILE = "training_log.json"


def write_final_model(
    final_dir,
    model,
    tokenizer,
    stats: MatchingTracker,
    tags,
    pass1: str,
    cfg,
    log: dict,
    state_dict: dict | None = None,
):
    """Save the trained model + tokenizer + tag summary to ``final_dir`` atomically.

    ``state_dict``: full weights gathered from a sharded (FSDP) model, written instead of
    ``model``'s own (see ``ssft.checkpointing.save_model``).

    ``log`` (steps, per-step losses, per-step data digests) goes to ``training_log.json``:
    it shows that every batch was trained exactly once, also across resumes.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    try:
        save_model(model, staging, state_dict)
        tokenizer.save_pretrained(staging)
        summary = {
            "method": cfg.method,
            "tags": list(tags.tags),
            "shared_tag": tags.shared_tag,
            "pass1_tag": pass1,
            "matching": stats.summary(),
        }
        (staging / TAGS_FILE).write_text(json.dumps(summary, indent=1), encoding="utf-8")
        pq.write_table(stats.assignment_table(), staging / ASSIGNMENTS_FILE)
        (staging / LOG_FILE).write_text(json.dumps(log), encoding="utf-8")
        if final_dir.exists():
            shutil.rmtree(final_dir)
        staging.rename(final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final_dir


def log_training_artifacts(tracker, cfg, stats: MatchingTracker, final_dir: Path | None) -> None:
    """Config, tag x teacher / tag x strategy heat maps, assignment table, final model."""
    tracker.log_text(config_to_yaml(cfg), "config.yaml")
    labels = [f"<think{i + 1}>" for i in range(stats.num_tags)]
    if cfg.method in ("sft_mixed", "single"):
        labels = [cfg.forking.shared_tag]
    for name, table in (("teacher", stats.tag_by_teacher()), ("strategy", stats.tag_by_mode())):
        if table is None:
            continue
        _, columns, counts = table
        fig = heatmap(counts, labels, list(columns), f"{cfg.method}: tag x {name} (latest epoch)")
        tracker.log_figure(fig, f"plots/tag_by_{name}.png")
    if final_dir is not None:
        tracker.log_artifact(final_dir / ASSIGNMENTS_FILE, "matching")
        tracker.log_artifact(final_dir / TAGS_FILE, "matching")
        tracker.log_artifact(final_dir, "final_model")
