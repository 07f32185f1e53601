"""What a training run leaves behind: the final model directory and its MLflow artifacts.

The final model directory loads with plain ``transformers`` (``from_pretrained``); beside the
weights and the tokenizer (tags included, as single special tokens) it holds
``ssft_tags.json``: the tags, the shared tag, the matching statistics, the Pass@1 tag and the
usable tags chosen after training (``ssft.tag_selection``, with their evidence), and
``teacher_profiles.json`` (``ssft.teacher_attribution``), so evaluation needs nothing else.
It is written under a temp name and renamed into place.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from ssft.atomic_io import write_text_atomic
from ssft.checkpointing import save_model
from ssft.config import config_to_yaml
from ssft.forking_tokens import with_tag_slot
from ssft.matching_stats import MatchingTracker, heatmap
from ssft.methods import uses_shared_tag
from ssft.tag_selection import TagSelection
from ssft.teacher_attribution import TeacherProfiles, write_profiles

TAGS_FILE, ASSIGNMENTS_FILE = "ssft_tags.json", "assignments.parquet"
LOG_FILE = "training_log.json"


def write_final_model(
    final_dir,
    model,
    tokenizer,
    stats: MatchingTracker,
    tags,
    cfg,
    log: dict,
    state_dict: dict | None = None,
    profiles: TeacherProfiles | None = None,
):
    """Save the trained model + tokenizer + tag summary to ``final_dir`` atomically.

    ``state_dict``: full weights gathered from a sharded (FSDP) model, written instead of
    ``model``'s own (see ``ssft.checkpointing.save_model``). ``profiles``: the training
    traces' teacher profiles, for evaluation's teacher attribution.

    ``log`` (steps, per-step losses, per-step data digests) goes to ``training_log.json``:
    it shows that every batch was trained exactly once, also across resumes. The Pass@1 tag
    is not known yet: ``write_tag_selection`` adds it once the tags are validated.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    try:
        save_model(model, staging, state_dict)
        chat_template = getattr(tokenizer, "chat_template", None)
        uses_chat = cfg.data.use_chat_template and isinstance(chat_template, str)
        if isinstance(chat_template, str):
            tokenizer.chat_template = with_tag_slot(chat_template)  # serving under a tag
        try:
            tokenizer.save_pretrained(staging)
        finally:
            tokenizer.chat_template = chat_template
        summary = {
            "method": cfg.method,
            "tags": list(tags.tags),
            "shared_tag": tags.shared_tag,
            "matching": stats.summary(),
            # How a prompt is written for this model; the tag goes right after it.
            "prompt_format": {
                "use_chat_template": uses_chat,
                "prompt_template": None if uses_chat else cfg.data.prompt_template,
                "how": (
                    "apply_chat_template(messages, add_generation_prompt=True, "
                    "forking_tag=TAG) (vLLM: chat_template_kwargs={'forking_tag': TAG})"
                    if uses_chat
                    else "prompt_template.format(prompt=QUESTION) + TAG"
                ),
            },
        }
        (staging / TAGS_FILE).write_text(json.dumps(summary, indent=1), encoding="utf-8")
        if profiles is not None:
            write_profiles(staging, profiles)
        pq.write_table(stats.assignment_table(), staging / ASSIGNMENTS_FILE)
        (staging / LOG_FILE).write_text(json.dumps(log), encoding="utf-8")
        if final_dir.exists():
            shutil.rmtree(final_dir)
        staging.rename(final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final_dir


def write_tag_selection(final_dir: str | Path, selection: TagSelection) -> None:
    """Add the Pass@1 tag, the usable tags and their evidence to ``ssft_tags.json``.

    Written last (atomically): a model folder whose tags file has ``pass1_tag`` is finished
    (``is_finished_model``)."""
    path = Path(final_dir) / TAGS_FILE
    summary = json.loads(path.read_text(encoding="utf-8"))
    summary |= {"pass1_tag": selection.pass1_tag, "usable_tags": selection.usable_tags,
                "tag_selection": selection.to_json()}  # fmt: skip
    write_text_atomic(path, json.dumps(summary, indent=1))


def is_finished_model(final_dir: str | Path) -> bool:
    """Whether ``final_dir`` holds a final model whose tags were selected (training done)."""
    path = Path(final_dir) / TAGS_FILE
    try:
        return "pass1_tag" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def log_tag_selection(tracker, selection: TagSelection) -> None:
    """The Pass@1 tag, its rule and the usable tags as tags; validation accuracy per tag."""
    tracker.set_tags({"pass1_tag": selection.pass1_tag, "pass1_rule": selection.rule,
                      "pass1_why": selection.why(),
                      "usable_tags": ",".join(selection.usable_tags)})  # fmt: skip
    accuracy = {f"validation/accuracy/{t.strip('<>')}": a
                for t, a in selection.validation_accuracy.items()}  # fmt: skip
    if accuracy:
        tracker.log_metrics(accuracy)


def log_training_artifacts(tracker, cfg, stats: MatchingTracker, final_dir: Path | None) -> None:
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
