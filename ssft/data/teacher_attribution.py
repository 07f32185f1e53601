r"""Which teacher a generated sample resembles: reasoning modes without a task classifier.

``known_modes.classify_layout`` exists only for the benchmark. For a user's own trace sets,
the traces' teachers are the known modes, so evaluation attributes each sample to the
teacher whose training traces it reads most like, and reports tag x teacher tables, teacher
purity per tag and distinct teachers per question beside (or instead of) the strategies.

The similarity, documented because every figure built on it depends on it:

- Text is normalised first: every digit becomes ``0`` (the numbers belong to the question,
  not to the teacher's way of reasoning; their lengths, which show how a teacher breaks a
  number down, are kept), whitespace runs become one space.
- A teacher's profile counts the character ``n``-grams (``n = 3``) of all its training
  traces. A sample's score under teacher t is the multinomial naive-Bayes log-likelihood
  ``sum_g count(g) * log p_t(g)`` with add-one smoothing over the union of every profile's
  n-grams (plus one slot for n-grams no teacher wrote): the classic model for attributing
  short texts to authors. The sample goes to the best-scoring teacher (ties: the teacher
  first in name order).
- A sample whose n-grams are mostly foreign to that teacher, less than ``min_known``
  (default 0.5) of its n-gram occurrences seen in the teacher's traces, is ``"unknown"``
  instead, as is an empty one: garbage must not count as somebody's mode (the strategy
  classifier treats unparseable samples the same way, so the two purities agree).

On the known-modes benchmark every strategy is one teacher, and teacher purity agrees with
strategy purity (``tests/test_teacher_attribution.py``; measured in README "Results").
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ssft.atomic_io import write_text_atomic
from ssft.errors import InputError

UNKNOWN = "unknown"
PROFILE_FILE = "teacher_profiles.json"
# Bump when normalize() or the n-gram rule changes: profiles of another version score texts
# normalised differently, so they are refused rather than silently mis-attributing.
PROFILE_VERSION = 1
_DIGITS, _SPACES = re.compile(r"\d"), re.compile(r"\s+")


def normalize(text: str) -> str:
    """Digits -> "0", whitespace runs -> " ", stripped (what the n-grams are taken of)."""
    return _SPACES.sub(" ", _DIGITS.sub("0", text)).strip()


def ngrams(text: str, n: int) -> Counter:
    """Character n-gram counts of ``normalize(text)``; a shorter text is one n-gram of itself."""
    norm = normalize(text)
    if len(norm) <= n:
        return Counter([norm] if norm else [])
    return Counter(norm[i : i + n] for i in range(len(norm) - n + 1))


@dataclass
class TeacherProfiles:
    """Per-teacher n-gram counts of the training traces, and the rule that attributes samples."""

    counts: dict[str, Counter]
    n: int = 3
    min_known: float = 0.5

    def __post_init__(self) -> None:
        if not self.counts:
            raise ValueError("teacher profiles need at least one teacher with traces")
        if not 0.0 <= self.min_known <= 1.0:
            raise ValueError(f"min_known must be in [0, 1], got {self.min_known}")
        self.counts = {t: Counter(c) for t, c in sorted(self.counts.items())}
        vocab = set().union(*self.counts.values())
        size = len(vocab) + 1  # one more slot: an n-gram no teacher wrote
        self._log_p = {}
        self._log_unseen = {}
        for teacher, c in self.counts.items():
            total = sum(c.values()) + size
            self._log_p[teacher] = {g: math.log((k + 1) / total) for g, k in c.items()}
            self._log_unseen[teacher] = math.log(1 / total)

    @property
    def teachers(self) -> list[str]:
        return list(self.counts)

    @classmethod
    def from_traces(
        cls, traces: Iterable[tuple[str, str]], n: int = 3, min_known: float = 0.5
    ) -> TeacherProfiles:
        """Profiles from ``(teacher, text)`` pairs (a trace set's correct traces)."""
        counts: dict[str, Counter] = {}
        for teacher, text in traces:
            counts.setdefault(teacher, Counter()).update(ngrams(text, n))
        return cls(counts, n, min_known)

    def scores(self, text: str) -> dict[str, float]:
        """Naive-Bayes log-likelihood of ``text`` under each teacher (higher = more alike)."""
        grams = ngrams(text, self.n)
        return {
            t: sum(k * self._log_p[t].get(g, self._log_unseen[t]) for g, k in grams.items())
            for t in self.counts
        }

    def attribute(self, text: str) -> str:
        """The teacher ``text`` reads most like, or ``"unknown"`` (module docstring)."""
        grams = ngrams(text, self.n)
        total = sum(grams.values())
        if not total:
            return UNKNOWN
        scores = self.scores(text)
        best = max(self.counts, key=scores.__getitem__)  # the first maximum: name order
        known = sum(k for g, k in grams.items() if g in self.counts[best])
        return best if known / total >= self.min_known else UNKNOWN

    def attribute_all(self, texts: Sequence[str]) -> list[str]:
        return [self.attribute(t) for t in texts]

    def to_json(self) -> dict:
        return {
            "version": PROFILE_VERSION,
            "n": self.n,
            "min_known": self.min_known,
            "counts": {t: dict(sorted(c.items())) for t, c in self.counts.items()},
        }

    @classmethod
    def from_json(cls, blob: Mapping, source: str = "teacher profiles") -> TeacherProfiles:
        if blob.get("version") != PROFILE_VERSION:
            raise InputError(
                f"{source}: version {blob.get('version')!r}, but this code reads version "
                f"{PROFILE_VERSION} (texts are normalised differently). Retrain the model, or "
                f"delete the file to evaluate without teacher attribution."
            )
        return cls({t: Counter(c) for t, c in blob["counts"].items()}, blob["n"], blob["min_known"])


def write_profiles(model_dir: str | Path, profiles: TeacherProfiles) -> Path:
    """``teacher_profiles.json`` in ``model_dir`` (atomically)."""
    path = Path(model_dir) / PROFILE_FILE
    write_text_atomic(path, json.dumps(profiles.to_json()))
    return path


def read_profiles(model_dir: str | Path) -> TeacherProfiles | None:
    """The model folder's profiles, or None when training wrote none (older model folders)."""
    path = Path(model_dir) / PROFILE_FILE
    if not path.exists():
        return None
    return TeacherProfiles.from_json(json.loads(path.read_text(encoding="utf-8")), str(path))
