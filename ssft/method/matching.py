"""Which forking token each trace gets: cost matrices and assignment policies.

SSFT (METHOD.md, steps 1-2), per question x with traces r(1..M), M <= N:

1. Cost, no gradient, model in eval mode::

       C[i, j] = mean over the first L trace tokens of r(j) of
                 -log p(r_t(j) | x, <think i+1>, r_<t(j))

   Rows are TAGS (i < N), columns are TRACES (j < M). The scored tokens are the trace's
   tokens followed by its end-of-turn token, cut to the first L (``prefix_tokens``; None
   scores all of them, which makes C[i, j] the per-token loss of that sequence). The tag
   token itself is never scored. ``cost="sum_nll"`` sums instead of averaging, which
   weights long traces more.
2. Matching: the injective map trace -> tag of least total cost,
   ``scipy.optimize.linear_sum_assignment`` on the [M, N] transpose; N - M tags stay
   unused for that question.

M > N is not defined by the paper. Our policy is decided before matching, when trace sets
are tokenized (``ssft.data.tokenize``): error by default, or keep the N most distinct traces and
count the dropped ones. The injective policies here refuse M > N with a ``ValueError``.

Unlike DETR, every cost entry is a forward pass, so only each question's own N x M block is
built: all sum_b N * M_b sequences of a batch go through few no-grad forwards (length-sorted
micro-batches of ``batch_size``), the per-sequence costs land in one flat device tensor,
are copied to the host ONCE, and are split into per-question [N, M_b] blocks.

``prompt_cache=True`` (the default, chosen by ``benchmarks/step_cost.py``) encodes each
prompt once and scores only the short continuations ``[tag ; first L trace tokens]`` from
its KV cache (``ssft.method.prompt_cache``): the same costs up to float rounding, for
P + N * M * (1 + L) tokens per question instead of N * M * (P + 1 + L).

Under sharded data parallelism (FSDP) every forward is a collective, so the training loop
passes ``forward=`` (the wrapped module) and ``min_forwards=`` (the most forwards any rank
needs for this chunk, ``cost_forward_count``): a rank with fewer sequences runs dummy
forwards whose outputs are discarded, so the costs are unchanged.

Policies share one signature and are looked up by name (``get_policy``):

- ``hungarian``: SSFT, the least-cost injective map (needs the cost).
- ``random``: distinct random tags per trace (the paper's ablation), from a per-question
  generator so a rerun or another worker count draws the same tags.
- ``shared``: every trace under one tag (index 0 of the tag list the caller passes, i.e.
  the shared ``<think>`` tag: SFT-mixed and single-trace SFT).

Each returns, per question, an int64 array of length M: ``tags[j]`` is the tag index of
trace j. Ties are broken deterministically: scipy's solver is deterministic for a given
matrix (an all-equal matrix maps trace j to tag j).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ssft.method.logprobs import DEFAULT_CHUNK_TOKENS, sequence_nll
from ssft.method.prompt_cache import encode_prompts
from ssft.method.sequences import (
    IGNORE_INDEX,
    PaddedBatch,
    TokenizedQuestion,
    build_sequence,
    pad_batch,
)
from ssft.method.table import COST_KINDS


def cost_forward_count(
    plan_chunk: Sequence[Sequence[int]],
    questions: Sequence[TokenizedQuestion],
    num_tags: int,
    batch_size: int,
) -> int:
    """No-grad forwards the busiest rank needs for one chunk of a step plan.

    ``plan_chunk[r]`` lists rank r's question indices; rank r scores ``num_tags * M_b``
    sequences per question b in ``ceil(total / batch_size)`` forwards. Every rank computes
    the same number from the plan, so all can pad to it (``cost_matrices(min_forwards=)``).
    """
    return max(
        math.ceil(sum(num_tags * questions[i].num_traces for i in rank) / batch_size)
        for rank in plan_chunk
    )


@torch.no_grad()
def cost_matrices(
    model: torch.nn.Module,
    questions: Sequence[TokenizedQuestion],
    tag_ids: Sequence[int],
    *,
    pad_id: int,
    cost: str = "mean_nll",
    prefix_tokens: int | None = None,
    batch_size: int = 32,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    forward: Callable[[PaddedBatch], tuple[torch.Tensor, torch.Tensor]] | None = None,
    min_forwards: int = 0,
    prompt_cache: bool = True,
) -> list[np.ndarray]:
    """Per question b, the float64 cost block ``C_b`` of shape [N, M_b] (rows tags).

    The model is put in eval mode (no dropout) and restored to its previous mode after.
    ``forward(batch) -> (sums, counts)`` replaces ``sequence_nll(model, batch)`` (e.g. the
    FSDP-wrapped module, whose forward gathers the sharded weights; ``model`` is then only
    switched to eval mode). ``min_forwards``: run at least this many forwards, padding with
    a dummy batch whose result is discarded (every rank must run the same number under FSDP).
    ``prompt_cache``: score continuations from each prompt's KV cache (module doc). It needs
    the model itself, so a ``forward=`` (FSDP: every forward is a collective over whole
    sequences) always uses full sequences.
    """
    if cost not in COST_KINDS:
        raise ValueError(f"cost={cost!r} is not a cost kind; choose one of {list(COST_KINDS)}.")
    per_token = COST_KINDS[cost].per_token
    device = next(model.parameters()).device
    was_training = model.training
    if prompt_cache and forward is None:
        model.eval()
        try:
            flat = _cached_prompt_costs(
                model, questions, tag_ids, pad_id, cost, prefix_tokens, batch_size, chunk_tokens
            )
        finally:
            model.train(was_training)
        return _split_blocks(flat, questions, len(tag_ids))
    if forward is None:
        forward = lambda batch: sequence_nll(model, batch, chunk_tokens)  # noqa: E731
    # Flat layout: question b, then tag i, then trace j (i-major inside a question).
    sequences = []
    for q in questions:
        for tag_id in tag_ids:
            for trace in q.trace_ids:
                sequences.append(
                    build_sequence(q.prompt_ids, tag_id, trace, prefix_tokens=prefix_tokens)
                )
    flat = torch.empty(len(sequences), dtype=torch.float32, device=device)
    order = sorted(range(len(sequences)), key=lambda k: len(sequences[k][0]), reverse=True)
    starts = range(0, len(order), batch_size)
    model.eval()
    try:
        for start in starts:
            rows = order[start : start + batch_size]
            batch = pad_batch([sequences[k] for k in rows], pad_id).to(device)
            sums, counts = forward(batch)
            values = sums / counts.clamp(min=1) if per_token else sums
            flat[torch.tensor(rows, device=device)] = values
        if len(starts) < min_forwards:  # padding: same collectives as the busiest rank
            tag = tag_ids[0]
            dummy = pad_batch([([tag, tag], [IGNORE_INDEX, tag])], pad_id).to(device)
            for _ in range(min_forwards - len(starts)):
                forward(dummy)
    finally:
        model.train(was_training)
    return _split_blocks(flat, questions, len(tag_ids))


def _split_blocks(
    flat: torch.Tensor, questions: Sequence[TokenizedQuestion], num_tags: int
) -> list[np.ndarray]:
    """Flat (question, tag, trace) costs -> per-question float64 [N, M_b] host blocks."""
    host = flat.double().cpu().numpy()  # the one device-to-host copy of the matching step
    blocks, offset = [], 0
    for q in questions:
        size = num_tags * q.num_traces
        blocks.append(host[offset : offset + size].reshape(num_tags, q.num_traces))
        offset += size
    return blocks


def _cached_prompt_costs(
    model, questions, tag_ids, pad_id, cost, prefix_tokens, batch_size, chunk_tokens
) -> torch.Tensor:
    """Flat costs (same layout as the full-sequence path) from per-prompt KV caches.

    Questions go in groups of ``batch_size`` prompts: one prompt forward per group, then
    its continuations in length-sorted micro-batches of ``batch_size`` rows.
    """
    per_token = COST_KINDS[cost].per_token
    device = next(model.parameters()).device
    total = sum(len(tag_ids) * q.num_traces for q in questions)
    flat = torch.empty(total, dtype=torch.float32, device=device)
    offset = 0
    for first in range(0, len(questions), batch_size):
        group = questions[first : first + batch_size]
        encoded = encode_prompts(model, [q.prompt_ids for q in group], pad_id, device)
        rows = []  # (flat index, prompt row in the group, continuation)
        for g, q in enumerate(group):
            for tag_id in tag_ids:
                for trace in q.trace_ids:
                    rows.append(
                        (offset, g, build_sequence((), tag_id, trace, prefix_tokens=prefix_tokens))
                    )
                    offset += 1
        rows.sort(key=lambda row: len(row[2][0]), reverse=True)
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            batch = pad_batch([seq for _, _, seq in part], pad_id).to(device)
            owners = torch.tensor([g for _, g, _ in part], device=device)
            sums, counts = sequence_nll(
                model, batch, chunk_tokens, cached_prompt=encoded.select(owners)
            )
            values = sums / counts.clamp(min=1) if per_token else sums
            flat[torch.tensor([k for k, _, _ in part], device=device)] = values
    return flat


@dataclass(frozen=True)
class AssignmentPolicy:
    """A named way to give tags to a question's traces.

    ``fn(cost, num_tags, num_traces, rng) -> int64 [num_traces]`` (tag index per trace).
    ``needs_cost``: whether the cost matrix must be computed. ``injective``: whether
    distinct traces get distinct tags (then M <= N is required).
    """

    name: str
    fn: Callable[[np.ndarray | None, int, int, np.random.Generator | None], np.ndarray]
    needs_cost: bool
    injective: bool

    def __call__(
        self,
        cost: np.ndarray | None,
        num_tags: int,
        num_traces: int,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        if self.injective and num_traces > num_tags:
            raise ValueError(
                f"policy {self.name!r}: {num_traces} traces but {num_tags} tags; every trace "
                "needs a distinct tag. Raise forking.num_tags, or set data.too_many_traces="
                "keep_most_distinct so trace sets are cut to N when they are tokenized."
            )
        if self.needs_cost and (cost is None or cost.shape != (num_tags, num_traces)):
            got = None if cost is None else cost.shape
            raise ValueError(
                f"policy {self.name!r} needs a [{num_tags}, {num_traces}] cost, got {got}"
            )
        tags = self.fn(cost, num_tags, num_traces, rng)
        return np.asarray(tags, dtype=np.int64)


def _hungarian(cost, num_tags, num_traces, rng) -> np.ndarray:
    if num_traces == 0:
        return np.empty(0, dtype=np.int64)
    # Rows = traces (M <= N) so every trace is matched; col_ind[j] is trace j's tag.
    trace_idx, tag_idx = linear_sum_assignment(cost.T)
    assert np.array_equal(trace_idx, np.arange(num_traces)), trace_idx
    return tag_idx


def _random(cost, num_tags, num_traces, rng) -> np.ndarray:
    if rng is None:
        raise ValueError("policy 'random' needs a numpy Generator (see question_rng)")
    return rng.permutation(num_tags)[:num_traces]


def _shared(cost, num_tags, num_traces, rng) -> np.ndarray:
    return np.zeros(num_traces, dtype=np.int64)


POLICIES: dict[str, AssignmentPolicy] = {
    p.name: p
    for p in (
        AssignmentPolicy("hungarian", _hungarian, needs_cost=True, injective=True),
        AssignmentPolicy("random", _random, needs_cost=False, injective=True),
        AssignmentPolicy("shared", _shared, needs_cost=False, injective=False),
    )
}


def get_policy(name: str) -> AssignmentPolicy:
    """The policy registered under ``name``; an unknown name lists the valid ones."""
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown assignment policy {name!r}; valid policies: {sorted(POLICIES)}"
        ) from None


def spare_tag_fill(cost: np.ndarray, tags: np.ndarray) -> list[tuple[int, int]]:
    """``matching.spare_tags=fill``: ``(tag, trace)`` pairs for the tags ``tags`` leaves unused.

    ``cost`` is one question's [N, M] block, ``tags`` its injective assignment (int [M]).
    Each unused tag i takes its cheapest trace, ``argmin_j cost[i, j]`` (ties: the lowest j),
    in tag order; a trace may serve several spare tags. Returns [] when M == N.
    """
    used = set(np.asarray(tags).tolist())
    return [(i, int(np.argmin(cost[i]))) for i in range(cost.shape[0]) if i not in used]


def question_rng(seed: int, epoch: int, question_id: str) -> np.random.Generator:
    """A generator fixed by (seed, epoch, question): same draws on any worker layout."""
    digest = hashlib.sha256(question_id.encode("utf-8")).digest()
    return np.random.default_rng([seed, epoch, int.from_bytes(digest[:8], "little")])


def assign_tags(
    policy: AssignmentPolicy,
    questions: Sequence[TokenizedQuestion],
    num_tags: int,
    costs: Sequence[np.ndarray] | None = None,
    *,
    seed: int = 0,
    epoch: int = 0,
) -> list[np.ndarray]:
    """One int64 [M_b] tag array per question, solved question by question."""
    if policy.needs_cost and costs is None:
        raise ValueError(f"policy {policy.name!r} needs cost matrices; compute cost_matrices first")
    out = []
    for b, q in enumerate(questions):
        rng = question_rng(seed, epoch, q.question_id) if policy.name == "random" else None
        cost = costs[b] if costs is not None else None
        out.append(policy(cost, num_tags, q.num_traces, rng))
    return out
