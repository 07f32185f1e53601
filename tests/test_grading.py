"""Tests for ssft.data.grading: boxed extraction, math equivalence, gold-first order, threads."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from ssft.data import grading
from ssft.data.grading import MAX_ANSWER_CHARS, extract_answer, grade, is_correct
from ssft.data.known_modes import parse_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{46}", "46"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),
        ("\\boxed{7} and a truncated \\boxed{\\frac{1}{", "7"),
        ("\\boxed{}", ""),
        ("the answer is 46", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected
    assert parse_answer(text) == expected  # the known-modes parser agrees


@pytest.mark.parametrize(
    ("gold", "text"),
    [
        ("46", "2+4=6\n\\boxed{46}"),
        ("0.5", "\\boxed{\\frac{1}{2}}"),
        ("\\frac{1}{2}", "\\boxed{0.5}"),
        ("1/2", "\\boxed{\\dfrac{1}{2}}"),
        ("3", "\\boxed{3.0}"),
        ("1000", "\\boxed{1,000}"),
        ("-4", "\\boxed{-4}"),
        ("1687.5", "\\boxed{1687.50}"),
        ("\\boxed{5}", "\\boxed{5}"),  # a boxed gold is read the same way
        ("\\{1, 2\\}", "\\boxed{\\{2, 1\\}}"),
    ],
)
def test_equivalent_answers_are_correct(gold, text):
    assert is_correct(gold, text)


@pytest.mark.parametrize(
    ("gold", "text"),
    [
        ("46", "\\boxed{47}"),
        ("0.5", "\\boxed{\\frac{1}{3}}"),
        ("100", "\\boxed{99.9999999}"),
        ("46", "the answer is 46"),  # no box: incorrect even though 46 is there
        ("46", "\\boxed{46"),  # unbalanced box: no answer
        ("46", "\\boxed{}"),
        ("46", ""),
    ],
)
def test_wrong_or_missing_answers_are_incorrect(gold, text):
    assert not is_correct(gold, text)


def test_grade_returns_the_boxed_content():
    assert grade("0.5", "x \\boxed{\\frac{1}{2}}") == ("\\frac{1}{2}", True)
    assert grade("46", "\\boxed{45}") == ("45", False)
    assert grade("46", "46") == (None, False)


def test_gold_first_matters():
    # math-verify compares a relation with a set only when the prediction is the set.
    assert is_correct("1 < x < 2", "\\boxed{(1, 2)}")
    assert not is_correct("(1, 2)", "\\boxed{1 < x < 2}")


def test_overlong_answer_is_incorrect_without_parsing():
    content = "4" * (MAX_ANSWER_CHARS + 1)
    assert grade(content, f"\\boxed{{{content}}}") == (content, False)
    ok = "4" * MAX_ANSWER_CHARS
    assert grade(ok, f"\\boxed{{{ok}}}") == (ok, True)


def test_pathological_answer_times_out_on_the_main_thread(monkeypatch):
    monkeypatch.setattr(grading, "TIMEOUT_S", 1)
    start = time.monotonic()
    assert grade("100", "\\boxed{10^{10^{10}}}") == ("10^{10^{10}}", False)
    assert time.monotonic() - start < 10


def test_timeout_only_on_the_main_thread():
    assert grading._timeout() == grading.TIMEOUT_S
    seen = []
    thread = threading.Thread(target=lambda: seen.append(grading._timeout()))
    thread.start()
    thread.join()
    assert seen == [None]


CASES = [("46", "\\boxed{46}"), ("0.5", "\\boxed{\\frac{1}{2}}"), ("46", "\\boxed{47}"), ("1", "")]
EXPECTED = [("46", True), ("\\frac{1}{2}", True), ("47", False), (None, False)]


def test_grading_works_in_a_thread():
    results, errors = [], []

    def work():
        try:
            results.extend(grade(g, t) for g, t in CASES)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not errors, errors
    assert results == EXPECTED


def test_grading_works_in_worker_processes():
    golds, texts = zip(*CASES, strict=True)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, nothing inherited
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        assert list(pool.map(grade, golds, texts)) == EXPECTED


def test_off_the_main_thread_grading_prints_no_timeout_notice(caplog):
    """math-verify's "Timeout is disabled" warning is dropped; its other warnings are not."""
    import logging

    import math_verify.grader
    import math_verify.parser

    caplog.set_level(logging.WARNING)
    math_verify.grader.TIMEOUT_WARNING_SHOWN = False
    math_verify.parser.TIMEOUT_WARNING_SHOWN = False
    worker = threading.Thread(target=grade, args=("98761", "so \\boxed{98761}"))
    worker.start()
    worker.join()
    assert not [r for r in caplog.records if "Timeout is disabled" in r.getMessage()]
    logging.getLogger("math_verify.grader").warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]


# -- extraction modes ------------------------------------------------------------------------


def test_extraction_modes_are_the_configs_choices():
    from typing import get_args

    from ssft.config import AnswerExtraction

    assert tuple(grading.EXTRACTIONS) == get_args(AnswerExtraction)


@pytest.mark.parametrize(
    ("text", "boxed", "final_answer", "last_expression"),
    [
        # A box wins in every mode.
        ("3 + 4 = 7, so \\boxed{7}.", ("7", True), ("7", True), ("7", True)),
        # An anchored answer: only the free-form modes read it.
        ("3 + 4 = 7. The final answer is 7.", (None, False), ("7", True), ("7", True)),
        ("So the answer is $\\frac{7}{1}$.", (None, False), ("\\frac{7}{1}", True),
         ("\\frac{7}{1}", True)),
        # No anchor: only last_expression guesses, and reads the sentence's last number.
        ("There are 7 ways to pick 2.", (None, False), (None, False), ("2", False)),
        ("We get 3 + 4 = 7", (None, False), (None, False), ("7", True)),
        ("", (None, False), (None, False), (None, False)),
    ],
)  # fmt: skip
def test_extraction_modes_on_constructed_texts(text, boxed, final_answer, last_expression):
    assert grade("7", text, "boxed") == boxed
    assert grade("7", text, "final_answer") == final_answer
    assert grade("7", text, "last_expression") == last_expression


def test_free_form_modes_read_only_the_end_of_a_long_text():
    answer = "The final answer is 7."
    assert grade("7", answer + " x" * grading.MAX_FREE_FORM_CHARS, "final_answer") == (None, False)
    assert grade("7", "x " * grading.MAX_FREE_FORM_CHARS + answer, "final_answer") == ("7", True)


def test_unknown_extraction_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'boxd' is not a mode; choose one of \['boxed', "):
        grade("7", "\\boxed{7}", "boxd")


def test_a_human_verdict_overrules_the_extraction_and_says_so():
    assert grading.grade_sample("7", "\\boxed{7}", "boxed", None) == ("7", True, "boxed")
    assert grading.grade_sample("7", "\\boxed{7}", "boxed", False) == ("7", False, "human")
    assert grading.grade_sample("7", "no answer here", "boxed", True) == (None, True, "human")
    assert grading.grade_sample("7", "answer: 7", "final_answer") == ("7", True, "final_answer")
