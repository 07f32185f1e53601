"""Where the building stage's questions come from: ``load_questions(build_cfg)``.

Reads ``build_cfg.questions`` (the source), ``questions_path``, ``split``, ``num_questions``,
``question_seed``, ``digits`` and ``reasoning_gym_task`` (``ssft.config.stages.BuildConfig``;
any object with these attributes works). Every source is deterministic: the same config
gives the same questions, in the same order, with the same ids.

Sources:

- ``known_modes``: additions from ``ssft.data.known_modes``. Its stream of questions (one per
  ``(question_seed, digits)``) is cut at a FIXED point: the first ``KNOWN_MODES_TEST_SIZE``
  questions are the test split, everything after is train. ``split="test"`` takes the first
  ``num_questions`` of the test block (so at most ``KNOWN_MODES_TEST_SIZE``); ``"train"``
  takes ``make_splits(n_train=num_questions, n_test=KNOWN_MODES_TEST_SIZE)``'s train part.
  Because the cut does not move with ``num_questions``, a train build and a test build with
  the same seed and digits never share a question, whatever their sizes. 128 is the shipped
  ``datasets/known_modes`` split (seed 0, digits 2): those files are what this source
  returns for ``num_questions`` 512 (train) and 128 (test).
- ``jsonl``: ``questions_path``, one JSON object per line with string fields question_id,
  prompt, gold_answer and source, none blank (other keys are ignored; blank lines are
  skipped). The whole file is checked before ``num_questions`` keeps its first questions, so
  a bad file fails whatever the cap; a ``QuestionFileError`` names the file, line (from 1)
  and field. Rejected: bytes that are not UTF-8, a key written twice on one line, a repeated
  question_id, text that cannot be encoded (a lone ``\\ud800`` escape). ``split`` and the
  seed are unused.
- ``reasoning_gym``: ``reasoning_gym.create_dataset(task, size=num_questions, seed=...)``.
  Train uses ``question_seed``, test ``question_seed + REASONING_GYM_TEST_SEED_OFFSET``.
  reasoning-gym draws item i from ``Random(seed + i)``, so the two splits use disjoint random
  streams while ``num_questions <= REASONING_GYM_TEST_SEED_OFFSET``. Caveats: a train build
  with seed s + offset repeats test seed s; and tasks with small answer spaces can generate
  the same text from different streams.
- ``champ``: ``ssft.data.teachers.replay.champ_questions()`` (imported lazily), split by problem:
  a problem is in the test split when the first 8 bytes of sha256(f"{question_seed}|champ|
  {question_id}") fall below ``CHAMP_TEST_FRACTION`` of their range (55 of the 270 at seed 0),
  else in train; then the first ``num_questions`` of the split, in dataset order. A problem's
  split depends only on the seed and its id, never on ``num_questions``, so train and test
  builds with one seed never share a problem.

Modes: ``trace_mode_classifier(source)`` is how the build labels a kept trace's ``mode``
(known_modes: the strategy classifier; other sources: None, modes unknown).

Sources without a split (``jsonl``: one file is one set of questions) refuse
``split="test"`` with a ``ConfigError`` naming the setting to change, instead of returning
training questions for a held-out evaluation.

Evaluation's questions (``held_out_questions``): ``eval.questions_path`` when set (a JSONL
file as above), else ``build.questions`` at ``eval.split``; then the first
``eval.num_questions``, and the caller is told how many there were, so a cut is reported.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssft.data.teachers.base import Question
from ssft.errors import ConfigError, InputError

SOURCES = ("known_modes", "jsonl", "reasoning_gym", "champ")
SPLITS = ("train", "test")
KNOWN_MODES_TEST_SIZE = 128
REASONING_GYM_TEST_SEED_OFFSET = 1_000_003
CHAMP_TEST_FRACTION = 0.2
_FIELDS = ("question_id", "prompt", "gold_answer", "source")


class QuestionFileError(InputError):
    """A bad questions file; the message names the file, the line (from 1) and the field."""


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` keeps the last of two equal keys silently; a question must not change so."""
    row: dict[str, Any] = {}
    for key, value in pairs:
        if key in row:
            raise QuestionFileError(f"field {key!r} appears twice in one object; keep one")
        row[key] = value
    return row


