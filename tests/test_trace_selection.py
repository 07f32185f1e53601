"""Tests for ssft.data.trace_selection: each drop rule, teacher diversity, stable ids."""

from __future__ import annotations

from collections import Counter

import pytest

from ssft.data import known_modes
from ssft.data.teachers.base import Question, Sample
from ssft.data.trace_selection import (
    DROP_REASONS,
    KEPT,
    jaccard,
    most_distinct,
    ngrams,
    normalized,
    rejection_reason,
    select_traces,
    similarity,
)
from ssft.data.trace_set import Trace, validate_trace_sets

Q = Question("q1", "12 + 34 = ?", "46", "known_modes/addition-d2")


def g(teacher, text, correct=True, parsed="46", num_tokens=None, qid="q1"):
    return (Sample(qid, teacher, text, num_tokens), parsed, correct)


def select(graded, max_traces=4, threshold=1.0, classify=None):
    ts, counts, outcomes = select_traces(
        Q, graded, max_traces=max_traces, near_duplicate_threshold=threshold, classify=classify
    )
    assert sum(counts.values()) + len(ts.traces) == len(graded)
    assert len(outcomes) == len(graded) and outcomes.count(KEPT) == len(ts.traces)
    assert Counter(o for o in outcomes if o != KEPT) == Counter(
        {reason: n for reason, n in counts.items() if n}
    )
    validate_trace_sets([ts])
    return ts, counts


def counts_of(**nonzero):
    return {reason: nonzero.get(reason, 0) for reason in DROP_REASONS}


def ids(ts):
    return [t.trace_id for t in ts.traces]


def test_keeps_a_correct_trace_with_its_grading_and_tokens():
    ts, counts = select([g("A", "2+4=6 \\boxed{46}", num_tokens=9)])
    assert (ts.question_id, ts.prompt, ts.gold_answer, ts.source) == (
        "q1",
        "12 + 34 = ?",
        "46",
        "known_modes/addition-d2",
    )
    assert ts.traces == (Trace("q1/A/0", "A", "2+4=6 \\boxed{46}", "46", True, 9, None),)
    assert counts == counts_of()


def test_incorrect_and_empty_samples_are_dropped():
    graded = [
        g("A", "\\boxed{45}", correct=False, parsed="45"),
        g("A", "no box", correct=False, parsed=None),
        g("A", ""),
        g("B", " \n\t", correct=True),  # empty wins even if a caller says correct
        g("B", "\\boxed{46}"),
    ]
    ts, counts = select(graded)
    assert ids(ts) == ["q1/B/1"]
    assert counts == counts_of(incorrect=2, empty=2)


def test_exact_duplicates_after_whitespace_normalisation():
    graded = [g("A", "a b\nc \\boxed{46}"), g("B", "  a  b c\t\\boxed{46}\n"), g("B", "a b")]
    ts, counts = select(graded)
    assert ids(ts) == ["q1/A/0", "q1/B/1"]
    assert counts == counts_of(duplicate_exact=1)


def test_similarity_is_jaccard_of_word_3grams():
    # {w1 w2 w3, w2 w3 w4, w3 w4 w5} vs {w1 w2 w3, w2 w3 w4, w3 w4 x}: 2 shared of 4.
    assert similarity("w1 w2 w3 w4 w5", "w1 w2 w3 w4 x") == 0.5
    assert similarity("a b c", "a  b\nc") == 1.0
    assert similarity("a b c a b c", "a b c a b c a") == 1.0  # same 3-gram set, not equal
    assert similarity("a b", "a b c") == 0.0  # fewer words: one shingle of all of them
    assert similarity("x y z", "p q r") == 0.0


def test_one_definition_of_distinct_for_words_and_token_ids():
    """``ngrams`` and ``jaccard`` serve the build (words) and tokenization (token ids) alike."""
    assert ngrams("a b c d".split()) == {("a", "b", "c"), ("b", "c", "d")}
    assert ngrams([1, 2, 3, 4]) == {(1, 2, 3), (2, 3, 4)}
    assert ngrams([7, 8]) == {(7, 8)} and ngrams([7]) == {(7,)}  # short: one gram of all
    assert ngrams([]) == {()} and ngrams("".split()) == {()}  # never empty
    words, ids = "w1 w2 w3 w4 w5".split(), [1, 2, 3, 4, 5]
    other_words, other_ids = "w1 w2 w3 w4 x".split(), [1, 2, 3, 4, 9]
    assert (
        jaccard(ngrams(words), ngrams(other_words))
        == 0.5
        == similarity(" ".join(words), " ".join(other_words))
    )
    assert jaccard(ngrams(ids), ngrams(other_ids)) == 0.5  # the same number for token ids
    assert jaccard(frozenset(), frozenset()) == 1.0
    assert normalized("  a\tb \n c ") == "a b c" and normalized("X") != normalized("x")


def test_most_distinct_is_farthest_point_from_the_first_item():
    traces = [[1, 2, 3, 4], [1, 2, 3, 4], [9, 8, 7, 6], [1, 2, 3, 5]]
    assert most_distinct(traces, 1) == [0]
    assert most_distinct(traces, 2) == [0, 2]  # 2 shares nothing with 0
    # Then 3 (distance 2/3 to 0, 1 to 2) before the copy 1 (distance 0 to 0).
    assert most_distinct(traces, 3) == [0, 2, 3]
    assert most_distinct(traces, 4) == most_distinct(traces, 9) == [0, 1, 2, 3]
    assert most_distinct([], 2) == []
    # Ties go to the lowest index; words work like token ids.
    assert most_distinct([["a"], ["b"], ["c"]], 2) == [0, 1]
    texts = ["x plus y is z", "x plus y is z .", "z is the sum of x and y"]
    assert most_distinct([t.split() for t in texts], 2) == [0, 2]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="keep"):
            most_distinct(traces, bad)


