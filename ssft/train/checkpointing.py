"""Checkpoints a plain ``transformers`` can load, plus what resuming needs.

Layout of one checkpoint directory::

    model/              save_pretrained of the model and the tokenizer (tags included)
    optimizer.pt        optimizer and LR-scheduler state
    ssft_state.json     step, epoch, the matching statistics, the per-step data log

Rank 0 writes it; every rank reads it back. Under DDP rank 0's own weights and optimizer
are the whole state; under FSDP each rank holds shards, so all ranks first gather the full
state (``ssft.train.parallel``) and pass it in as ``model_state`` / ``optimizer_state``. Both
layouts are the same on disk (the optimizer state keyed by parameter index, as
``Optimizer.state_dict()`` writes it), so a run can resume under either strategy.
``LocalCheckpoints`` keeps checkpoints in a folder when no Ray Train is around (torchrun, a
notebook): each one is written under a temp name and renamed, the newest ``keep`` stay.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

MODEL_DIR, OPTIM_FILE, STATE_FILE = "model", "optimizer.pt", "ssft_state.json"


def save_model(model, path: str | Path, state_dict: dict[str, Any] | None = None) -> None:
    """``model.save_pretrained(path)``, with weights from ``state_dict`` when given.

    A gathered state dict holds tied weights under every name (``lm_head.weight`` beside
    ``model.embed_tokens.weight``) as separate tensors; only the names ``named_parameters``
    keeps are written, so the files match an ordinary ``save_pretrained``.
    """
    if state_dict is None:
        model.save_pretrained(path)
        return
    keep = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    model.save_pretrained(path, state_dict={k: v for k, v in state_dict.items() if k in keep})


def save_checkpoint(
    path: str | Path,
    *,
    model,
    tokenizer,
    optimizer,
    scheduler,
    state: dict[str, Any],
    model_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint into ``path`` (which must be empty or absent).

    ``model_state`` / ``optimizer_state``: full (gathered) states to write instead of the
    local ``model``'s weights and ``optimizer.state_dict()`` (FSDP).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_model(model, path / MODEL_DIR, model_state)
    tokenizer.save_pretrained(path / MODEL_DIR)
    if optimizer_state is None:
        optimizer_state = optimizer.state_dict()
    torch.save(
        {"optimizer": optimizer_state, "scheduler": scheduler.state_dict()}, path / OPTIM_FILE
    )
    (path / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
    return path


def load_state(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(ssft_state, {"optimizer": ..., "scheduler": ...})`` of a checkpoint."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    optim = torch.load(path / OPTIM_FILE, map_location="cpu", weights_only=True)
    return state, optim


class LocalCheckpoints:
    """Checkpoints in ``root/checkpoint_<step>`` without Ray; the newest ``keep`` are kept."""

    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root, self.keep = Path(root), keep

    def latest(self) -> Path | None:
        found = sorted(self.root.glob("checkpoint_*"))
        return found[-1] if found else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"checkpoint_{int(metrics['step']):08d}"
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        shutil.copytree(checkpoint_dir, staging, dirs_exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        for old in sorted(self.root.glob("checkpoint_*"))[: -self.keep]:
            shutil.rmtree(old)
