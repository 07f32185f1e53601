"""One question's assignment in one step, as the matching statistics keep it, and the gap to
the runner-up assignment (how decided a Hungarian matching was).

Host-side only (numpy, scipy): a method builds ``AssignmentRecord``s while it assigns tags,
and ``ssft.train.matching_stats`` aggregates them over training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


def second_best_gap(cost: np.ndarray, tags: np.ndarray) -> float:
    """Cost of the second-best injective assignment minus the best one, for one question.

    ``cost`` is [N, M] (rows tags, columns traces, M <= N); ``tags`` int [M] is the optimum
    (``tags[j]`` = tag of trace j, as the hungarian policy returns it). Murty/Lawler: any
    other assignment lacks at least one edge ``(tags[j], j)`` of the optimum, so the
    second best is the cheapest over the M subproblems "edge j forbidden" (M small solves).
    Returns +inf when no other assignment exists (M == 0, or N == 1), 0.0 for ties.
    Raises ``ValueError`` when ``tags`` is not a least-cost assignment of ``cost``.
    """
    cost = np.asarray(cost, dtype=np.float64)
    tags = np.asarray(tags, dtype=np.int64)
    if cost.ndim != 2 or tags.shape != (cost.shape[1],) or cost.shape[1] > cost.shape[0]:
        raise ValueError(
            f"need cost [N, M] with M <= N and tags [M]; got cost {cost.shape}, tags {tags.shape}"
        )
    if not np.isfinite(cost).all():
        raise ValueError("cost has NaN or inf entries; the gap is defined for finite costs")
    num_tags, num_traces = cost.shape
    if num_traces and (
        tags.min() < 0 or tags.max() >= num_tags or len(set(tags.tolist())) != num_traces
    ):
        raise ValueError(f"tags {tags.tolist()} is not an injective map into {num_tags} tags")
    best = float(cost[tags, np.arange(num_traces)].sum())
    by_trace = cost.T.copy()  # [M, N]: rows traces, so every trace is matched
    second = math.inf
    for j in range(num_traces):
        kept = by_trace[j, tags[j]]
        by_trace[j, tags[j]] = np.inf  # forbid edge (tags[j], j); restored below
        try:
            rows, cols = linear_sum_assignment(by_trace)
            second = min(second, float(by_trace[rows, cols].sum()))
        except ValueError:  # infeasible: trace j has no other tag (N == 1)
            pass
        by_trace[j, tags[j]] = kept
    gap = second - best
    # Sums in a different order can differ by rounding: a tie may come out as -1e-16.
    if gap < -1e-9 * max(1.0, abs(best)):
        raise ValueError(f"tags cost {best} but another assignment costs {second}: not optimal")
    return max(gap, 0.0)


@dataclass(frozen=True)
class AssignmentRecord:
    """One question's assignment in one step; inputs are normalised to tuples of int / str.

    ``tags[j]`` is the tag index of trace j (an int64 array from the policy is fine);
    ``trace_keys[j]`` its stable trace id. ``teachers`` / ``modes`` are empty when unknown,
    else one per trace. ``gap``: ``second_best_gap`` (hungarian only), else None.
    """

    question_id: str
    tags: tuple[int, ...]
    trace_keys: tuple[str, ...]
    teachers: tuple[str, ...] = ()
    modes: tuple[str | None, ...] = ()
    gap: float | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise once, here
        put(self, "question_id", str(self.question_id))
        put(self, "tags", tuple(int(t) for t in self.tags))
        put(self, "trace_keys", tuple(str(k) for k in self.trace_keys))
        put(self, "teachers", tuple(str(t) for t in self.teachers))
        put(self, "modes", tuple(None if m is None else str(m) for m in self.modes))
        put(self, "gap", None if self.gap is None else float(self.gap))
        m = len(self.tags)
        known = (len(self.teachers), len(self.modes))
        if len(self.trace_keys) != m or any(n not in (0, m) for n in known):
            raise ValueError(
                f"question {self.question_id!r}: {m} tags, {len(self.trace_keys)} trace_keys, "
                f"{len(self.teachers)} teachers, {len(self.modes)} modes; trace_keys needs one "
                "per trace, teachers and modes one per trace or none"
            )

    def mapping(self) -> dict[str, int]:
        """trace key -> tag: the assignment, independent of the order of the traces."""
        return dict(zip(self.trace_keys, self.tags, strict=True))
