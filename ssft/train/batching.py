"""Which questions each worker trains on at each step: deterministic, whole questions, balanced.

A step's global batch is ``questions_per_step`` questions taken in the epoch's order (a
permutation seeded by (seed, epoch)); the last batch of an epoch may be smaller. The batch is
cut into ``grad_accum_steps`` chunks processed one after another, and each chunk is split
across the ranks by whole questions, balancing supervised tokens (largest first, to the
least-loaded rank; ties to the lower rank)::

    epoch order:  q7 q2 q9 q4 q0 q5 q8 q1 | q3 q6 ...      questions_per_step = 8
    step 0:       q7 q2 q9 q4 | q0 q5 q8 q1                grad_accum_steps = 2
    chunk 0:      rank 0 <- q7 q4     rank 1 <- q2 q9      (balanced by tokens)
    chunk 1:      rank 0 <- q0 q8     rank 1 <- q5 q1

Everything is a pure function of (step, seed, data, world size), computed identically on every
rank: no collective is needed to agree on the plan, the global token count (the loss
denominator, known before any forward because a sequence's supervised tokens do not depend
on its tag) or the number of micro-batches every rank must run (the maximum over ranks;
ranks with fewer pad with zero-weight micro-batches, or DDP hangs). Resuming at step s
replays exactly the batches an uninterrupted run would have seen from s on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ssft.method.losses import supervised_tokens
from ssft.method.sequences import TokenizedQuestion


def steps_per_epoch(num_questions: int, questions_per_step: int) -> int:
    return math.ceil(num_questions / questions_per_step)


def planned_steps(
    num_questions: int, questions_per_step: int, epochs: int, max_steps: int | None
) -> int:
    """Optimizer steps of a run: ``epochs`` passes, cut at ``max_steps`` when it is set.

    The schedule (warm-up, decay) spans exactly these steps, so a capped run still decays."""
    total = epochs * steps_per_epoch(num_questions, questions_per_step)
    return total if max_steps is None else min(total, max_steps)


def epoch_order(num_questions: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's question order: a permutation fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x55F7]).permutation(num_questions)


@dataclass(frozen=True)
class StepPlan:
    """``chunks[c][r]``: indices of the questions rank r trains on in chunk c of this step."""

    step: int
    epoch: int
    chunks: tuple[tuple[tuple[int, ...], ...], ...]
    global_tokens: int

    def question_ids(self, questions: Sequence[TokenizedQuestion]) -> list[str]:
        """The step's question ids, sorted: the same whatever the world size."""
        return sorted(questions[i].question_id for c in self.chunks for r in c for i in r)


def _balance(indices: Sequence[int], weights: Mapping[int, int], world_size: int):
    loads, parts = [0] * world_size, [[] for _ in range(world_size)]
    for i in sorted(indices, key=lambda k: (-weights[k], k)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        parts[rank].append(i)
        loads[rank] += weights[i]
    return tuple(tuple(sorted(p)) for p in parts)


def plan_step(
    step: int,
    questions: Sequence[TokenizedQuestion],
    *,
    questions_per_step: int,
    grad_accum_steps: int,
    world_size: int,
    seed: int,
    tag_loss: bool = False,
    tokens: Callable[[TokenizedQuestion], int] | None = None,
) -> StepPlan:
    """The plan of global optimizer step ``step`` (0-based, counted across epochs).

    ``tokens(q)``: a question's supervised tokens (the method's, ``TrainingMethod``); default
    ``supervised_tokens(q, tag_loss)``. They balance the ranks and sum to the denominator."""
    tokens = tokens or (lambda q: supervised_tokens(q, tag_loss))
    per_epoch = steps_per_epoch(len(questions), questions_per_step)
    epoch, batch = divmod(step, per_epoch)
    order = epoch_order(len(questions), seed, epoch)
    picked = order[batch * questions_per_step : (batch + 1) * questions_per_step].tolist()
    # Only the step's own questions: a step's planning cost does not grow with the data set.
    weights = {i: tokens(questions[i]) for i in picked}
    chunks = tuple(
        _balance(chunk.tolist(), weights, world_size)
        for chunk in np.array_split(np.asarray(picked, dtype=np.int64), grad_accum_steps)
    )
    return StepPlan(step, epoch, chunks, sum(weights[i] for i in picked))


def micro_batch_count(
    plan_chunk: Sequence[Sequence[int]],
    questions: Sequence[TokenizedQuestion],
    micro_batch_sequences: int,
    sequences_of: Callable[[TokenizedQuestion], int] | None = None,
) -> int:
    """Micro-batches EVERY rank runs for this chunk: the most any rank needs (at least 1).

    ``sequences_of(q)``: how many sequences question q trains (the method's
    ``sequences_per_question``; default its M traces).
    """
    count = sequences_of or (lambda q: q.num_traces)
    needed = [
        math.ceil(sum(count(questions[i]) for i in rank) / micro_batch_sequences)
        for rank in plan_chunk
    ]
    return max(1, *needed)
