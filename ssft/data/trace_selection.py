"""From one question's graded samples to its trace set: filter, de-duplicate, pick M.

SSFT learns a SET of distinct correct traces per question (METHOD.md), so the building stage
keeps at most ``max_traces`` correct traces that differ from each other, and prefers traces
from different teachers: different teachers are the cheapest source of different reasoning.

Each sample ends in exactly one bucket of the returned counts (``DROP_REASONS``) or is kept,
so ``sum(counts.values()) + len(trace_set.traces) == len(graded)``; the returned outcomes
say which, sample by sample (``KEPT`` or the reason), for the rejected-samples table.
Samples are judged in this order:

1. ``empty``: text empty or whitespace-only (checked before grading's verdict, so a teacher
   that returns nothing shows up as such rather than as "incorrect");
2. ``incorrect``: graded incorrect;
3. the rest are visited round-robin over teachers (first-appearance order), each teacher's
   samples in input order; teachers A, B with samples a0 a1 a2, b0 give a0 b0 a1 a2. Against
   the traces kept so far, a sample is
   ``duplicate_exact`` (same text after collapsing whitespace),
   ``duplicate_near`` (``similarity >= near_duplicate_threshold``), or, once ``max_traces``
   are kept, ``over_max``; otherwise it is kept.

Trace ids are ``f"{question_id}/{teacher}/{k}"``, k being the sample's index among that
teacher's samples for the question (all of them, dropped ones included). Given the same
samples, a rerun produces the same ids, so rebuilding a question never mints new ids.

"Distinct" has one definition in the data layer, here: a low Jaccard similarity of 3-gram
sets (``ngrams``, ``jaccard``). The build's near-duplicate test compares word 3-grams
(``similarity``); ``most_distinct``, which tokenization (``ssft.data.tokenize``) uses to cut
a question's traces to a cap or to N, compares token-id 3-grams. The build does not itself
pick the M most distinct: it keeps the first M non-duplicates in teacher round-robin order,
so that different teachers come first.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import NamedTuple

from ssft.data.teachers.base import Question, Sample
from ssft.data.trace_set import Trace, TraceSet

DROP_REASONS = ("empty", "incorrect", "duplicate_exact", "duplicate_near", "over_max")
KEPT = "kept"


class Graded(NamedTuple):
    """A sample and its grade (``ssft.data.grading.grade_sample``); ``grading``: what decided."""

    sample: Sample
    parsed_answer: str | None
    correct: bool
    grading: str | None = None


NGRAM = 3  # items per gram: a text's words (``similarity``) or a trace's token ids


def ngrams(items: Sequence[Hashable], n: int = NGRAM) -> frozenset[tuple]:
    """The ``n``-grams of ``items`` (a text's words, or a trace's token ids) as a set.

    Fewer than ``n`` items are one gram of all of them (no items: the empty gram), so the set
    is never empty.
    """
    n = min(n, len(items))
    return frozenset(tuple(items[i : i + n]) for i in range(len(items) - n + 1))


def jaccard(sa: frozenset, sb: frozenset) -> float:
    """``|sa & sb| / |sa | sb|`` (1.0 for two empty sets): how alike two gram sets are.

    The one definition of "distinct" in the data layer: the build's near-duplicate test
    (``similarity``) and ``most_distinct`` (distance ``1 - jaccard``) both use it.
    """
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the word 3-gram sets of ``a`` and ``b`` (words split on whitespace).

    1.0 does not mean equal: ``"a b c a b c"`` and ``"a b c a b c a"`` share every 3-gram.
    """
    return jaccard(ngrams(a.split()), ngrams(b.split()))


def normalized(text: str) -> str:
    """``text`` with whitespace runs collapsed to one space, case kept: two traces with equal
    normalized texts are exact duplicates (the build's ``duplicate_exact``, tokenization's
    ``duplicate``)."""
    return " ".join(text.split())


