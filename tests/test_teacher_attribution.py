"""Tests for ssft.data.teacher_attribution: exact n-grams and scores, known-modes agreement."""

from __future__ import annotations

import json
import math
import random

import pytest

from ssft.data import known_modes
from ssft.data.teacher_attribution import (
    PROFILE_FILE,
    UNKNOWN,
    TeacherProfiles,
    ngrams,
    normalize,
    read_profiles,
    write_profiles,
)
from ssft.errors import InputError
from ssft.eval import metrics as eval_metrics


def test_normalize_and_ngrams_are_exact():
    assert normalize(" 37+58=95\n\n\\boxed{95} ") == "00+00=00 \\boxed{00}"
    assert ngrams("12+3", 3) == {"00+": 1, "0+0": 1}
    assert ngrams("ab ab", 2) == {"ab": 2, "b ": 1, " a": 1}
    assert ngrams("7", 3) == {"0": 1}  # shorter than n: one n-gram of itself
    assert ngrams("  ", 3) == {}


def test_scores_are_the_smoothed_naive_bayes_log_likelihood():
    # Teacher A wrote "aab" (bigrams aa, ab), B wrote "bba" (bb, ba); vocabulary of 4 + 1.
    profiles = TeacherProfiles.from_traces([("A", "aab"), ("B", "bba")], n=2)
    scores = profiles.scores("aa")  # one bigram "aa": seen once by A, never by B
    assert scores["A"] == pytest.approx(math.log(2 / 7))  # (1 + 1) / (2 + 5)
    assert scores["B"] == pytest.approx(math.log(1 / 7))
    assert profiles.attribute("aab") == "A" and profiles.attribute("bbba") == "B"
    assert profiles.attribute("") == UNKNOWN
    assert profiles.attribute("zzzz") == UNKNOWN  # no n-gram of it is any teacher's
    # A tie goes to the teacher first in name order.
    tie = TeacherProfiles.from_traces([("B", "xy"), ("A", "xy")], n=2)
    assert tie.attribute("xy") == "A"


def test_min_known_decides_when_a_sample_is_nobodys():
    profiles = TeacherProfiles.from_traces([("A", "abcd")], n=2)  # ab bc cd
    assert profiles.attribute("abzz") == UNKNOWN  # ab known, bz zz not: 1/3 < 0.5
    assert profiles.attribute("abcz") == "A"  # ab bc known, cz not: 2/3
    lenient = TeacherProfiles(profiles.counts, n=2, min_known=0.0)
    assert lenient.attribute("abzz") == "A"
    with pytest.raises(ValueError, match="min_known"):
        TeacherProfiles(profiles.counts, n=2, min_known=1.5)
    with pytest.raises(ValueError, match="at least one teacher"):
        TeacherProfiles.from_traces([])


def _known_modes_profiles(seed: int = 0) -> TeacherProfiles:
    questions = known_modes.make_questions(200, seed=seed)
    return TeacherProfiles.from_traces(
        (f"strategy:{s}", known_modes.render(q.a, q.b, s))
        for q in questions
        for s in known_modes.STRATEGIES
    )


def test_known_modes_traces_of_new_questions_go_to_their_strategy_teacher():
    profiles = _known_modes_profiles()
    rng = random.Random(1)
    for q in known_modes.make_questions(100, seed=7):
        for s in known_modes.STRATEGIES:
            assert profiles.attribute(known_modes.render(q.a, q.b, s)) == f"strategy:{s}"
            slipped = known_modes.render(q.a, q.b, s, slip=True, rng=rng)
            assert profiles.attribute(slipped) == f"strategy:{s}"  # a slip keeps the layout


def test_teacher_purity_agrees_with_strategy_purity_on_known_modes_samples():
    """Constructed samples under three tags: pure, mixed across questions, and garbage."""
    profiles = _known_modes_profiles()
    questions = known_modes.make_questions(40, seed=3)
    rows = []
    for qi, q in enumerate(questions):
        texts = {
            "<think1>": [known_modes.render(q.a, q.b, "column")] * 2,
            "<think2>": [known_modes.render(q.a, q.b, known_modes.STRATEGIES[qi % 4])] * 2,
            "<think3>": ["=?=?", known_modes.render(q.a, q.b, "round")],
        }
        for tag, samples in texts.items():
            for i, text in enumerate(samples):
                teacher = profiles.attribute(text)
                rows.append(dict(
                    question_id=q.question_id, tag=tag, sample_index=i, correct=True,
                    strategy=known_modes.classify_layout(text),
                    teacher=teacher.removeprefix("strategy:"),
                ))  # fmt: skip
    assert [r["teacher"] for r in rows] == [r["strategy"] for r in rows]
    by_strategy = eval_metrics.label_metrics(rows, ["<think1>", "<think2>", "<think3>"], "strategy")
    by_teacher = eval_metrics.label_metrics(rows, ["<think1>", "<think2>", "<think3>"], "teacher")
    assert (
        by_teacher["teacher_purity"]
        == by_strategy["mode_purity"]
        == pytest.approx((80 + 20 + 40) / 240)
    )
    assert by_teacher["question_tag_teacher_purity"] == pytest.approx((40 + 40 + 20) / 120)
    assert by_teacher["distinct_teachers"] == by_strategy["distinct_strategies"]


def test_profiles_round_trip_through_the_model_folder(tmp_path):
    profiles = _known_modes_profiles()
    assert read_profiles(tmp_path) is None
    write_profiles(tmp_path, profiles)
    again = read_profiles(tmp_path)
    assert again.counts == profiles.counts and again.n == 3 and again.min_known == 0.5
    text = known_modes.render(37, 58, "split")
    assert again.scores(text) == profiles.scores(text)
    stale = {**profiles.to_json(), "version": 0}
    (tmp_path / PROFILE_FILE).write_text(json.dumps(stale))
    with pytest.raises(InputError, match=r"teacher_profiles\.json: version 0"):
        read_profiles(tmp_path)
