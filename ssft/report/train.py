"""What a training run shows in MLflow beyond its metrics: the config, the Pass@1 tag and
its evidence, the tag x teacher / tag x strategy heat maps, the assignment table and the final
model folder (``ssft.final_model``; written by ``ssft.train.final_model``).
"""

from __future__ import annotations

from pathlib import Path

from ssft.config import ExperimentConfig, config_to_yaml
from ssft.eval.tag_selection import TagSelection
from ssft.final_model import ASSIGNMENTS_FILE, TAGS_FILE
from ssft.method.table import get_method, uses_shared_tag
from ssft.train.matching_stats import MatchingTracker, heatmap


def log_tag_selection(tracker, selection: TagSelection) -> None:
    """The Pass@1 tag, its rule and the usable tags as tags; validation accuracy per tag."""
    tracker.set_tags({"pass1_tag": selection.pass1_tag, "pass1_rule": selection.rule,
                      "pass1_why": selection.why(),
                      "usable_tags": ",".join(selection.usable_tags)})  # fmt: skip
    accuracy = {f"validation/accuracy/{t.strip('<>')}": a
                for t, a in selection.validation_accuracy.items()}  # fmt: skip
    if accuracy:
        tracker.log_metrics(accuracy)


def log_training_artifacts(
    tracker, cfg: ExperimentConfig, stats: MatchingTracker, final_dir: Path | None
) -> None:
    """Config, tag x teacher / tag x strategy heat maps, assignment table, final model."""
    tracker.log_text(config_to_yaml(cfg), "config.yaml")
    labels = [f"<think{i + 1}>" for i in range(stats.num_tags)]
    if uses_shared_tag(cfg.method):
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


def method_tags(cfg: ExperimentConfig) -> dict:
    """The MLflow tags that say what a training run trained (runs table columns)."""
    m = cfg.matching
    if get_method(cfg.method).after_ssft:  # no matching: the RL stage's form and its start
        g = cfg.gfpo
        return {"method": cfg.method, "num_tags": cfg.forking.num_tags, "gfpo.form": g.form,
                "gfpo.rollout_tags": g.rollout_tags, "gfpo.init_from": g.init_from}  # fmt: skip
    return {"method": cfg.method, "num_tags": cfg.forking.num_tags, "cost": m.cost,
            "prefix_tokens": m.prefix_tokens or "all"}  # fmt: skip
