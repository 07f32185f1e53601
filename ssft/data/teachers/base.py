"""The teacher interface: questions in, sampled answer texts out.

A teacher knows nothing about grading, de-duplication or trace sets: it samples. The
building stage (``workflows/build_traces.py``) grades, filters and assembles trace sets, so
every backend is judged by the same rules.

Contract of ``Teacher.generate(questions, num_samples, seed)``:
- returns ``num_samples`` samples per question (fewer only when the backend has fewer, e.g.
  ``replay``), grouped by question in input order;
- ``Sample.teacher`` is the teacher's configured ``name`` (what lands in ``Trace.teacher``);
- the same (questions, num_samples, seed) gives the same samples wherever the backend allows
  it (local models, strategy solvers, replay); remote APIs are best effort;
- secrets (API keys) are read from the environment inside the backend and never appear in
  a sample, a log line or an exception message.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ssft.data.teachers.kinds import TEACHER_KINDS


@dataclass(frozen=True)
class Question:
    """A question to sample answers for: the project's one question type (question sources,
    teachers, trace selection, evaluation). The known-modes benchmark's ``AdditionQuestion``
    (``ssft.data.known_modes``) is this plus its operands."""

    question_id: str
    prompt: str
    gold_answer: str
    source: str


@dataclass(frozen=True)
class Sample:
    """One sampled answer text; ``num_tokens`` is its length under the teacher's tokenizer.

    A replayed answer may carry ``human_verdict``, a person's judgement of the whole answer
    (CHAMP's first-wrong-step annotations, a reference solution), which grading trusts over
    any extraction.
    """

    question_id: str
    teacher: str
    text: str
    num_tokens: int | None = None
    human_verdict: bool | None = None


class Teacher(ABC):
    """A source of answer texts; each subclass is one entry of ``ssft.data.teachers.kinds``."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.name: str = cfg.name

    @abstractmethod
    def generate(self, questions: Sequence[Question], num_samples: int, seed: int) -> list[Sample]:
        """``num_samples`` answers per question, grouped by question in input order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release models, sessions or servers; called once by the building stage."""


def build_teacher(cfg: Any) -> Teacher:
    """The teacher for ``cfg.kind`` (``ssft.data.teachers.kinds``); an unknown kind lists the
    valid ones. The kind's module is imported here, on first use."""
    kind = TEACHER_KINDS.get(cfg.kind)
    if kind is None:
        raise ValueError(
            f"teacher {cfg.name!r}: unknown kind {cfg.kind!r}; valid kinds: {list(TEACHER_KINDS)}"
        )
    module, _, cls = kind.implementation.partition(":")
    return getattr(importlib.import_module(module), cls)(cfg)