def most_distinct(items: Sequence[Sequence[Hashable]], keep: int) -> list[int]:
    """Indices, in stored order, of ``keep`` of ``items`` (token-id sequences, or word lists)
    that differ most from each other; all of them when ``keep >= len(items)``.

    Greedy farthest-point selection under the Jaccard distance of 3-gram sets (``1 -
    jaccard(ngrams(x), ngrams(y))``): start from item 0, repeatedly add the item whose
    distance to the nearest chosen one is largest (ties: the lowest index), then sort.
    Deterministic, cheap, and it prefers items that differ in their wording over near-copies.
    Tokenization keeps traces this way when a question has more than the cap or more than N
    (``data.too_many_traces=keep_most_distinct``).
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep={keep!r}: must be an int >= 1")
    if keep >= len(items):
        return list(range(len(items)))
    grams = [ngrams(x) for x in items]

    def distance(a: int, b: int) -> float:
        return 1.0 - jaccard(grams[a], grams[b])

    chosen = [0]
    while len(chosen) < keep:
        rest = [k for k in range(len(items)) if k not in chosen]
        chosen.append(max(rest, key=lambda k: (min(distance(k, c) for c in chosen), -k)))
    return sorted(chosen)


def _round_robin(items: Sequence[tuple[str, int]]) -> list[int]:
    """Positions of ``(teacher, position)`` items, alternating teachers (first-seen order)."""
    queues: dict[str, list[int]] = {}
    for teacher, pos in items:
        queues.setdefault(teacher, []).append(pos)
    order, depth = [], 0
    while len(order) < len(items):
        order += [q[depth] for q in queues.values() if depth < len(q)]
        depth += 1
    return order


def select_traces(
    question: Question,
    graded: Sequence[Graded | tuple],
    *,
    max_traces: int,
    near_duplicate_threshold: float,
    classify: Callable[[str], str] | None = None,
) -> tuple[TraceSet, dict[str, int], list[str]]:
    """The question's trace set (possibly without traces), the drop counts by reason, and
    each sample's outcome (``KEPT`` or its drop reason), in ``graded`` order.

    ``graded`` holds ``Graded`` rows (or ``(sample, parsed_answer, correct[, grading])``
    tuples), in the order the teachers returned them. ``classify`` labels each kept trace's
    ``mode`` (the known-modes benchmark's strategy classifier); None leaves modes unknown.
    A ``near_duplicate_threshold`` of 1.0 switches the near-duplicate check off: only exact
    duplicates are dropped (see ``similarity`` for why 1.0 is not equality).
    """
    if isinstance(max_traces, bool) or not isinstance(max_traces, int) or max_traces < 1:
        raise ValueError(f"max_traces={max_traces!r}: must be an int >= 1, e.g. 4")
    if not 0.0 < near_duplicate_threshold <= 1.0:
        raise ValueError(
            f"near_duplicate_threshold={near_duplicate_threshold!r}: must be in (0, 1]; "
            "use e.g. 0.9, or 1.0 to drop exact duplicates only"
        )
    graded = [Graded(*g) for g in graded]
    counts = dict.fromkeys(DROP_REASONS, 0)
    outcomes = [KEPT] * len(graded)
    ids: list[str] = []
    per_teacher: dict[str, int] = {}
    candidates: list[tuple[str, int]] = []  # (teacher, position in graded)
    for pos, (sample, _, correct, _) in enumerate(graded):
        if sample.question_id != question.question_id:
            raise ValueError(
                f"graded[{pos}] is a sample of question {sample.question_id!r}, not of "
                f"{question.question_id!r}; group samples by question before selecting"
            )
        k = per_teacher.get(sample.teacher, 0)
        per_teacher[sample.teacher] = k + 1
        ids.append(f"{question.question_id}/{sample.teacher}/{k}")
        if not sample.text.strip():
            outcomes[pos] = "empty"
        elif not correct:
            outcomes[pos] = "incorrect"
        else:
            candidates.append((sample.teacher, pos))

    kept: list[Trace] = []
    kept_norm: set[str] = set()
    kept_shingles: list[frozenset] = []
    for pos in _round_robin(candidates):
        sample, parsed, _, grading = graded[pos]
        norm = normalized(sample.text)
        shingles = ngrams(sample.text.split())
        if norm in kept_norm:
            outcomes[pos] = "duplicate_exact"
        elif near_duplicate_threshold < 1.0 and any(
            jaccard(shingles, s) >= near_duplicate_threshold for s in kept_shingles
        ):
            outcomes[pos] = "duplicate_near"
        elif len(kept) >= max_traces:
            outcomes[pos] = "over_max"
        else:
            kept_norm.add(norm)
            kept_shingles.append(shingles)
            mode = classify(sample.text) if classify is not None else None
            kept.append(
                Trace(
                    ids[pos],
                    sample.teacher,
                    sample.text,
                    parsed,
                    True,
                    sample.num_tokens,
                    mode,
                    grading,
                )
            )
    for outcome in outcomes:
        if outcome != KEPT:
            counts[outcome] += 1
    assert sum(counts.values()) + len(kept) == len(graded), (counts, len(kept), len(graded))
    trace_set = TraceSet(
        question.question_id, question.prompt, question.gold_answer, question.source, tuple(kept)
    )
    return trace_set, counts, outcomes


def rejection_reason(counts: dict[str, int], n_samples: int) -> str:
    """Why a question ended with no trace, from ``select_traces``' counts, for the report."""
    if n_samples == 0:
        return "no samples: the teachers returned none for this question"
    empty, incorrect = counts.get("empty", 0), counts.get("incorrect", 0)
    correct = n_samples - empty - incorrect
    if correct <= 0:
        reason = f"0 of {n_samples} samples correct"
        return reason + (f" ({empty} empty)" if empty else "")
    duplicates = counts.get("duplicate_exact", 0) + counts.get("duplicate_near", 0)
    if duplicates >= correct:
        return "all correct samples were duplicates"
    return f"{correct} of {n_samples} samples correct but none kept (counts: {dict(counts)})"
