"""Which classifier labels a sample's reasoning mode (``eval.mode_classifier``).

A source with known modes says how (``ssft.data.question_sources.mode_classifiers``: for the
known-modes benchmark, ``classify_layout`` for the mode a sample follows, row column
``strategy``, and ``classify`` for the stricter ``strategy_strict``); evaluation looks each
question's ``source`` up there and names no benchmark itself.
"""

from __future__ import annotations

from collections.abc import Callable

from ssft.data.question_sources import mode_classifiers
from ssft.data.teachers.base import Question
from ssft.errors import ConfigError
from ssft.plugins import load_callable

Classifier = Callable[[Question, str], tuple[str | None, str | None]]


def mode_classifier(spec: str) -> Classifier:
    """``(strategy, strategy_strict)`` of one sample, by ``eval.mode_classifier``.

    ``"auto"``: on the questions of a source with known modes (``mode_classifiers`` of the
    question's source), its layout and strict classifiers; elsewhere none.
    ``"none"``: never. ``"module:function"``: a user's classifier, imported here, called
    as ``function(text) -> label | None`` for every sample (both values). Labels are strings
    (e.g. a strategy or teacher name); None or ``"unknown"`` means not classified.
    """
    if spec == "none":
        return lambda q, text: (None, None)
    if spec == "auto":

        def auto(q: Question, text: str) -> tuple[str | None, str | None]:
            found = mode_classifiers(q.source)
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
