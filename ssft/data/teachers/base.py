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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Question:
    """A question to sample answers for."""

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
    """A source of answer texts. Subclasses register with ``@register_teacher("kind")``."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.name: str = cfg.name

    @abstractmethod
    def generate(self, questions: Sequence[Question], num_samples: int, seed: int) -> list[Sample]:
        """``num_samples`` answers per question, grouped by question in input order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release models, sessions or servers; called once by the building stage."""


TEACHER_KINDS: dict[str, type[Teacher]] = {}
# Module that defines each kind; imported on first use so optional dependencies stay optional.
_KIND_MODULES = {
    "hf": "ssft.data.teachers.hf",
    "openai": "ssft.data.teachers.openai_compat",
    "vllm": "ssft.data.teachers.vllm",
    "replay": "ssft.data.teachers.replay",
    "strategy": "ssft.data.teachers.strategy",
}


def register_teacher(kind: str) -> Callable[[type[Teacher]], type[Teacher]]:
    """Class decorator: make ``kind`` buildable by ``build_teacher``; duplicates raise."""

    def wrap(cls: type[Teacher]) -> type[Teacher]:
        if kind in TEACHER_KINDS and TEACHER_KINDS[kind] is not cls:
            raise ValueError(f"teacher kind {kind!r} is registered twice")
        TEACHER_KINDS[kind] = cls
        return cls

    return wrap


def build_teacher(cfg: Any) -> Teacher:
    """The teacher for ``cfg.kind``; an unknown kind lists the valid ones."""
    if cfg.kind not in _KIND_MODULES:
        raise ValueError(
            f"teacher {cfg.name!r}: unknown kind {cfg.kind!r}; valid kinds: {sorted(_KIND_MODULES)}"
        )
    importlib.import_module(_KIND_MODULES[cfg.kind])
    return TEACHER_KINDS[cfg.kind](cfg)
