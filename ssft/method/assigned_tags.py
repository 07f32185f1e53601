"""The four methods of the paper's comparison, which differ only in how a question's traces
get their tags (``Method.policy``): SSFT (Hungarian matching on the cost), random distinct
tags, and the shared tag (SFT-mixed, single-trace SFT).

Per chunk: cost matrices (no grad; only if the policy needs them) -> assignment -> one
sequence ``[prompt ; tag ; trace]`` per trace, weight 1. With ``matching.spare_tags=fill``
every tag the matching left unused also trains on its cheapest trace (weight 1, not in the
logged loss: the denominator stays the matched traces' tokens, ``ssft.method.losses``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ssft.method.assignments import AssignmentRecord, second_best_gap
from ssft.method.base import MethodContext, StepSequences, TrainingMethod
from ssft.method.losses import matched_sequences
from ssft.method.matching import assign_tags, get_policy, spare_tag_fill
from ssft.method.sequences import TokenizedQuestion
from ssft.method.table import Method


class AssignedTags(TrainingMethod):
    """Tags from an assignment policy; every trace trained once under its tag."""

    def __init__(self, method: Method, cfg: Any) -> None:
        super().__init__(method, cfg)
        if method.policy is None:
            raise ValueError(f"method {method.name!r} needs an assignment policy")
        self.policy = get_policy(method.policy)
        if self.policy.needs_cost != method.needs_cost:
            raise ValueError(
                f"method {method.name!r}: needs_cost={method.needs_cost} but policy "
                f"{self.policy.name!r} needs_cost={self.policy.needs_cost}"
            )
        # Only an injective policy with a cost leaves spare tags to fill.
        self.fill = method.needs_cost and cfg.matching.spare_tags == "fill"

    def sequences_per_question(self, q: TokenizedQuestion) -> int:
        return max(q.num_traces, self.cfg.forking.num_tags) if self.fill else q.num_traces

    def chunk_sequences(
        self, questions: Sequence[TokenizedQuestion], ctx: MethodContext
    ) -> StepSequences:
        costs = ctx.cost_matrices(questions) if self.method.needs_cost else None
        assigned = assign_tags(
            self.policy, questions, len(ctx.tag_ids), costs, seed=ctx.seed, epoch=ctx.epoch
        )
        records = [
            AssignmentRecord(q.question_id, a, q.trace_keys, q.teachers, q.modes,
                             second_best_gap(costs[b], a) if costs is not None else None)
            for b, (q, a) in enumerate(zip(questions, assigned, strict=True))
        ]  # fmt: skip
        spare = None
        if self.fill and questions:  # every unused tag also trains on its cheapest trace
            spare = [spare_tag_fill(c, a) for c, a in zip(costs, assigned, strict=True)]
        seqs = matched_sequences(
            questions, assigned, ctx.tag_ids, tag_loss=self.cfg.forking.tag_loss, spare=spare
        )
        logged = [True] * len(seqs)
        if spare:  # the spare-tag rows train but are not the method's own (logged) loss
            logged = [m for q, extra in zip(questions, spare, strict=True)
                      for m in [True] * q.num_traces + [False] * len(extra)]  # fmt: skip
        return StepSequences(seqs, [1.0] * len(seqs), logged, records)