def load_questions(build_cfg: Any) -> list[Question]:
    """The questions ``build_cfg`` names, in source order (see the module docstring)."""
    source, n = build_cfg.questions, build_cfg.num_questions
    if source not in SOURCES:
        raise ConfigError(f"build.questions={source!r}: unknown source; choose one of {SOURCES}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"build.num_questions={n!r}: must be an int >= 1, or None for all")
    if build_cfg.split not in SPLITS:
        raise ConfigError(f"build.split={build_cfg.split!r}: choose one of {SPLITS}")
    if source == "jsonl":
        if not build_cfg.questions_path:
            raise ConfigError("build.questions='jsonl' needs build.questions_path, a JSONL file")
        if build_cfg.split == "test":
            raise ConfigError(
                f"split 'test' of build.questions='jsonl' ({build_cfg.questions_path}): a "
                "questions file has no held-out split, and evaluating on it would score the "
                "training questions. Give evaluation a file of held-out questions with "
                "eval.questions_path=<held-out.jsonl>, or use a source with splits: "
                "known_modes, reasoning_gym, champ."
            )
        return read_questions_jsonl(build_cfg.questions_path)[:n]
    if source == "champ":
        from ssft.data.teachers.replay import champ_questions

        seed = build_cfg.question_seed
        chosen = [
            q for q in champ_questions() if champ_split(q.question_id, seed) == build_cfg.split
        ]
        return chosen[:n]
    if n is None:
        raise ConfigError(
            f"build.questions={source!r} generates questions, so build.num_questions must be "
            "a number; set e.g. build.num_questions=64"
        )
    if source == "known_modes":
        return _known_modes(build_cfg.split, n, build_cfg.question_seed, build_cfg.digits)
    return _reasoning_gym(build_cfg.reasoning_gym_task, build_cfg.split, n, build_cfg.question_seed)


@dataclass(frozen=True)
class ModeClassifiers:
    """A question source whose reasoning modes a classifier tells apart (``known_modes``):
    the build labels each kept trace's ``Trace.mode`` with ``strict``, evaluation labels each
    sample's ``strategy`` with ``layout`` and ``strategy_strict`` with ``strict``."""

    source: str  # the build.questions name
    owns: Callable[[str], bool]  # a question's ``source`` field -> one of this source's
    layout: Callable[[str], str]  # text -> its mode by line layout (even if wrong), or unknown
    strict: Callable[[str], str]  # text -> layout and data flow both of one mode, or unknown


def _known_modes_classifiers() -> ModeClassifiers:
    from ssft.data import known_modes

    return ModeClassifiers("known_modes", known_modes.is_benchmark_source,
                           known_modes.classify_layout, known_modes.classify)  # fmt: skip


# The sources with known modes, one entry each (built on first use: their task code loads then).
_MODE_SOURCES: tuple[Callable[[], ModeClassifiers], ...] = (_known_modes_classifiers,)


def mode_sources() -> tuple[ModeClassifiers, ...]:
    """Every question source with known modes (``ModeClassifiers``)."""
    return tuple(make() for make in _MODE_SOURCES)


def mode_classifiers(question_source: str) -> ModeClassifiers | None:
    """The entry that owns a question's ``source`` field, or None (no known modes, or a
    user's source that merely looks like one)."""
    return next((c for c in mode_sources() if c.owns(question_source)), None)


def trace_mode_classifier(source: str) -> Callable[[str], str] | None:
    """How build source ``source`` (``build.questions``) labels a kept trace's ``Trace.mode``,
    or None when its traces have no known modes."""
    return next((c.strict for c in mode_sources() if c.source == source), None)


def champ_split(question_id: str, seed: int) -> str:
    """``"test"`` or ``"train"`` for one CHAMP problem (module docstring)."""
    digest = hashlib.sha256(f"{seed}|champ|{question_id}".encode()).digest()[:8]
    return "test" if int.from_bytes(digest, "little") < CHAMP_TEST_FRACTION * 2**64 else "train"


def _known_modes(split: str, n: int, seed: int, digits: int) -> list[Question]:
    from ssft.data import known_modes

    if split == "test" and n > KNOWN_MODES_TEST_SIZE:
        raise ConfigError(
            f"build.num_questions={n} with split='test': the known-modes test split is the "
            f"stream's first {KNOWN_MODES_TEST_SIZE} questions (fixed, so train and test never "
            f"overlap); set build.num_questions <= {KNOWN_MODES_TEST_SIZE}"
        )
    n_train = n if split == "train" else 0
    train, test = known_modes.make_splits(n_train, KNOWN_MODES_TEST_SIZE, seed=seed, digits=digits)
    chosen = train if split == "train" else test[:n]
    return [q.as_question() for q in chosen]  # plain: what workers rebuild as Question(**q)


def _reasoning_gym(task: str, split: str, n: int, seed: int) -> list[Question]:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        near = difflib.get_close_matches(task, list(DATASETS), n=3)
        hint = f"did you mean {near}?" if near else f"valid tasks include {sorted(DATASETS)[:8]}"
        raise ConfigError(f"build.reasoning_gym_task={task!r} is not a reasoning-gym task; {hint}")
    if split == "test":
        seed += REASONING_GYM_TEST_SEED_OFFSET
    dataset = reasoning_gym.create_dataset(task, size=n, seed=seed)
    questions = []
    for i, item in enumerate(dataset):
        gold = str(item["answer"])
        if not gold.strip():
            raise InputError(f"reasoning-gym task {task!r} seed {seed} item {i}: empty answer")
        qid = f"rg-{task}-s{seed}-{i:05d}"
        questions.append(Question(qid, item["question"], gold, f"reasoning_gym/{task}"))
    return questions


def read_questions_jsonl(path: str | Path) -> list[Question]:
    """All questions of a JSONL file; ValueError names the file, line (from 1) and field."""
    path = Path(path)
    if not path.is_file():
        raise QuestionFileError(
            f"questions file {str(path)!r} does not exist or is not a file; set "
            "build.questions_path to a JSONL file"
        )
    questions: list[Question] = []
    line_of: dict[str, int] = {}
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise QuestionFileError(
                    f"{where}: byte {exc.start} is not valid UTF-8 ({exc.reason}); save the "
                    "file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                # Columns count from the line's start.
                row = json.loads(line.rstrip(), object_pairs_hook=_object_without_repeated_keys)
            except json.JSONDecodeError as exc:
                raise QuestionFileError(
                    f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); each line must "
                    "be one JSON object"
                ) from None
            except QuestionFileError as exc:
                raise QuestionFileError(f"{where}: {exc}") from None
            except RecursionError:
                raise QuestionFileError(f"{where}: JSON nested too deeply") from None
            if not isinstance(row, dict):
                got = type(row).__name__
                raise QuestionFileError(f"{where}: a JSON {got}, expected an object with {_FIELDS}")
            for name in _FIELDS:
                if name not in row:
                    raise QuestionFileError(
                        f"{where}: field {name!r} is missing; every line needs {', '.join(_FIELDS)}"
                    )
                value = row[name]
                if not isinstance(value, str) or not value.strip():
                    raise QuestionFileError(
                        f"{where}: field {name!r} is {value!r:.60}; expected a non-empty string "
                        '(write numbers as strings, e.g. "46")'
                    )
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise QuestionFileError(
                        f"{where}: field {name!r} has a lone surrogate escape at character "
                        f"{exc.start}, which is not text; fix the writer's escaping"
                    ) from None
            qid = row["question_id"]
            if qid in line_of:
                raise QuestionFileError(
                    f"{where}: field 'question_id' value {qid!r} repeats line {line_of[qid]}; "
                    "question ids must be unique within a file"
                )
            line_of[qid] = lineno
            questions.append(Question(*(row[name] for name in _FIELDS)))
    if not questions:
        raise QuestionFileError(f"questions file {str(path)!r} holds no questions")
    return questions


def held_out_questions(build_cfg: Any, eval_cfg: Any) -> tuple[list[Question], int]:
    """Evaluation's questions and how many its source holds before ``eval.num_questions``.

    A generated source (known_modes, reasoning_gym) makes exactly the number asked for, so
    its count is that number."""
    n = eval_cfg.num_questions
    if eval_cfg.questions_path:
        everything = read_questions_jsonl(eval_cfg.questions_path)
    else:
        generated = build_cfg.questions in ("known_modes", "reasoning_gym")
        cut = n if generated else None  # files and CHAMP: read all, to say what is cut
        everything = load_questions(
            dataclasses.replace(build_cfg, split=eval_cfg.split, num_questions=cut)
        )
    return everything[:n], len(everything)
