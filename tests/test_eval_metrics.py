"""Tests for ssft.eval.metrics: analytic pass@k, votes, Cons@N, per-tag and known-modes tables."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest

from ssft.data.grading import grade
from ssft.eval.metrics import (
    cons_at_k,
    cons_native,
    distinct_labels_per_question,
    greedy_metrics,
    label_metrics,
    majority_vote,
    min_tag_accuracy,
    mode_purity,
    parallel_groups,
    pass1,
    pass_at_k,
    pass_at_k_table,
    per_tag,
    question_tag_purity,
    summarize,
    tag_label_counts,
    tag_sort_key,
    vote_correct,
)

T1, T2, T3 = "<think1>", "<think2>", "<think3>"
TAGS = [T1, T2, T3]
GOLD = {"q1": "5", "q2": "1/2"}
# (question, tag) -> [(boxed answer or None, strategy), ...] by sample_index.
SAMPLES = {
    ("q1", T1): [("5", "column"), ("7", "column")],
    ("q1", T2): [("5", "split"), ("7", "unknown")],
    ("q1", T3): [("7", "round"), ("6", "unknown")],
    ("q2", T1): [("0.5", "column"), (None, "unknown")],
    ("q2", T2): [("3", "round"), ("\\frac{1}{2}", "unknown")],
    ("q2", T3): [("\\frac{1}{2}", "round"), ("4", "unknown")],
}


def make_rows() -> list[dict]:
    rows = []
    for (qid, tag), samples in SAMPLES.items():
        for i, (answer, strategy) in enumerate(samples):
            text = "no box" if answer is None else f"work\n\\boxed{{{answer}}}"
            parsed, correct = grade(GOLD[qid], text)
            rows.append(
                dict(question_id=qid, tag=tag, sample_index=i, text=text, parsed_answer=parsed,
                     correct=correct, num_tokens=10 * (i + 1) + len(tag), strategy=strategy)
            )  # fmt: skip
    return rows


# ---- pass@k ------------------------------------------------------------------------------


def exact_pass_at_k(n: int, c: int, k: int) -> float:
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_pass_at_k_analytic():
    for n in range(1, 13):
        for k in range(1, n + 1):
            assert pass_at_k(n, n, k) == 1.0
            assert pass_at_k(n, 0, k) == 0.0
            for c in range(n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), abs=1e-12)
        for c in range(n + 1):
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10


def test_pass_at_k_stable_for_large_n():
    for c in (0, 1, 3, 50, 150, 199, 200):
        values = [pass_at_k(200, c, k) for k in (1, 2, 5, 10, 50, 100, 200)]
        assert values == sorted(values) and all(0.0 <= v <= 1.0 for v in values)
        for k in (1, 5, 100):
            assert pass_at_k(200, c, k) == pytest.approx(exact_pass_at_k(200, c, k), rel=1e-10)
    assert pass_at_k(2000, 1, 1) == pytest.approx(1 / 2000, rel=1e-10)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 2, 5), (4, 2, 0), (4, 5, 1), (4, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_table():
    rows = make_rows()
    table = pass_at_k_table(rows, [1, 4])  # pooled: q1 n=6 c=2, q2 n=6 c=3
    assert table.n == 6 and table.n_questions == 2
    assert table.values[1] == pytest.approx((2 / 6 + 3 / 6) / 2)
    assert table.values[4] == pytest.approx((14 / 15 + 1.0) / 2)  # q1: 1 - C(4,4)/C(6,4)
    by_tag = pass_at_k_table(rows, [2], tag=T3)  # q1 c=0, q2 c=1 of n=2
    assert by_tag.n == 2 and by_tag.values[2] == pytest.approx(0.5)
    assert pass_at_k_table(pa.Table.from_pylist(rows), [1, 4]) == table
    with pytest.raises(ValueError, match="only 2 samples under tag"):
        pass_at_k_table(rows, [3], tag=T1)
    with pytest.raises(ValueError, match="no sample rows"):
        pass_at_k_table([], [1])
    with pytest.raises(ValueError, match="lack columns"):
        pass_at_k_table([{"question_id": "q1", "tag": T1}], [1])


# ---- majority vote -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["3", "0.5", "\\frac{1}{2}"], "0.5"),  # equivalent answers form one group of 2
        (["0.5", "\\frac{1}{2}", "3", "3"], "0.5"),  # 2 vs 2: the earliest group wins
        (["3", "3", "0.5", "\\frac{1}{2}"], "3"),
        (["8", "7"], "8"),
        (["7", "8", "8", "7", " 8 "], "8"),  # stripped strings are equal
        ([None, None, "4"], "4"),  # missing answers never win ...
        (["", " ", "2"], "2"),
        ([None, None], None),  # ... unless all are missing
        ([], None),
    ],
)
def test_majority_vote(answers, expected):
    assert majority_vote(answers) == expected


def test_vote_correct():
    assert vote_correct("1/2", ["0.5", "3", "\\frac{1}{2}"])
    assert not vote_correct("3", ["0.5", "3", "\\frac{1}{2}"])
    assert not vote_correct("1", [None, None])


# ---- Cons@N ------------------------------------------------------------------------------


def test_cons_native():
    # q1 groups [5,5,7] right, [7,7,6] wrong; q2 [0.5,3,1/2] right, [None,1/2,4] tie -> 1/2.
    assert cons_native(make_rows(), TAGS) == pytest.approx(0.75)


def test_cons_at_k_round_robin():
    rows = make_rows()
    # slots: T1[0] T2[0] T3[0] T1[1] T2[1] T3[1]
    assert cons_at_k(rows, TAGS, 4) == 1.0  # q1 [5,5,7,7]: tie -> 5; q2 [0.5,3,1/2,None]
    assert cons_at_k(rows, TAGS, 6) == 0.5  # q1 [5,5,7,7,7,6] -> 7 wrong; q2 1/2 x3
    assert cons_at_k(rows, TAGS, 1) == 1.0
    assert cons_at_k(rows, [T3], 2) == 0.5  # q1 [7,6] -> 7 wrong; q2 [1/2,4] tie -> 1/2
    with pytest.raises(ValueError, match="needs 3 samples per question under tag '<think1>'"):
        cons_at_k(rows, TAGS, 7)  # T1 would supply slots 0, 3, 6
    assert cons_at_k(pa.Table.from_pylist(rows), TAGS, 6) == 0.5


# ---- per-tag accuracy and length ---------------------------------------------------------


def test_per_tag_and_minimum():
    rows = make_rows()
    stats = per_tag(rows)
    assert list(stats) == TAGS
    assert [s.accuracy for s in stats.values()] == pytest.approx([0.5, 0.5, 0.25])
    assert stats[T1].n == 4 and stats[T1].mean_tokens == 23.0 and stats[T1].median_tokens == 23.0
    assert pass1(rows, T3) == 0.25
    assert min_tag_accuracy(rows) == 0.25 and min_tag_accuracy(rows, [T1, T2]) == 0.5


def test_tag_sort_key_is_natural():
    tags = ["<think10>", "<think2>", "<think1>"]
    assert sorted(tags, key=tag_sort_key) == ["<think1>", "<think2>", "<think10>"]


# ---- known modes -------------------------------------------------------------------------


def test_tag_label_counts():
    tags, strategies, counts = tag_label_counts(make_rows())
    assert tags == TAGS and strategies == ["column", "round", "split", "unknown"]
    np.testing.assert_array_equal(counts, [[3, 0, 0, 1], [0, 1, 1, 2], [0, 2, 0, 2]])


def test_mode_purity():
    per, mean = mode_purity(make_rows())
    # "unknown" never dominates; T2: round and split tie, alphabetical order picks round.
    assert per == {T1: ("column", 0.75), T2: ("round", 0.25), T3: ("round", 0.5)}
    assert mean == pytest.approx(6 / 12)
    garbage = [dict(r, strategy="unknown") for r in make_rows()]
    assert mode_purity(garbage) == (
        {T1: ("unknown", 0.0), T2: ("unknown", 0.0), T3: ("unknown", 0.0)},
        0.0,
    )
    unclassified = [dict(r, strategy=None) for r in make_rows()]
    with pytest.raises(ValueError, match="classify"):
        mode_purity(unclassified)


def test_distinct_labels_per_question():
    rows = make_rows()
    # sample 0: q1 column/split/round -> 3; q2 column/round/round -> 2.
    assert distinct_labels_per_question(rows, TAGS) == 2.5
    assert distinct_labels_per_question(rows, [T2, T3]) == 1.5  # q2: round, round
    with pytest.raises(ValueError, match="no sample_index 0"):
        distinct_labels_per_question([r for r in rows if r["sample_index"]], TAGS)


# ---- summarize ---------------------------------------------------------------------------


def test_summarize():
    rows = make_rows()
    extra = [dict(r, tag="<think9>") for r in rows]  # a tag outside `tags` is dropped
    out = summarize(rows + extra, TAGS, T1, [1, 4])
    expected_keys = {"pass1", "tag_accuracy_min", "cons_native", "n_samples", "n_questions"}
    expected_keys |= {"pass@1", "pass@4", "cons@1", "cons@4", "mode_purity"}
    expected_keys |= {"unknown_strategy_share", "question_tag_mode_purity", "tag_accuracy_mean"}
    expected_keys |= {"distinct_strategies"}
    for t in TAGS:
        expected_keys |= {f"{m}/{t}" for m in ("pass1", "length_mean", "length_median")}
        expected_keys |= {f"n_samples/{t}", f"mode_purity/{t}"}
    assert set(out) == expected_keys
    assert all(isinstance(v, float) for v in out.values())
    assert out["pass1"] == 0.5 and out["pass1/<think3>"] == 0.25
    assert out["tag_accuracy_min"] == 0.25 and out["cons_native"] == 0.75
    assert out["tag_accuracy_mean"] == pytest.approx(sum(out[f"pass1/{t}"] for t in TAGS) / 3)
    assert out["pass@1"] == pytest.approx(5 / 12) and out["pass@4"] == pytest.approx(29 / 30)
    assert out["cons@4"] == 1.0 and out["n_samples"] == 6.0 and out["n_questions"] == 2.0
    assert out["mode_purity"] == pytest.approx(6 / 12)
    assert (
        out["unknown_strategy_share"] == pytest.approx(5 / 12) and out["distinct_strategies"] == 2.5
    )
    plain = summarize([dict(r, strategy=None) for r in rows], TAGS, T1, [1])
    assert "mode_purity" not in plain and "distinct_strategies" not in plain
    with pytest.raises(ValueError, match="pass1_tag"):
        summarize(rows, TAGS, "<think9>", [1])


# ---- one computation of the votes, N parallel samples of a shared tag ---------------------

SHARED = "<think>"
# A shared-tag method with N = 2: per question, 4 samples (boxed answer, strategy) under one tag.
SHARED_SAMPLES = {
    "q1": [("5", "column"), ("7", "split"), ("5", "column"), ("7", "column")],  # gold 5
    "q2": [("4", "round"), ("3", "unknown"), ("3", "round"), ("4", None)],  # gold 3
}
SHARED_GOLD = {"q1": "5", "q2": "3"}


def shared_rows() -> list[dict]:
    rows = []
    for qid, samples in SHARED_SAMPLES.items():
        for i, (answer, strategy) in enumerate(samples):
            parsed, correct = grade(SHARED_GOLD[qid], f"work\n\\boxed{{{answer}}}")
            rows.append(dict(question_id=qid, tag=SHARED, sample_index=i, parsed_answer=parsed,
                             correct=correct, num_tokens=10, strategy=strategy))  # fmt: skip
    return rows


def test_parallel_groups_put_a_shared_tags_samples_n_at_a_time():
    rows = [*shared_rows(), make_rows()[0]]  # a row of another tag is left alone
    grouped, tags = parallel_groups(rows, [SHARED], 2)
    assert tags == ["<think>#0", "<think>#1"]
    q1 = [(r["tag"], r["sample_index"], r["parsed_answer"]) for r in grouped[:4]]
    assert q1 == [("<think>#0", 0, "5"), ("<think>#1", 0, "7"),
                  ("<think>#0", 1, "5"), ("<think>#1", 1, "7")]  # fmt: skip
    assert grouped[-1] == rows[-1]
    plain = make_rows()
    assert parallel_groups(plain, TAGS, 3) == parallel_groups(plain, TAGS) == (plain, TAGS)
    assert parallel_groups(rows, [SHARED], 1) == (rows, [SHARED])
    with pytest.raises(ValueError, match="3 tags are groups of 3 samples, not of n=2"):
        parallel_groups(plain, TAGS, 2)


def test_summarize_votes_over_a_shared_tags_groups_once_by_hand():
    rows = shared_rows()
    out = summarize(rows, [SHARED], SHARED, [1, 2, 4], group_size=2, cons_k=3)
    # Cons@N, N = 2: groups (samples 0,1) and (2,3). q1 [5,7] tie -> 5 right, [5,7] -> 5 right;
    # q2 [4,3] tie -> 4 wrong, [3,4] -> 3 right: (1 + 1/2) / 2.
    assert out["cons_native"] == 0.75
    # Cons@k: slot j is sample j. k=1: q1 5, q2 4; k=2: q1 [5,7] -> 5, q2 [4,3] -> 4;
    # k=4: ties to the earliest, 5 and 4; cons_k = 3: q1 [5,7,5] -> 5, q2 [4,3,3] -> 3.
    assert (out["cons@1"], out["cons@2"], out["cons@4"], out["cons_k"]) == (0.5, 0.5, 0.5, 1.0)
    # Distinct strategies among each question's N = 2 parallel samples (0 and 1): q1
    # column, split -> 2; q2 round, unknown -> 1. Purity stays per (real) tag: 3 column of
    # the 7 labelled samples.
    assert out["distinct_strategies"] == 1.5
    assert out["mode_purity"] == pytest.approx(3 / 7) and set(out) >= {"mode_purity/<think>"}
    assert list(out)[-1] == "cons_k"  # last: metrics.json keeps its key order
    # Without the grouping each "group" is one sample (what shared-tag votes must not be).
    alone = summarize(rows, [SHARED], SHARED, [1, 2, 4])
    assert alone["cons_native"] == 0.5 and alone["distinct_strategies"] == 1.0
    assert {k: alone[k] for k in ("cons@1", "cons@2", "cons@4")} == {
        k: out[k] for k in ("cons@1", "cons@2", "cons@4")
    }  # Cons@k reads the same samples either way
    assert "cons_k" not in alone


def test_summarize_computes_each_vote_once(monkeypatch):
    import ssft.eval.metrics as m

    calls, real = [], m.cons_at_k

    def counted(rows, tags, k):
        calls.append(k)
        return real(rows, tags, k)

    monkeypatch.setattr(m, "cons_at_k", counted)
    out = m.summarize(make_rows(), TAGS, T1, [1, 2, 4], cons_k=4)
    assert calls == [1, 2, 4] and out["cons_k"] == out["cons@4"]  # cons_k = 4 reused
    calls.clear()
    out = m.summarize(make_rows(), TAGS, T1, [1, 2, 4], cons_k=6)
    assert calls == [1, 2, 4, 6] and out["cons_k"] == cons_at_k(make_rows(), TAGS, 6) == 0.5
    # Forking tags: the groups are the tags themselves, whatever group_size says (= N).
    assert m.summarize(make_rows(), TAGS, T1, [1], group_size=3) == m.summarize(
        make_rows(), TAGS, T1, [1]
    )


def test_greedy_metrics_by_hand():
    greedy = [dict(r, sample_index=0) for r in make_rows() if r["sample_index"] == 0]
    out = greedy_metrics(greedy, TAGS)
    # Sample 0 of each tag: q1 5, 5, 7 (gold 5); q2 0.5, 3, 1/2 (gold 1/2).
    assert [out[f"greedy_pass1/{t}"] for t in TAGS] == [1.0, 0.5, 0.5]
    assert out["greedy_accuracy_mean"] == pytest.approx(2 / 3)
    assert out["distinct_strategies_greedy"] == 2.5  # q1 column/split/round, q2 column/round
    assert "distinct_teachers_greedy" not in out  # no row carries a teacher


# ---- agreement with lighteval ------------------------------------------------------------
# lighteval 0.13.0 (src/lighteval/metrics/metrics_sample.py): PassAtK.pass_at_k is
#     if n - c < k: return 1.0
#     return 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))
# and MajAtN.compute votes with `max(all_answers, key=all_answers.count)` over the
# (normalized) answer strings: exact string groups, ties to the earliest first occurrence.
# Ported here because lighteval cannot be a dev dependency: it pins latex2sympy2_extended==1.0.6
# while math-verify 0.9 pins 1.11.0. The test after these runs lighteval itself when importable.


def lighteval_pass_at_k(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    return 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))


def random_votes(rng: random.Random) -> list[str]:
    # Integers written one way each: string groups and math-verify groups coincide.
    return [str(rng.randint(0, 4)) for _ in range(rng.randint(1, 9))]


def test_agrees_with_lighteval_formulas():
    for n in range(1, 25):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == lighteval_pass_at_k(n, c, k)
    rng = random.Random(0)
    for _ in range(200):
        answers = random_votes(rng)
        assert majority_vote(answers) == max(answers, key=answers.count)


def test_agrees_with_lighteval_itself():
    metrics = pytest.importorskip("lighteval.metrics.metrics_sample")
    from lighteval.models.model_output import ModelResponse
    from lighteval.tasks.requests import Doc

    for n, c, k in [(1, 0, 1), (5, 2, 2), (8, 3, 4), (16, 1, 8), (200, 7, 50), (10, 10, 3)]:
        preds = ["gold"] * c + ["wrong"] * (n - c)
        doc = Doc(query="q", choices=["gold"], gold_index=0)
        theirs = metrics.PassAtK(k=k, n=n).compute(
            doc=doc, model_response=ModelResponse(text=preds)
        )
        assert pass_at_k(n, c, k) == pytest.approx(float(theirs), abs=1e-15)
    rng = random.Random(1)
    for _ in range(50):
        answers = random_votes(rng)
        maj = metrics.MajAtN(n=len(answers))
        for gold in sorted(set(answers)):  # maj@n scores 1 exactly for lighteval's winner
            doc = Doc(query="q", choices=[gold], gold_index=0)
            theirs = maj.compute(doc=doc, model_response=ModelResponse(text=list(answers)))
            assert (majority_vote(answers) == gold) == bool(theirs)
            assert vote_correct(gold, answers) == bool(theirs)


def test_question_tag_purity_counts_unknown_against_each_question_tag_pair():
    # q1: T1 column,column -> 1; T2 split,unknown -> 1/2; T3 round,unknown -> 1/2;
    # q2: T1 column,unknown; T2 round,unknown; T3 round,unknown -> 1/2 each.
    assert question_tag_purity(make_rows()) == pytest.approx((1 + 5 * 0.5) / 6)
    # A tag that means different modes on different questions is impure across questions
    # (mode_purity) but pure within each question.
    rows = [dict(question_id=q, tag=T1, sample_index=i, correct=True, strategy=s)
            for q, s in (("a", "column"), ("b", "split")) for i in range(2)]  # fmt: skip
    assert question_tag_purity(rows) == 1.0
    assert mode_purity(rows)[1] == 0.5


def test_label_metrics_name_their_keys_after_the_label_column():
    rows = [dict(r, teacher=r["strategy"]) for r in make_rows()]
    strategy = label_metrics(rows, TAGS, "strategy")
    teacher = label_metrics(rows, TAGS, "teacher")
    assert strategy["mode_purity"] == teacher["teacher_purity"] == pytest.approx(6 / 12)
    assert strategy["distinct_strategies"] == teacher["distinct_teachers"] == 2.5
    assert teacher["unknown_teacher_share"] == strategy["unknown_strategy_share"] == 5 / 12
    assert set(teacher) == {
        "teacher_purity", "teacher_purity/<think1>", "teacher_purity/<think2>",
        "teacher_purity/<think3>", "question_tag_teacher_purity", "distinct_teachers",
        "unknown_teacher_share",
    }  # fmt: skip
    assert label_metrics(make_rows(), TAGS, "teacher") == {}  # no row carries a teacher
