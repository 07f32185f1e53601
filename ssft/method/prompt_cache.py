"""The cheap cost pass: encode each prompt once, score its N x M continuations from its cache.

The cost matrix needs ``-log p(trace prefix | prompt, tag)`` for every (tag i, trace j) of a
question: N x M sequences that all begin with the same prompt. Recomputing the prompt in
each of them costs N * M * P tokens per question; encoding it once and letting the N * M
short continuations ``[tag ; first L trace tokens]`` attend to its cached keys/values costs
P + N * M * (1 + L)::

    prompts (one forward, right-padded)      continuations (length-sorted micro-batches)
    q0: p p p p p . .  -> K/V [Q, h, P, d]   row (q0, tag1, r0): TAG r r r r .   + K/V of q0
    q1: p p p p p p p                        row (q1, tag3, r2): TAG r r .   .   + K/V of q1
                                             ...   attention mask = [prompt mask | row mask]
                                                   positions      = prompt length + 0, 1, ...

Prompts are right-padded, so every real prompt token has its unpadded position and
context; their padding keys are masked out of every continuation (the mask's left part),
and each continuation's positions start at its own prompt's length, so rotary embeddings
see exactly the positions of the unpadded sequence. The scored tokens (trace prefix plus
end-of-turn, never the tag) all lie in the continuation: the costs equal those of full
sequences up to float rounding (``tests/test_prompt_cache.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ssft.method.logprobs import CachedPrompt, cache_kwarg_name
from ssft.method.sequences import pad_batch


@dataclass
class EncodedPrompts:
    """Key/value states of Q right-padded prompts: ``keys[l]``/``values[l]`` [Q, h, P, d]."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    attention_mask: torch.Tensor  # [Q, P], 0 on right padding
    lengths: torch.Tensor  # int64 [Q]
    config: object  # the model config, to build caches of the right layer types

    def select(self, rows: torch.Tensor) -> CachedPrompt:
        """A fresh cache holding prompt ``rows[b]`` in batch row b (a copy: forwards append)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            cache.update(k.index_select(0, rows), v.index_select(0, rows), layer)
        return CachedPrompt(
            cache, self.attention_mask.index_select(0, rows), self.lengths.index_select(0, rows)
        )


@torch.no_grad()
def encode_prompts(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> EncodedPrompts:
    """One no-grad backbone forward over the prompts (no output head: nothing is scored)."""
    from transformers import DynamicCache

    batch = pad_batch([(p, [0] * len(p)) for p in prompts], pad_id).to(device)
    backbone = getattr(model, "base_model", model)
    cache = DynamicCache(config=model.config)
    backbone(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        use_cache=True,
        **{cache_kwarg_name(backbone): cache},
    )
    layers = cache.layers
    return EncodedPrompts(
        keys=[layer.keys for layer in layers],
        values=[layer.values for layer in layers],
        attention_mask=batch.attention_mask,
        lengths=batch.attention_mask.sum(dim=1),
        config=model.config,
    )
