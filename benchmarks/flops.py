"""The FLOP model the step-cost benchmark prints beside each measured ratio.

Forward FLOPs of a decoder-only transformer, counted per token (multiply-add = 2 FLOPs)::

    2 * P_body                       weights of the blocks (attention + MLP projections)
  + 4 * layers * heads * head_dim * k   attention: scores and weighted sum over k keys
  + 2 * vocab * hidden               the output head, ONLY on scored positions (our
                                     chunked head + cross-entropy skips the others)

A training step costs 3x the forward FLOPs of its M sequences per question (backward = 2x
forward; recomputation is hardware work, not model work, and is left out). The SSFT cost pass
is one no-grad forward over its scored sequences, so

    predicted SSFT/SFT step ratio = 1 + F_cost / (3 * F_train)

With the prompt recomputed per (tag, trace) pair and the head, attention and prompt
lengths folded into one per-token cost, this is the issue's closed form
``1 + N * (L + P) / (3 * S)`` (S = P + 1 + T, the whole sequence); with the prompt cache
it drops to ``1 + (P + N * M * (1 + L)) / (3 * M * S)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a model (read off a transformers config)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config) -> ModelShape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            vocab=config.vocab_size,
        )

    @property
    def body_params(self) -> int:
        """Projection weights of all blocks (q, k, v, o and the gated MLP); norms left out."""
        q_and_o = 2 * self.hidden * self.heads * self.head_dim
        k_and_v = 2 * self.hidden * self.kv_heads * self.head_dim
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (q_and_o + k_and_v + mlp)


def forward_flops(shape: ModelShape, tokens: int, past: int, scored: int) -> float:
    """Forward FLOPs of one sequence of ``tokens`` tokens after ``past`` cached ones.

    Query t (0-based) attends to ``past + t + 1`` keys; ``scored`` positions go through the
    output head.
    """
    keys = tokens * past + tokens * (tokens + 1) // 2
    attention = 4 * shape.layers * shape.heads * shape.head_dim * keys
    return 2.0 * shape.body_params * tokens + attention + 2.0 * shape.vocab * shape.hidden * scored


def train_flops(shape: ModelShape, prompt: int, traces: list[int]) -> float:
    """Model FLOPs of one question's training: 3 x forward of ``[prompt ; tag ; trace]``."""
    return 3.0 * sum(forward_flops(shape, prompt + 1 + t, 0, t) for t in traces)


def cost_flops(
    shape: ModelShape,
    prompt: int,
    traces: list[int],
    num_tags: int,
    prefix: int | None,
    prompt_cache: bool,
) -> float:
    """FLOPs of one question's no-grad cost pass (N x M scored sequences)."""
    scored = [t if prefix is None else min(t, prefix) for t in traces]
    if prompt_cache:
        once = forward_flops(shape, prompt, 0, 0)  # the prompt, no head
        pairs = sum(forward_flops(shape, 1 + s, prompt, s) for s in scored)
        return once + num_tags * pairs
    return num_tags * sum(forward_flops(shape, prompt + 1 + s, 0, s) for s in scored)


def closed_form_ratio(num_tags: int, prompt: int, trace: int, prefix: int | None) -> float:
    """The issue's rule of thumb, prompt recomputed per pair: 1 + N (L + P) / (3 S)."""
    scored = trace if prefix is None else min(trace, prefix)
    return 1.0 + num_tags * (scored + prompt) / (3.0 * (prompt + 1 + trace))
