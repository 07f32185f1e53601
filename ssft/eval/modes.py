"""Which classifier labels a sample's reasoning mode (``eval.mode_classifier``).

A benchmark with known modes is one entry of ``BENCHMARK_CLASSIFIERS``, built from what its
data module exports: which question sources are its own, the classifier of the mode a
sample follows (row column ``strategy``) and a stricter one (``strategy_strict``). For the
known-modes benchmark these are ``ssft.data.known_modes.is_benchmark_source``,
``classify_layout`` (the line layout: the reasoning mode, even with wrong arithmetic) and
``classify`` (layout and data flow). Evaluation looks a question's ``source`` up in that
table (``benchmark_classifier``) and names no benchmark itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ssft.data import known_modes
from ssft.data.teachers.base import Question
from ssft.errors import ConfigError
from ssft.plugins import load_callable


@dataclass(frozen=True)
class BenchmarkClassifier:
    """How the samples of one benchmark's own questions get their mode labels."""

    name: str
    owns: Callable[[str], bool]  # a question's source -> whether it is this benchmark's
    layout: Callable[[str], str]  # sample text -> its mode (row "strategy"), or "unknown"
    strict: Callable[[str], str]  # sample text -> the stricter verdict ("strategy_strict")


BENCHMARK_CLASSIFIERS: tuple[BenchmarkClassifier, ...] = (
    BenchmarkClassifier(
        "known_modes",
        known_modes.is_benchmark_source,
        known_modes.classify_layout,
        known_modes.classify,
    ),
)


def benchmark_classifier(source: str) -> BenchmarkClassifier | None:
    """The entry of ``BENCHMARK_CLASSIFIERS`` that owns question source ``source``, or None
    (a source without known modes, or a user's source that merely looks like one)."""
    return next((c for c in BENCHMARK_CLASSIFIERS if c.owns(source)), None)


Classifier = Callable[[Question, str], tuple[str | None, str | None]]


def mode_classifier(spec: str) -> Classifier:
    """``(strategy, strategy_strict)`` of one sample, by ``eval.mode_classifier``.

    ``"auto"``: on the questions of a benchmark with known modes (``benchmark_classifier``
    of the question's source), its layout and strict classifiers; elsewhere none.
    ``"none"``: never. ``"module:function"``: a user's classifier, imported here, called
    as ``function(text) -> label | None`` for every sample (both values). Labels are strings
    (e.g. a strategy or teacher name); None or ``"unknown"`` means not classified.
    """
    if spec == "none":
        return lambda q, text: (None, None)
    if spec == "auto":

        def auto(q: Question, text: str) -> tuple[str | None, str | None]:
            found = benchmark_classifier(q.source)
            return (None, None) if found is None else (found.layout(text), found.strict(text))

        return auto
    fn = load_callable(spec, "eval.mode_classifier")

    def custom(q: Question, text: str) -> tuple[str | None, str | None]:
        label = fn(text)
        if label is not None and not isinstance(label, str):
            raise ConfigError(
                f"eval.mode_classifier={spec!r} returned {type(label).__name__} {label!r:.40} "
                "for a sample; it must return a string label or None"
            )
        return label, label

    return custom
