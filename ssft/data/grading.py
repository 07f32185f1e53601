"""Grading: is a sampled answer text's final answer mathematically equal to the gold answer?

Rules (ECOSYSTEM.md, "Grading and metrics"):

- Where the answer is read from is an ``extraction`` mode, chosen per teacher
  (``build.teachers[i].answer_extraction``) and for the student (``eval.answer_extraction``),
  and recorded with every graded trace (``Trace.grading``). ``EXTRACTIONS`` lists them:

  ``boxed`` (the default, strict): the content of the LAST balanced ``\\boxed{...}``
  (``extract_answer``). A text without one is incorrect: teachers asked to box their final
  answer that do not are not trusted, and guessing "the last number" would credit
  half-finished traces.
  ``final_answer``: a boxed answer, else an answer math-verify finds after an anchor phrase
  ("final answer is ...", "answer: ..."), as lighteval's math metrics read free-form
  solutions; a text without an anchor is incorrect.
  ``last_expression``: math-verify's default extraction: anchors and boxes first, else the
  last LaTeX or plain expression of the text. The loosest: "less than or equal to 1." at the
  end of a sentence reads as the answer 1. Measure it before trusting it
  (``benchmarks/champ_extraction.py``).
- Gold and answer are parsed by math-verify the same way (each wrapped as ``\\boxed{...}``,
  so ``"46"``, ``"\\frac{1}{2}"`` and ``"0.5"`` all become SymPy numbers) and compared with
  ``math_verify.verify(gold, answer)``, GOLD FIRST: ``verify`` is not symmetric. Example:
  gold ``1 < x < 2`` accepts the answer ``(1, 2)``, but gold ``(1, 2)`` rejects the answer
  ``1 < x < 2`` (math-verify compares a set with a relation only when the prediction is the
  set).
- A sample may carry a human verdict (CHAMP's first-wrong-step annotations, a reference
  solution); ``grade_sample`` then uses it instead of any extraction (grading ``human``).
- Parses are cached per string (``functools.lru_cache``): a gold answer is parsed once per
  process however many samples are graded against it, and so is a repeated answer.

Timeouts. math-verify's own timeouts use ``signal.alarm``, which exists only on the main
thread; elsewhere they raise. We therefore pass ``TIMEOUT_S`` only on the main thread of a
process (plain scripts, ``ProcessPoolExecutor`` workers, Ray task workers) and disable them
(``parsing_timeout=None``, ``timeout_seconds=None``) in any other thread. Guards that hold
everywhere: in ``boxed`` mode only the boxed content is parsed, never the whole trace, and
content longer than ``MAX_ANSWER_CHARS`` is graded incorrect without parsing; the free-form
modes read only the last ``MAX_FREE_FORM_CHARS`` characters of a text. Length alone does not stop
SymPy: ``\\boxed{10^{10^{10}}}`` (13 characters) would run forever. On the main thread the
timeout grades it incorrect after ``TIMEOUT_S``; in another thread it hangs that thread, so
grade untrusted model output in processes or Ray tasks, not in thread pools.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any

from math_verify import parse, verify
from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

MAX_ANSWER_CHARS = 1_000  # longer boxed contents are graded incorrect without parsing
MAX_FREE_FORM_CHARS = 4_000  # free-form modes read the end of a text only (answers come last)
TIMEOUT_S = 5  # math-verify's per-parse / per-comparison limit, main thread only
HUMAN = "human"  # Trace.grading of a sample graded by a person, not by extraction
_BOX = "\\boxed{"


@dataclass(frozen=True)
class Extraction:
    """One way to find the final answer in a text (module docstring)."""

    name: str
    help: str


EXTRACTIONS: dict[str, Extraction] = {
    e.name: e
    for e in (
        Extraction("boxed", "the last \\boxed{} (strict: no box, incorrect)"),
        Extraction("final_answer", "a box, else the answer after 'final answer is' / 'answer:'"),
        Extraction(
            "last_expression", "a box or an anchored answer, else the text's last expression"
        ),
    )
}
# math-verify extraction configs of the free-form modes (boxes first in both).
_FREE_FORM_CONFIGS = {
    "final_answer": (
        LatexExtractionConfig(try_extract_without_anchor=False, boxed_match_priority=0),
        ExprExtractionConfig(try_extract_without_anchor=False),
    ),
    "last_expression": (
        LatexExtractionConfig(boxed_match_priority=0),
        ExprExtractionConfig(),
    ),
}


def extract_answer(text: str) -> str | None:
    """The content of the last balanced ``\\boxed{...}`` in ``text``, else None.

    An unbalanced last box (a truncated generation) falls back to the box before it.
    """
    start = text.rfind(_BOX)
    while start != -1:
        depth = 0
        for j in range(start + len(_BOX) - 1, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[start + len(_BOX) : j]
        start = text.rfind(_BOX, 0, start)
    return None


def _drop_timeout_notice(record: logging.LogRecord) -> bool:
    """math-verify warns once per process that its timeout is off; off-main-thread that is
    this module's documented choice, and Ray Train runs every training off the main thread."""
    return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).addFilter(_drop_timeout_notice)


