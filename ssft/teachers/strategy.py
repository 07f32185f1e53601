"""Rule-based teachers for the known-modes benchmark: one reasoning strategy each.

Four ``strategy`` teachers (``column``, ``split``, ``round``, ``count_on``) give every
addition question four traces whose mode is known, so we can check whether the forking
tokens of a trained model stay mode-pure. ``error_rate`` makes a teacher slip now and then
(a dropped carry, an off-by-ten step) so grading and filtering have real work to do.

The operands are read back from the prompt (``"37 + 58 = ?"``); any other prompt is an error
naming the question. Sampling is deterministic per (seed, teacher, question, sample index),
so a shard retried by Ray produces the same texts.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence

from ssft import known_modes
from ssft.teachers.base import Question, Sample, Teacher, register_teacher

_PROMPT = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*=\s*\?\s*$")


def _rng(seed: int, teacher: str, question_id: str, index: int) -> random.Random:
    key = f"{seed}|{teacher}|{question_id}|{index}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


@register_teacher("strategy")
class StrategyTeacher(Teacher):
    """Renders the configured strategy's trace, slipping with probability ``error_rate``."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.strategy not in known_modes.STRATEGIES:
            raise ValueError(
                f"teacher {cfg.name!r}: strategy={cfg.strategy!r} is not one of "
                f"{list(known_modes.STRATEGIES)}"
            )
        self.strategy = cfg.strategy
        self.error_rate = float(cfg.error_rate)

    def generate(self, questions: Sequence[Question], num_samples: int, seed: int) -> list[Sample]:
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
