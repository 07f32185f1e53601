"""A user's own code named in configs (``package.module:function``), for the tests:
a mode classifier for evaluation and a rule-based solver for ``kind: strategy`` teachers."""

import random


def by_first_word(text: str) -> str | None:
    """eval.mode_classifier=tests.user_plugin:by_first_word: the label is the first word."""
    words = text.split()
    return words[0].lower() if words else None


def not_a_label(text: str) -> int:
    return len(text)


def count_up(question, rng: random.Random) -> str:
    """strategy: tests.user_plugin:count_up: '7 - 3 = ?' solved by counting up from 3."""
    a, b = (int(x) for x in question.prompt.removesuffix(" = ?").split(" - "))
    steps = " ".join(str(b + i) for i in range(1, a - b + 1))
    guess = a - b + (1 if rng.random() < 0.25 else 0)  # slips now and then, by its own rule
    return f"From {b}: {steps}, that is {a - b} steps. \\boxed{{{guess}}}"