def _timeout() -> int | None:
    """``TIMEOUT_S`` where signals work (the main thread), else None (disabled)."""
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=65_536)
def _parse_cached(content: str, timeout: int | None) -> tuple[Any, ...]:
    # Wrapping in \boxed{} makes math-verify's LaTeX extractor read the whole content as one
    # expression, for gold strings written as plain text ("46") and as LaTeX alike.
    return tuple(parse(_BOX + content + "}", parsing_timeout=timeout))


def _parse(content: str) -> tuple[Any, ...]:
    return _parse_cached(content, _timeout())


@functools.lru_cache(maxsize=65_536)
def _parse_free_form_cached(text: str, extraction: str, timeout: int | None) -> tuple[Any, ...]:
    return tuple(parse(text, list(_FREE_FORM_CONFIGS[extraction]), parsing_timeout=timeout))


def check_extraction(extraction: str) -> None:
    """``ValueError`` naming the valid modes when ``extraction`` is not one of them."""
    if extraction not in EXTRACTIONS:
        raise ValueError(
            f"answer extraction {extraction!r} is not a mode; choose one of {list(EXTRACTIONS)}"
        )


def is_correct(gold: str, text: str, extraction: str = "boxed") -> bool:
    """Whether the final answer of ``text`` equals ``gold`` (math-verify, gold first)."""
    return grade(gold, text, extraction)[1]


def grade(gold: str, text: str, extraction: str = "boxed") -> tuple[str | None, bool]:
    """``(parsed answer, correct)`` for one sample text, its answer found by ``extraction``.

    The parsed answer is the answer as written (the boxed content, or the string math-verify
    extracted; None when there is none), kept for majority votes and error analysis; an empty
    box or one longer than ``MAX_ANSWER_CHARS`` is incorrect.
    """
    check_extraction(extraction)
    answer = extract_answer(text)
    if answer is not None or extraction == "boxed":
        if answer is None or not answer.strip() or len(answer) > MAX_ANSWER_CHARS:
            return answer, False
        answer_parsed = _parse(answer)
    else:
        found = _parse_free_form_cached(text[-MAX_FREE_FORM_CHARS:], extraction, _timeout())
        if len(found) < 2:
            return None, False
        # math-verify returns [value..., the extracted string]; keep the string as written.
        answer, answer_parsed = str(found[-1]), found
    gold_parsed = _parse(gold)
    if not gold_parsed or not answer_parsed:
        return answer, False
    return answer, bool(verify(list(gold_parsed), list(answer_parsed), timeout_seconds=_timeout()))


def grade_sample(
    gold: str, text: str, extraction: str = "boxed", human_verdict: bool | None = None
) -> tuple[str | None, bool, str]:
    """``(parsed answer, correct, grading)``: a human verdict when there is one, else ``grade``.

    ``grading`` is what decided (``HUMAN`` or the extraction mode), stored with the trace.
    The parsed answer is still extracted under a human verdict, for votes and reading.
    """
    answer, correct = grade(gold, text, extraction)
    if human_verdict is not None:
        return answer, bool(human_verdict), HUMAN
    return answer, correct, extraction
