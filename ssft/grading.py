"""Grading: is a sampled answer text's boxed answer mathematically equal to the gold answer?

Rules (ECOSYSTEM.md, "Grading and metrics"):

- The answer is the content of the LAST balanced ``\\boxed{...}`` in the text
  (``extract_answer``). A text without one is incorrect: teachers are asked to box their
  final answer, and guessing "the last number" would credit half-finished traces.
- Gold and answer are parsed by math-verify the same way (each wrapped as ``\\boxed{...}``,
  so ``"46"``, ``"\\frac{1}{2}"`` and ``"0.5"`` all become SymPy numbers) and compared with
  ``math_verify.verify(gold, answer)``, GOLD FIRST: ``verify`` is not symmetric. Example:
  gold ``1 < x < 2`` accepts the answer ``(1, 2)``, but gold ``(1, 2)`` rejects the answer
  ``1 < x < 2`` (math-verify compares a set with a relation only when the prediction is the
  set).
- Parses are cached per string (``functools.lru_cache``): a gold answer is parsed once per
  process however many samples are graded against it, and so is a repeated answer.

Timeouts. math-verify's own timeouts use ``signal.alarm``, which exists only on the main
thread; elsewhere they raise. We therefore pass ``TIMEOUT_S`` only on the main thread of a
process (plain scripts, ``ProcessPoolExecutor`` workers, Ray task workers) and disable them
(``parsing_timeout=None``, ``timeout_seconds=None``) in any other thread. Guards that hold
everywhere: only the boxed content is parsed, never the whole trace, and content longer
than ``MAX_ANSWER_CHARS`` is graded incorrect without parsing. Length alone does not stop
SymPy: ``\\boxed{10^{10^{10}}}`` (13 characters) would run forever. On the main thread the
timeout grades it incorrect after ``TIMEOUT_S``; in another thread it hangs that thread, so
grade untrusted model output in processes or Ray tasks, not in thread pools.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from math_verify import parse, verify

MAX_ANSWER_CHARS = 1_000  # longer boxed contents are graded incorrect without parsing
TIMEOUT_S = 5  # math-verify's per-parse / per-comparison limit, main thread only
_BOX = "\\boxed{"


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


def is_correct(gold: str, text: str) -> bool:
    """Whether the last boxed answer of ``text`` equals ``gold`` (math-verify, gold first)."""
    return grade(gold, text)[1]


def grade(gold: str, text: str) -> tuple[str | None, bool]:
    """``(parsed answer, correct)`` for one sample text.

    The parsed answer is the raw boxed content (None without a box), kept for majority votes
    and error analysis; an empty box or one longer than ``MAX_ANSWER_CHARS`` is incorrect.
    """
    answer = extract_answer(text)
    if answer is None or not answer.strip() or len(answer) > MAX_ANSWER_CHARS:
        return answer, False
    gold_parsed, answer_parsed = _parse(gold), _parse(answer)
    if not gold_parsed or not answer_parsed:
        return answer, False
    return answer, bool(verify(list(gold_parsed), list(answer_parsed), timeout_seconds=_timeout()))
