"""The final-model folder contract, which training writes and evaluation, the pipeline and
reports read: ``ssft_tags.json`` (the tags, the shared tag, the matching summary, the prompt
format and, written last, the Pass@1 tag and the usable tags), ``assignments.parquet``,
``training_log.json`` and ``teacher_profiles.json`` beside the ``transformers`` weights and
tokenizer; and ``mlflow_run.json`` (``ssft.tracking.RUN_RECORD``: the training's MLflow run,
which an evaluation of the folder links to), written by the Ray Train worker when it logs.

A folder whose tags file has ``pass1_tag`` is a finished model (``is_finished_model``). Low
level: standard library and ``ssft.atomic_io`` only, so every layer may import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ssft.atomic_io import write_text_atomic

TAGS_FILE, ASSIGNMENTS_FILE = "ssft_tags.json", "assignments.parquet"
LOG_FILE = "training_log.json"


def read_model_tags(model_dir: str | Path) -> dict[str, Any]:
    """The ``ssft_tags.json`` a training run wrote beside its final model, parsed."""
    path = Path(model_dir) / TAGS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: {model_dir} is not a final model written by "
            "workflows.train (those hold ssft_tags.json with the tags and the Pass@1 tag)."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def write_tag_selection(final_dir: str | Path, selection: Any) -> None:
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
