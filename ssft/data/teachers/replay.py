"""The ``replay`` teacher: answers that already exist (earlier API calls, published transcripts).

Sampling a strong API model is slow and costs money, and published transcripts (CHAMP below)
are a free set of diverse teachers; replaying them puts both through the same grading and
trace-set building as live teachers.

Replay file (``cfg.replay_path``), Parquet or JSONL (one JSON object per line), one row per
answer::

    column        type            rule
    question_id   string          non-empty; matches ``Question.question_id``
    teacher       string          non-empty; who wrote the answer, e.g. "GPT-4"
    text          string          not empty or whitespace-only
    num_tokens    int, optional   >= 0 or null (length under the writer's tokenizer)
    human_correct bool, optional  null, or a person's verdict on the whole answer; grading
                                  trusts it over extraction (``Trace.grading == "human"``)

Extra columns are ignored. The whole file is read and checked when the teacher is built, so
a bad file fails before any work starts; a ``ReplayFileError`` names the file, the row
(Parquet rows count from 0, like ``trace_set``; JSONL uses 1-based line numbers, like
editors) and the field. Text must be valid UTF-8 (Arrow does not check this on read) and
encodable (no lone surrogate escapes); a JSONL key written twice on one line is an error.

``generate`` returns, per question, all its rows in file order when it has at most
``num_samples``, else ``num_samples`` of them chosen by (seed, question_id) and kept in file
order: the choice does not depend on which other questions are in the batch. Questions
without rows get no samples (the base contract allows fewer).

Naming: ``Sample.teacher`` is ``f"{cfg.name}:{row_teacher}"`` (e.g. ``"champ:GPT-4"``), not
the bare ``cfg.name``: one replay file mixes several models, and downstream diversity
analysis needs to tell them apart, while the prefix still says which configured teacher
(and file) the trace came from.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import re
import secrets
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ssft.data.teachers.base import Question, Sample, Teacher
from ssft.errors import ConfigError, InputError
from ssft.record_files import read_records

REPLAY_COLUMNS = ("question_id", "teacher", "text")
OPTIONAL_COLUMNS = ("num_tokens", "human_correct")


class ReplayFileError(InputError):
    """A bad replay file; the message names the file, the row or line, and the field."""


def read_replay_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Validated rows ``{question_id, teacher, text, num_tokens, human_correct}`` (optional
    fields None when absent) in file order."""
    path = Path(path)
    records = read_records(
        path, what="replay file", error=ReplayFileError, required=REPLAY_COLUMNS,
        optional=OPTIONAL_COLUMNS,
        missing_hint="set replay_path to a Parquet or JSONL file (for CHAMP, set "
        "replay_source: champ and the build writes it)",
    )  # fmt: skip
    return [_checked_row(path, where, record) for where, record in records]


