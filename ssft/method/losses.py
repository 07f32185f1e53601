"""The SSFT loss: next-token cross-entropy on the matched (prompt, tag, trace) sequences only.

After matching, question b contributes exactly its M_b sequences ``[x ; tag sigma(j) ; r(j)]``,
laid out along the batch dimension question by question, traces in stored order::

    row 0   q0 | <think3> | trace 0 of q0 | EOT
    row 1   q0 | <think1> | trace 1 of q0 | EOT
    row 2   q1 | <think2> | trace 0 of q1 | EOT
    ...

The N - M unmatched (tag, trace) pairs are never forwarded with gradient: an unused tag
gets no gradient from that question through its input embedding. The exception is the
``matching.spare_tags=fill`` option: each unused tag then also trains on its cheapest trace
(extra rows after the question's matched ones); the denominator stays the matched traces'
token count, so the matched part of the loss is unchanged and the spare rows add to it.

Normalisation ("token mean over the global batch"): every micro-batch returns its local
NLL SUM and its supervised-token COUNT; the training loop all-reduces the counts of the
whole optimizer step once and backpropagates ``local_sum / global_count``. Gradients then
equal those of one big batch whatever the micro-batching, accumulation or world size (so
1 x 8 and 8 x 1 accumulation agree), and every supervised token weighs the same: long
traces count in proportion to their length, as in ordinary SFT. Per-sequence means would
instead let a 20-token trace weigh as much as a 2,000-token one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ssft.method.sequences import TokenizedQuestion, build_sequence


def matched_sequences(
    questions: Sequence[TokenizedQuestion],
    assignments: Sequence[np.ndarray],
    tag_ids: Sequence[int],
    *,
    tag_loss: bool = False,
    spare: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` of every matched sequence, question-major (see diagram).

    ``spare[b]``: extra ``(tag index, trace index)`` pairs of question b
    (``matching.spare_tags=fill``, ``ssft.method.matching.spare_tag_fill``), appended after that
    question's matched sequences.
    """
    if len(questions) != len(assignments):
        raise ValueError(f"{len(questions)} questions but {len(assignments)} assignments")
    out = []
    for b, (q, tags) in enumerate(zip(questions, assignments, strict=True)):
        assert len(tags) == q.num_traces, (
            f"{q.question_id}: {len(tags)} tags, {q.num_traces} traces"
        )
        pairs = [(int(tag), j) for j, tag in enumerate(tags)] + list(spare[b] if spare else [])
        for tag, j in pairs:
            out.append(
                build_sequence(q.prompt_ids, tag_ids[tag], q.trace_ids[j], tag_loss=tag_loss)
            )
    return out


def supervised_tokens(q: TokenizedQuestion, tag_loss: bool = False) -> int:
    """Loss tokens of all of a question's sequences (trace + end-of-turn, + tag if supervised):
    its share of the step's loss denominator, known before any forward."""
    return sum(len(t) for t in q.trace_ids) + (q.num_traces if tag_loss else 0)
