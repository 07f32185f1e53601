"""Per-token negative log-likelihood: the one helper the matching cost and the loss share.

Both the cost matrix (``ssft.method.matching``) and the training loss (``ssft.method.losses``) call
``sequence_nll``, so the quantity that decides the assignment is exactly the one that is
then minimised; they cannot drift apart.

Memory: the full-vocabulary float32 log-softmax of every position is never built. The
backbone's last hidden states are gathered at the supervised positions only, and the
output projection + cross-entropy run over chunks of ``chunk_tokens`` of them, in float32
per chunk. With gradients on, each chunk is recomputed in backward (activation
checkpointing) so only one chunk's logits are alive at a time. Models whose logits are
post-processed after the output projection (soft-capping, logit scaling) fall back to the
model's own ``logits``, still converted to float32 chunk by chunk.

A packed batch (``ssft.train.packing``: several sequences per row, ``position_ids`` restarting
at 0 for each and no attention mask) is scored the same way: transformers' mask builder
(``masking_utils.find_packed_sequence_indices``) turns the restarts into a block-diagonal
causal mask, and the first label of every sequence is ignored, so each token's NLL is the
one it has alone.

A ``CachedPrompt`` (the cost pass's shared-prompt KV cache, ``ssft.method.prompt_cache``) makes the
batch a continuation: its rows attend to the cached prompt keys first, at positions after
the prompt. The NLL of a continuation token is then the one it has in the whole sequence.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ssft.method.sequences import IGNORE_INDEX, PaddedBatch

DEFAULT_CHUNK_TOKENS = 4096


@dataclass
class CachedPrompt:
    """Cached prompt keys/values a batch continues from (one prompt row per batch row).

    ``cache``: a transformers ``Cache`` holding [B, heads, P, head_dim] per layer (consumed:
    the forward appends the batch's own keys to it). ``attention_mask``: int [B, P], 0 on
    the prompt's right padding. ``lengths``: int64 [B], each row's real prompt length, so
    the continuation's positions start there (rotary positions match the unpadded sequence).
    """

    cache: Any
    attention_mask: torch.Tensor
    lengths: torch.Tensor


def cache_kwarg_name(module: torch.nn.Module) -> str:
    """``cache`` in recent transformers 5.x, ``past_key_values`` before it was renamed."""
    return _cache_kwarg_name(type(module))


@functools.cache
def _cache_kwarg_name(cls: type) -> str:  # once per model class, not per cost forward
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _model_inputs(module: torch.nn.Module, batch: PaddedBatch, cached_prompt: CachedPrompt | None):
    if cached_prompt is None:
        # No KV cache is built for a training forward (transformers makes one by default).
        if batch.position_ids is not None:  # packed: no mask, positions restart per sequence
            return {"input_ids": batch.input_ids, "position_ids": batch.position_ids,
                    "use_cache": False}  # fmt: skip
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                "use_cache": False}  # fmt: skip
    width = batch.input_ids.shape[1]
    steps = torch.arange(width, device=batch.input_ids.device)
    return {
        "input_ids": batch.input_ids,
        "attention_mask": torch.cat([cached_prompt.attention_mask, batch.attention_mask], dim=1),
        "position_ids": cached_prompt.lengths[:, None] + steps[None, :],
        cache_kwarg_name(module): cached_prompt.cache,
    }


def _has_plain_head(model: torch.nn.Module) -> bool:
    """True when logits are exactly ``lm_head(last_hidden_state)``."""
    config = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(config, attr, None) not in (None, 1, 1.0):
            return False
    backbone = getattr(model, "base_model", None)
    return (
        backbone is not None and backbone is not model and model.get_output_embeddings() is not None
    )


def _chunk_nll(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor):
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, reduction="none")


def _logits_chunk_nll(logits: torch.Tensor, targets: torch.Tensor):
    return F.cross_entropy(logits.float(), targets, reduction="none")


def token_nll(
    model: torch.nn.Module,
    batch: PaddedBatch,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    *,
    cached_prompt: CachedPrompt | None = None,
) -> torch.Tensor:
    """NLL of every supervised label, float32 [B, T]; 0 where ``labels == IGNORE_INDEX``.

    Entry ``[b, t]`` is ``-log p(labels[b, t] | prompt[b], input_ids[b, :t])``.
    """
    targets = batch.labels[:, 1:]
    mask = targets != IGNORE_INDEX
    selected_targets = targets[mask]
    if _has_plain_head(model):
        backbone = model.base_model
        hidden = backbone(**_model_inputs(backbone, batch, cached_prompt)).last_hidden_state
        head = model.get_output_embeddings()
        selected = hidden[:, :-1][mask]  # [K, H]: only positions that predict a label
        pieces = []
        for start in range(0, selected.shape[0], chunk_tokens):
            args = (
                selected[start : start + chunk_tokens],
                head.weight,
                head.bias,
                selected_targets[start : start + chunk_tokens],
            )
            if torch.is_grad_enabled():
                pieces.append(checkpoint(_chunk_nll, *args, use_reentrant=False))
            else:
                pieces.append(_chunk_nll(*args))
    else:
        logits = model(**_model_inputs(model, batch, cached_prompt)).logits
        selected = logits[:, :-1][mask]
        pieces = [
            _logits_chunk_nll(
                selected[start : start + chunk_tokens],
                selected_targets[start : start + chunk_tokens],
            )
            for start in range(0, selected.shape[0], chunk_tokens)
        ]
    nll = torch.zeros(batch.labels.shape, dtype=torch.float32, device=batch.labels.device)
    if pieces:
        nll[:, 1:][mask] = torch.cat(pieces)
    return nll


def sequence_nll(
    model: torch.nn.Module,
    batch: PaddedBatch,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    *,
    cached_prompt: CachedPrompt | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence NLL sum and supervised-token count, both float32 [B], on the batch's device."""
    nll = token_nll(model, batch, chunk_tokens, cached_prompt=cached_prompt)
    counts = (batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=1).to(torch.float32)
    return nll.sum(dim=1), counts