def _checked_row(path: Path, where: str, record: dict[str, Any]) -> dict[str, Any]:
    def bad(field: str, rule: str) -> ReplayFileError:
        value = repr(record.get(field))
        value = value if len(value) <= 60 else value[:60] + "..."
        return ReplayFileError(
            f"replay file {str(path)!r}, {where}, field {field!r}: {rule}, got {value}"
        )

    for field in REPLAY_COLUMNS:
        value = record[field]
        if not isinstance(value, str) or not value.strip():
            raise bad(field, "must be a non-empty string (not whitespace-only)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise bad(field, f"has a lone surrogate escape at character {err.start}") from None
    num_tokens = record.get("num_tokens")
    if num_tokens is not None and (
        isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0
    ):
        raise bad("num_tokens", "must be an integer >= 0 or null")
    human_correct = record.get("human_correct")
    if human_correct is not None and not isinstance(human_correct, bool):
        raise bad("human_correct", "must be true, false or null")
    return {
        "question_id": record["question_id"],
        "teacher": record["teacher"],
        "text": record["text"],
        "num_tokens": num_tokens,
        "human_correct": human_correct,
    }


def _choice_rng(seed: int, question_id: str) -> random.Random:
    key = f"{seed}|replay|{question_id}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


class ReplayTeacher(Teacher):
    """Serves answers from ``cfg.replay_path``; see the module docstring for the file format."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        if not getattr(cfg, "replay_path", None):
            raise ConfigError(f"teacher {cfg.name!r}: kind 'replay' needs replay_path (a file)")
        self.path = str(cfg.replay_path)
        self.rows_by_question: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in read_replay_rows(self.path):
            self.rows_by_question[row["question_id"]].append(row)

    def generate(self, questions: Sequence[Question], num_samples: int, seed: int) -> list[Sample]:
        """Up to ``num_samples`` stored answers per question, grouped in input order."""
        samples = []
        for q in questions:
            rows = self.rows_by_question.get(q.question_id, [])
            if len(rows) > num_samples:
                keep = sorted(
                    _choice_rng(seed, q.question_id).sample(range(len(rows)), num_samples)
                )
                rows = [rows[i] for i in keep]
            samples += [
                Sample(
                    q.question_id,
                    f"{self.name}:{r['teacher']}",
                    r["text"],
                    r["num_tokens"],
                    r["human_correct"],
                )
                for r in rows[: max(num_samples, 0)]
            ]
        return samples


# -- CHAMP -----------------------------------------------------------------------------------
# CHAMP (Mao et al. 2024, pip package ``champ-dataset``): 270 competition problems, each with
# 72 conversations = 4 models (GPT-3.5, GPT-4, GPT-4 Turbo, PaLM 2 Medium) x 18 prompt
# variants. A conversation ends [..., Model: solution, User: "Now, summarize...", Model:
# one-sentence answer]; the solution is the trace we replay.

CHAMP_SOURCE = "champ"
# Variants whose prompt hands the model the first steps of the official solution: their
# answers continue those steps and skip them, so they are not standalone traces.
CHAMP_PARTIAL_SOLUTION_VARIANTS = ("1/3 Soln", "2/3 Soln")
CHAMP_MODELS = ("GPT-3.5", "GPT-4", "GPT-4 Turbo", "PaLM 2 Medium")
CHAMP_REFERENCE_TEACHER = "human"  # the official solution, as a teacher
_CHAMP_MATH = re.compile(r"@@(.*?)@@")
_CHAMP_COMMENTARY = (re.compile(r"\s*\(i\.e\.,[^)]*\)"), re.compile(r",\s*or approximately.*$"))


@functools.lru_cache(maxsize=1)
def _champ_dataset():
    import champ_dataset  # ~1.5 s: parses the package's 72 MB JSON

    return champ_dataset.load("v0")


def champ_gold_answer(raw_answer: str) -> str:
    """CHAMP's answer in a form ``math_verify.parse`` reads.

    CHAMP marks the math inside an answer with ``@@...@@``
    (``"@@C(10, 5)@@, or equivalently @@252@@"``); these become ``$...$`` so math-verify's
    LaTeX extraction finds them (``"$C(10, 5)$, or equivalently $252$"`` parses to 252).
    Commentary that would be parsed instead of the answer is dropped: ``(i.e., ...)`` asides
    and ``, or approximately 35.7%`` tails. Prose answers ("No", "It is not possible") stay
    as they are; math-verify cannot parse them (about 56 of 270), so grading needs another
    rule for those.
    """
    text = raw_answer
    for pattern in _CHAMP_COMMENTARY:
        text = pattern.sub("", text)
    return _CHAMP_MATH.sub(lambda m: f"${m.group(1).strip()}$", text).strip()


def champ_questions() -> list[Question]:
    """The 270 CHAMP problems in dataset order; the prompt is the bare problem statement."""
    return [
        Question(pid, p.text, champ_gold_answer(p.raw_answer), CHAMP_SOURCE)
        for pid, p in _champ_dataset().problems.items()
    ]


def champ_replay_rows(
    exclude_variants: Sequence[str] = CHAMP_PARTIAL_SOLUTION_VARIANTS,
    include_reference: bool = True,
) -> list[dict[str, Any]]:
    """Replay rows ``{question_id, teacher, text, human_correct, variant, summary}``.

    One row per CHAMP transcript: ``teacher`` is the model ("GPT-4"), ``variant`` the CHAMP
    prompt ("0-Shot", "5-Shot", "Direct C w/ H", ...), ``text`` the model's solution (the
    trace), ``summary`` its one-sentence statement of the answer that CHAMP asked for after
    the solution (for reading; grading reads the solution, which measured as precise:
    ``benchmarks/champ_extraction.py``), ``human_correct``
    CHAMP's first-wrong-step annotation where one exists (True: no wrong step; False: a
    wrong step; None: not annotated, about 540 of the transcripts are). Solutions the API cut
    off (CHAMP marks them with an ``error``) are skipped, as are ``exclude_variants``
    (default: the partial-solution prompts); ``exclude_variants=()`` keeps every variant.
    ``include_reference`` adds each problem's official solution as teacher ``human``
    (``human_correct`` True, variant ``reference``).

    Caveat: the models answered CHAMP's prompt, not ours: "Solve the following problem. Make
    sure to show your work...", and in most variants with extra hints, concepts or worked
    examples in the prompt (16 of the 18 variants are standalone solutions nonetheless).
    """
    rows: list[dict[str, Any]] = []
    for pid, problem in _champ_dataset().problems.items():
        if include_reference:
            text = " ".join(step.text.strip() for step in problem.solution.steps).strip()
            if text:
                rows.append(
                    {"question_id": pid, "teacher": CHAMP_REFERENCE_TEACHER, "text": text,
                     "human_correct": True, "variant": "reference", "summary": None}
                )  # fmt: skip
        annotations = problem.fws_annotations or {}
        for key, conversation in problem.conversations.items():
            model, variant = key.split("|")
            if variant in exclude_variants:
                continue
            messages = conversation.messages
            last_user = max(i for i, m in enumerate(messages) if m.role == "User")
            solution = next(
                (m for m in reversed(messages[:last_user]) if m.role.startswith("Model.")), None
            )
            if solution is None or solution.error is not None or not (solution.text or "").strip():
                continue
            summary = next(
                (m for m in messages[last_user + 1 :] if m.role.startswith("Model.")), None
            )
            summary_text = None
            if summary is not None and summary.error is None and (summary.text or "").strip():
                summary_text = summary.text
            note = annotations.get(key)
            human = None if note is None else note.start_idx is None
            rows.append(
                {"question_id": pid, "teacher": model, "text": solution.text,
                 "human_correct": human, "variant": variant, "summary": summary_text}
            )  # fmt: skip
    return rows


def write_champ_replay(
    path: str | os.PathLike,
    exclude_variants: Sequence[str] = CHAMP_PARTIAL_SOLUTION_VARIANTS,
    include_reference: bool = True,
) -> Path:
    """Writes ``champ_replay_rows`` as Parquet, atomically (temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = champ_replay_rows(exclude_variants, include_reference)
    schema = pa.schema(
        [(name, pa.string()) for name in REPLAY_COLUMNS]
        + [("human_correct", pa.bool_()), ("variant", pa.string()), ("summary", pa.string())]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # readers see the old file or the complete new one
    finally:
        tmp.unlink(missing_ok=True)
    return path


def prepare_replay_files(build: Any) -> None:
    """Write missing replay files that have a ``replay_source``, then read and validate every
    replay teacher's file on the driver, before Ray starts.

    A bad row then stops the build at once with one line naming the file, row and field
    (``ReplayFileError``), instead of failing in every shard task after Ray started.
    ``build``: the ``build`` config section.
    """
    for teacher in build.teachers:
        if teacher.kind != "replay":
            continue
        path = Path(teacher.replay_path)
        if teacher.replay_source == "champ" and not path.exists():
            print(f"[build] writing CHAMP's transcripts to {path} (replay_source=champ)",
                  flush=True)  # fmt: skip
            write_champ_replay(path)
        read_replay_rows(path)
