"""Building trace sets, one shard of questions at a time (the Ray-free half of the stage).

A shard is a slice of the questions. For it, every teacher samples every question, each
sample is graded against the gold answer (math-verify, gold first), and ``select_traces``
keeps at most M distinct correct traces per question, preferring distinct teachers. A
shard's result is committed by two files in its folder::

    shard-00003.rejected.parquet  every sample not kept: question, teacher, text, parsed
                                  answer, grading, reason (REJECTED_SCHEMA)
    shard-00003.stats.json   per-teacher sample/correct/kept counts, rejected questions
    shard-00003.parquet      the shard's trace sets (written LAST: its presence = done)

Both are written atomically (temp name, then rename), so a crash leaves either a finished
shard or nothing under the final names. Sampling is seeded per (seed, shard's questions),
so a retried shard writes the same content: reruns never duplicate traces, and shards
already on disk are skipped. ``merge_shards`` concatenates finished shards in order into
one validated trace-set file, and their rejected samples into ``rejected_samples.parquet``.

The build folder's name carries a digest of everything that decides its content (the
``build`` config minus ``output_dir``, and the seed); a changed config builds elsewhere
instead of mixing two configurations' shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from ssft.atomic_io import write_atomic, write_json_atomic
from ssft.data.grading import grade_sample
from ssft.data.question_sources import trace_mode_classifier
from ssft.data.teachers import Question, build_teacher
from ssft.data.trace_selection import KEPT, Graded, rejection_reason, select_traces
from ssft.data.trace_set import TraceSet, read_trace_sets, write_trace_sets

# One row per sample the build did not keep, so a person can read why (build_dir/
# rejected_samples.parquet). ``reason`` is a trace_selection.DROP_REASONS entry.
REJECTED_SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("teacher", pa.string()),
        ("text", pa.string()),
        ("parsed_answer", pa.string()),
        ("grading", pa.string()),
        ("reason", pa.string()),
    ]
)


@dataclass
class ShardStats:
    """What one shard (or, summed, a whole build) produced."""

    questions: int = 0
    questions_with_traces: int = 0
    traces: int = 0
    samples_by_teacher: Counter = field(default_factory=Counter)
    correct_by_teacher: Counter = field(default_factory=Counter)
    kept_by_teacher: Counter = field(default_factory=Counter)
    # Questions for which a teacher alone has >= 2 (>= 4) distinct correct samples (the same
    # duplicate rules, before teachers compete for the M places): its own diversity.
    questions_2plus_by_teacher: Counter = field(default_factory=Counter)
    questions_4plus_by_teacher: Counter = field(default_factory=Counter)
    # Questions whose kept traces come from k distinct teachers, by k ("1", "2", ...).
    questions_by_teacher_count: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)
    rejected: list[dict[str, str]] = field(default_factory=list)

    COUNTERS: ClassVar[tuple[str, ...]] = (
        "samples_by_teacher", "correct_by_teacher", "kept_by_teacher",
        "questions_2plus_by_teacher", "questions_4plus_by_teacher",
        "questions_by_teacher_count", "drops",
    )  # fmt: skip

    def add(self, other: ShardStats) -> None:
        for name in ("questions", "questions_with_traces", "traces"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in self.COUNTERS:
            getattr(self, name).update(getattr(other, name))
        self.rejected.extend(other.rejected)

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting them.
        return {
            f.name: dict(v)
            if isinstance(v := getattr(self, f.name), Counter)
            else list(v)
            if isinstance(v, list)
            else v
            for f in fields(self)
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardStats:
        return cls(**{k: Counter(v) if k in cls.COUNTERS else v for k, v in data.items()})


def rejected_rows(
    question_id: str, graded: Sequence[Graded], outcomes: Sequence[str]
) -> list[dict[str, Any]]:
    """``REJECTED_SCHEMA`` rows of one question's samples that were not kept."""
    return [
        {"question_id": question_id, "teacher": g.sample.teacher, "text": g.sample.text,
         "parsed_answer": g.parsed_answer, "grading": g.grading, "reason": outcome}
        for g, outcome in zip(graded, outcomes, strict=True)
        if outcome != KEPT
    ]  # fmt: skip


def build_key(build_cfg: Any, seed: int) -> str:
    """Short digest of the content-deciding config (not ``output_dir`` or ``min_coverage``)."""
    data = asdict(build_cfg)
    for name in ("output_dir", "min_coverage"):  # where it goes, when to warn: not content
        data.pop(name, None)
    blob = json.dumps({"build": data, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def shard_seed(seed: int, questions: Sequence[Question]) -> int:
    """A seed fixed by the run seed and the shard's questions (stable across retries)."""
    blob = f"{seed}|" + "|".join(q.question_id for q in questions)
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:4], "little")


