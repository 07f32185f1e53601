"""Writing the final model folder (``ssft.final_model`` is its contract): weights and
tokenizer (tags included, as single special tokens, and the chat template with its tag slot),
``ssft_tags.json``, the teacher profiles, the assignment table and the training log, under a
temp name renamed into place.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from ssft.config import ExperimentConfig
from ssft.data.teacher_attribution import TeacherProfiles, write_profiles
from ssft.final_model import ASSIGNMENTS_FILE, LOG_FILE, TAGS_FILE
from ssft.method.forking_tokens import with_tag_slot
from ssft.train.checkpointing import save_model
from ssft.train.matching_stats import MatchingTracker


def write_final_model(
    final_dir,
    model,
    tokenizer,
    stats: MatchingTracker,
    tags,
    cfg: ExperimentConfig,
    log: dict,
    state_dict: dict | None = None,
    profiles: TeacherProfiles | None = None,
):
    """Save the trained model + tokenizer + tag summary to ``final_dir`` atomically.

    ``state_dict``: full weights gathered from a sharded (FSDP) model, written instead of
    ``model``'s own (see ``ssft.train.checkpointing.save_model``). ``profiles``: the training
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
