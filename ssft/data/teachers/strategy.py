"""Rule-based teachers: one reasoning strategy each, built in for known-modes or your own.

Four ``strategy`` teachers (``column``, ``split``, ``round``, ``count_on``) give every
addition question four traces whose mode is known, so we can check whether the forking
tokens of a trained model stay mode-pure. ``error_rate`` makes a teacher slip now and then
(a dropped carry, an off-by-ten step) so grading and filtering have real work to do.

The operands are read back from the prompt (``"37 + 58 = ?"``); any other prompt is an error
naming the question. Sampling is deterministic per (seed, teacher, question, sample index),
so a shard retried by Ray produces the same texts.

Your own solver: ``strategy: package.module:function``, called as ``function(question, rng)``
for every sample (``question`` a ``Question``, ``rng`` that sample's seeded
``random.Random``), returning the trace text; it must be importable on every worker.
``error_rate`` is the built-in strategies' slip and must stay 0 for it: a custom solver
decides its own mistakes.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence

from ssft.data import known_modes
from ssft.data.teachers.base import Question, Sample, Teacher
from ssft.plugins import is_callable_spec, load_callable

_PROMPT = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*=\s*\?\s*$")


def _rng(seed: int, teacher: str, question_id: str, index: int) -> random.Random:
    key = f"{seed}|{teacher}|{question_id}|{index}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


class StrategyTeacher(Teacher):
    """Renders the configured strategy's trace, slipping with probability ``error_rate``."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.strategy = cfg.strategy
        self.error_rate = float(cfg.error_rate)
        self.solver = None
        if is_callable_spec(cfg.strategy):
            self.solver = load_callable(cfg.strategy, f"teacher {cfg.name!r} strategy")
        elif cfg.strategy not in known_modes.STRATEGIES:
            raise ValueError(
                f"teacher {cfg.name!r}: strategy={cfg.strategy!r} is not one of "
                f"{list(known_modes.STRATEGIES)} nor 'package.module:function'"
            )

    def generate(self, questions: Sequence[Question], num_samples: int, seed: int) -> list[Sample]:
        if self.solver is not None:
            return self._generate_custom(questions, num_samples, seed)
        samples = []
        for q in questions:
            match = _PROMPT.match(q.prompt)
            if match is None:
                raise ValueError(
                    f"teacher {self.name!r}: question {q.question_id!r} has prompt {q.prompt!r}, "
                    "not an addition 'a + b = ?'; strategy teachers only solve the known-modes "
                    "benchmark (build.questions=known_modes)."
                )
            a, b = int(match.group(1)), int(match.group(2))
            for k in range(num_samples):
                rng = _rng(seed, self.name, q.question_id, k)
                slip = rng.random() < self.error_rate
                text = known_modes.render(a, b, self.strategy, slip=slip, rng=rng)
                samples.append(Sample(q.question_id, self.name, text, num_tokens=len(text)))
        return samples

    def _generate_custom(
        self, questions: Sequence[Question], num_samples: int, seed: int
    ) -> list[Sample]:
        samples = []
        for q in questions:
            for k in range(num_samples):
                text = self.solver(q, _rng(seed, self.name, q.question_id, k))
                if not isinstance(text, str):
                    raise ValueError(
                        f"teacher {self.name!r}: strategy {self.strategy!r} returned "
                        f"{type(text).__name__} for question {q.question_id!r}; it must return "
                        "the trace text (str)"
                    )
                samples.append(Sample(q.question_id, self.name, text, num_tokens=None))
        return samples