@pytest.mark.parametrize(("threshold", "near"), [(0.5, 1), (0.51, 0), (0.49, 1), (1.0, 0)])
def test_near_duplicate_threshold_is_inclusive(threshold, near):
    graded = [g("A", "w1 w2 w3 w4 w5"), g("B", "w1 w2 w3 w4 x")]
    ts, counts = select(graded, threshold=threshold)
    assert len(ts.traces) == 2 - near
    assert counts == counts_of(duplicate_near=near)


def test_threshold_one_drops_only_exact_duplicates():
    graded = [g("A", "a b c a b c"), g("B", "a b c a b c a"), g("C", "a b c  a b c")]
    ts, counts = select(graded, threshold=1.0)
    assert ids(ts) == ["q1/A/0", "q1/B/0"]
    assert counts == counts_of(duplicate_exact=1)
    ts, counts = select(graded, threshold=0.99)
    assert ids(ts) == ["q1/A/0"]
    assert counts == counts_of(duplicate_exact=1, duplicate_near=1)


def test_duplicates_are_judged_in_round_robin_order_against_kept_traces():
    # B/0 is a near duplicate of A/1, which comes first in the input; round-robin visits B/0
    # first, so B/0 is kept and A/1 is the duplicate (duplicates are counted before over_max).
    graded = [g("A", "p q r s"), g("A", "w1 w2 w3 w4 w5"), g("B", "w1 w2 w3 w4 x")]
    ts, counts = select(graded, max_traces=2, threshold=0.5)
    assert ids(ts) == ["q1/A/0", "q1/B/0"]
    assert counts == counts_of(duplicate_near=1)
    ts, counts = select(graded, max_traces=3, threshold=0.5)
    assert ids(ts) == ["q1/A/0", "q1/B/0"]
    assert counts == counts_of(duplicate_near=1)
    graded[2] = g("B", "u v w x y")
    ts, counts = select(graded, max_traces=2, threshold=0.5)
    assert ids(ts) == ["q1/A/0", "q1/B/0"]
    assert counts == counts_of(over_max=1)


def test_one_trace_per_teacher_before_a_second_from_any():
    graded = [g(t, f"{t} way {k} \\boxed{{46}}") for t in "ABCD" for k in range(3)]
    ts, counts = select(graded, max_traces=4, threshold=0.9)
    assert ids(ts) == ["q1/A/0", "q1/B/0", "q1/C/0", "q1/D/0"]
    assert counts == counts_of(over_max=8)


def test_round_robin_in_first_appearance_order():
    graded = [
        g("B", "b0 \\boxed{46}"),
        g("A", "a0 \\boxed{45}", correct=False),
        g("A", "a1 \\boxed{46}"),
        g("A", "a2 \\boxed{46}"),
        g("B", "b1 \\boxed{46}"),
        g("A", "a3 \\boxed{46}"),
        g("C", "c0 \\boxed{46}"),
    ]
    ts, counts = select(graded, max_traces=5)
    # B first (seen first), then A, then C; second round B, A.
    assert ids(ts) == ["q1/B/0", "q1/A/1", "q1/C/0", "q1/B/1", "q1/A/2"]
    assert counts == counts_of(incorrect=1, over_max=1)


def test_ids_are_deterministic_and_per_teacher():
    graded = [g("A", f"a{k} \\boxed{{46}}") for k in range(3)]
    graded.insert(1, g("B", "b0 \\boxed{46}"))
    first, _ = select(graded, max_traces=4)
    again, _ = select(list(graded), max_traces=4)
    assert first == again
    assert ids(first) == ["q1/A/0", "q1/B/0", "q1/A/1", "q1/A/2"]
    # Another teacher's samples changing does not renumber A's traces.
    other, _ = select([graded[0], g("C", "c0 \\boxed{46}"), graded[2], graded[3]], max_traces=4)
    assert ids(other) == ["q1/A/0", "q1/C/0", "q1/A/1", "q1/A/2"]


def test_mode_from_classify():
    texts = [known_modes.render(12, 34, s) for s in known_modes.STRATEGIES]
    graded = [g(f"strategy:{s}", t) for s, t in zip(known_modes.STRATEGIES, texts, strict=True)]
    ts, _ = select(graded, classify=known_modes.classify, threshold=0.9)
    assert [t.mode for t in ts.traces] == list(known_modes.STRATEGIES)
    ts, _ = select(graded)
    assert [t.mode for t in ts.traces] == [None] * 4


def test_no_samples_gives_an_empty_trace_set():
    ts, counts = select([])
    assert ts.traces == ()
    assert counts == counts_of()
    assert rejection_reason(counts, 0).startswith("no samples")


def test_rejection_reasons():
    graded = [g("A", f"\\boxed{{{k}}}", correct=False, parsed=str(k)) for k in range(8)]
    ts, counts = select(graded)
    assert ts.traces == ()
    assert rejection_reason(counts, 8) == "0 of 8 samples correct"
    ts, counts = select([*graded[:6], g("A", ""), g("B", " ")])
    assert rejection_reason(counts, 8) == "0 of 8 samples correct (2 empty)"
    dups = counts_of(incorrect=2, duplicate_exact=1, duplicate_near=1)
    assert rejection_reason(dups, 4) == "all correct samples were duplicates"


def test_bad_arguments():
    with pytest.raises(ValueError, match="question 'q2', not of 'q1'"):
        select([g("A", "\\boxed{46}", qid="q2")])
    with pytest.raises(ValueError, match="max_traces=0"):
        select([], max_traces=0)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="near_duplicate_threshold"):
            select([], threshold=bad)