def build_shard(
    questions: Sequence[Question], build_cfg: Any, seed: int
) -> tuple[list[TraceSet], ShardStats, list[dict[str, Any]]]:
    """Sample, grade and select traces for one shard of questions; the third value holds
    the samples not kept (``REJECTED_SCHEMA`` rows). Kept traces' modes are labelled as the
    question source says (``question_sources.trace_mode_classifier``)."""
    classify = trace_mode_classifier(build_cfg.questions)  # labels Trace.mode, or None
    samples_by_question: dict[str, list[Graded]] = {q.question_id: [] for q in questions}
    stats = ShardStats(questions=len(questions))
    gold = {q.question_id: q.gold_answer for q in questions}
    for teacher_cfg in build_cfg.teachers:
        teacher = build_teacher(teacher_cfg)
        try:
            samples = teacher.generate(
                questions, teacher_cfg.samples_per_question, shard_seed(seed, questions)
            )
        finally:
            teacher.close()
        for sample in samples:
            parsed, correct, grading = grade_sample(
                gold[sample.question_id], sample.text, teacher_cfg.answer_extraction,
                sample.human_verdict,
            )  # fmt: skip
            # By the sample's teacher: one replay teacher serves several models
            # ("champ:GPT-4", "champ:PaLM 2 Medium"), each its own row.
            stats.samples_by_teacher[sample.teacher] += 1
            stats.correct_by_teacher[sample.teacher] += int(correct)
            samples_by_question[sample.question_id].append(Graded(sample, parsed, correct, grading))
    trace_sets, rejected_samples = [], []
    for q in questions:
        graded = samples_by_question[q.question_id]
        trace_set, counts, outcomes = select_traces(
            q,
            graded,
            max_traces=build_cfg.max_traces_per_question,
            near_duplicate_threshold=build_cfg.near_duplicate_threshold,
            classify=classify,
        )
        stats.drops.update(counts)
        rejected_samples += rejected_rows(q.question_id, graded, outcomes)
        for teacher in dict.fromkeys(g.sample.teacher for g in graded):
            own = [g for g in graded if g.sample.teacher == teacher]
            alone, _, _ = select_traces(
                q, own, max_traces=4,
                near_duplicate_threshold=build_cfg.near_duplicate_threshold,
            )  # fmt: skip
            stats.questions_2plus_by_teacher[teacher] += len(alone.traces) >= 2
            stats.questions_4plus_by_teacher[teacher] += len(alone.traces) >= 4
        if trace_set.traces:
            stats.questions_by_teacher_count[str(len({t.teacher for t in trace_set.traces}))] += 1
            stats.questions_with_traces += 1
            stats.traces += len(trace_set.traces)
            trace_sets.append(trace_set)
            stats.kept_by_teacher.update(t.teacher for t in trace_set.traces)
        else:
            reason = rejection_reason(counts, len(graded))
            stats.rejected.append({"question_id": q.question_id, "reason": reason})
    return trace_sets, stats, rejected_samples


def shard_paths(build_dir: Path, index: int) -> tuple[Path, Path]:
    """``(trace-set parquet, stats json)`` of shard ``index``."""
    shards = build_dir / "shards"
    return shards / f"shard-{index:05d}.parquet", shards / f"shard-{index:05d}.stats.json"


def rejected_path(build_dir: Path, index: int) -> Path:
    """Shard ``index``'s table of samples not kept."""
    return build_dir / "shards" / f"shard-{index:05d}.rejected.parquet"


def write_rejected(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` as a ``REJECTED_SCHEMA`` Parquet file, atomically."""
    table = pa.Table.from_pylist(list(rows), schema=REJECTED_SCHEMA)
    with naming_failed_writes(path):
        write_atomic(os.fspath(path), lambda tmp: pq.write_table(table, tmp, compression="zstd"))


@contextlib.contextmanager
def naming_failed_writes(path: Path) -> Iterator[None]:
    """Re-raise a write's ``OSError`` with ``path`` as its filename when it has none.

    pyarrow and Python file objects report a full disk as a bare ``[Errno 28]``; the user
    needs to know which folder to free or fix.
    """
    try:
        yield
    except OSError as err:
        if err.filename or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err


def write_shard(
    build_dir: Path,
    index: int,
    sets: list[TraceSet],
    stats: ShardStats,
    rejected: Sequence[dict[str, Any]] = (),
) -> None:
    """Commit a shard: rejected samples, then stats, trace sets last (the parquet marks it
    done)."""
    parquet, stats_path = shard_paths(build_dir, index)
    write_rejected(rejected_path(build_dir, index), rejected)
    with naming_failed_writes(stats_path):
        write_json_atomic(stats_path, stats.to_json())
    with naming_failed_writes(parquet):
        write_trace_sets(parquet, sets)


def remove_stale_temp_files(build_dir: Path) -> int:
    """Delete temp files that killed writers left in ``build_dir``; returns how many.

    A writer killed mid-write (worker death, SIGXFSZ, OOM) cannot clean up after itself; its
    file only ever had a temp name (``.<name>.tmp-...``), so readers never saw it. Call this
    before submitting shards: no writer of this build runs then.
    """
    removed = 0
    for folder in (build_dir, build_dir / "shards"):
        for path in folder.glob(".*.tmp-*") if folder.is_dir() else ():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def finished_shard(build_dir: Path, index: int) -> ShardStats | None:
    """The stats of a finished shard, or None when it must be (re)built."""
    parquet, stats_path = shard_paths(build_dir, index)
    if not (parquet.exists() and stats_path.exists()):
        return None
    return ShardStats.from_json(json.loads(stats_path.read_text(encoding="utf-8")))


def merge_shards(build_dir: Path, num_shards: int, out_path: Path) -> tuple[list[TraceSet], str]:
    """Concatenate finished shards in order into ``out_path``; returns (sets, digest)."""
    sets: list[TraceSet] = []
    for index in range(num_shards):
        parquet, _ = shard_paths(build_dir, index)
        sets.extend(read_trace_sets(parquet))
    with naming_failed_writes(out_path):
        digest = write_trace_sets(out_path, sets)  # validates: a duplicate question id fails
    return sets, digest


def merge_rejected(build_dir: Path, num_shards: int) -> Path:
    """Concatenate the shards' rejected samples into ``build_dir/rejected_samples.parquet``."""
    tables = [
        pq.read_table(path, schema=REJECTED_SCHEMA)
        for index in range(num_shards)
        if (path := rejected_path(build_dir, index)).exists()
    ]
    table = pa.concat_tables(tables) if tables else REJECTED_SCHEMA.empty_table()
    out = build_dir / "rejected_samples.parquet"
    with naming_failed_writes(out):
        write_atomic(os.fspath(out), lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    return out
