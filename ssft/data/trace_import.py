"""Bring your own traces: the files researchers already have, as a validated trace set.

    python -m ssft.data.trace_import responses.jsonl runs/data/mine.parquet \
        --extraction final_answer

Two row shapes, Parquet or JSONL (one file holds one shape; read by ``ssft.record_files``, so
errors name the file, the row or line, and the field):

``responses`` (a prompt and its answers)::

    prompt        string                 required, not blank
    gold_answer   string                 required, not blank (what the answers are graded on)
    responses     list                   required; each a string, or {text, teacher?}
    question_id   string, optional       default: "q-" + the first 12 hex of sha256(prompt)
    teacher       string, optional       for responses without their own; default "imported"
    source        string, optional       default: the file's name without suffix

``messages`` (chat rows, one answer per row, e.g. exported SFT data)::

    messages      list of {role, content}  required; the last "assistant" turn is the trace,
                                           the last "user" turn before it the prompt
    gold_answer, question_id, teacher, source   as above

Rows of one question (the same ``question_id``, or the same prompt when ids are absent) are
merged; their prompts and gold answers must agree. Each answer is graded like a teacher's
(``ssft.data.grading.grade_sample`` with ``extraction``; ``assume_correct`` trusts them all, for
files already filtered, and records ``grading="assumed"``), then ``select_traces`` keeps at
most ``max_traces`` distinct correct traces per question, exactly as the build does. Samples
not kept go to ``rejected_samples.parquet`` beside the output with their reason. The trace
set is validated and written atomically (``write_trace_sets``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssft.data.grading import EXTRACTIONS, check_extraction, grade_sample
from ssft.data.teachers.base import Question, Sample
from ssft.data.trace_building import rejected_rows, write_rejected
from ssft.data.trace_selection import Graded, select_traces
from ssft.data.trace_set import TraceSet, write_trace_sets
from ssft.errors import InputError
from ssft.record_files import read_records

ASSUMED = "assumed"  # Trace.grading of an answer trusted without grading (assume_correct)
SHAPES = {
    "responses": ("prompt", "gold_answer", "responses"),
    "messages": ("messages", "gold_answer"),
}
_OPTIONAL = ("question_id", "teacher", "source")


class TraceImportError(InputError):
    """A bad file to import; the message names the file, the row or line, and the field."""


@dataclass
class ImportSummary:
    """What an import read, kept and dropped (printed by the command line)."""

    rows: int = 0
    questions: int = 0
    questions_with_traces: int = 0
    answers: int = 0
    traces: int = 0
    drops: Counter = field(default_factory=Counter)
    digest: str = ""


def _text(label: str, where: str, name: str, value: Any, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "..."
        raise TraceImportError(
            f"{label}, {where}, field {name!r}: must be a non-empty string, got {shown}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise TraceImportError(
            f"{label}, {where}, field {name!r}: has a lone surrogate escape at character "
            f"{err.start}"
        ) from None
    return value


def _answers(label: str, where: str, record: dict, shape: str, teacher: str) -> tuple[str, list]:
    """``(prompt, [(teacher, text)])`` of one row."""
    if shape == "responses":
        prompt = _text(label, where, "prompt", record["prompt"])
        responses = record["responses"]
        if not isinstance(responses, list):
            raise TraceImportError(
                f"{label}, {where}, field 'responses': must be a list of strings or of "
                f"{{text, teacher}} objects, got {type(responses).__name__}"
            )
        answers = []
        for j, item in enumerate(responses):
            name = f"responses[{j}]"
            if isinstance(item, dict):
                if "text" not in item:
                    raise TraceImportError(f"{label}, {where}, field '{name}.text': is missing")
                text = _text(label, where, f"{name}.text", item["text"])
                who = _text(label, where, f"{name}.teacher", item.get("teacher"), required=False)
                answers.append((who or teacher, text))
            else:
                answers.append((teacher, _text(label, where, name, item)))
        return prompt, answers
    messages = record["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise TraceImportError(
            f"{label}, {where}, field 'messages': must be a list of {{role, content}} objects"
        )
    for j, m in enumerate(messages):
        for key in ("role", "content"):
            _text(label, where, f"messages[{j}].{key}", m.get(key))
    last_assistant = max((j for j, m in enumerate(messages) if m["role"] == "assistant"),
                         default=None)  # fmt: skip
    if last_assistant is None:
        raise TraceImportError(
            f"{label}, {where}, field 'messages': has no 'assistant' turn, so no trace"
        )
    user = [j for j, m in enumerate(messages[:last_assistant]) if m["role"] == "user"]
    if not user:
        raise TraceImportError(
            f"{label}, {where}, field 'messages': no 'user' turn before the last 'assistant' "
            "turn, so no prompt"
        )
    return messages[user[-1]]["content"], [(teacher, messages[last_assistant]["content"])]


def read_answers(path: str | os.PathLike) -> tuple[list[Question], list[Sample], int]:
    """Questions (first-seen order), their answers as samples, and the number of rows."""
    path = Path(path)
    label = f"traces file {str(path)!r}"
    questions: dict[str, Question] = {}
    first_row: dict[str, str] = {}
    samples: list[Sample] = []
    rows = 0
    records = read_records(
        path, what="traces file", error=TraceImportError, required=("gold_answer",),
        optional=("prompt", "responses", "messages", *_OPTIONAL),
    )  # fmt: skip
    # The first row decides the shape; every row must then have that shape's fields.
    shape = "messages" if records and "messages" in records[0][1] else "responses"
    for where, record in records:
        missing = [f for f in SHAPES[shape] if f not in record]
        if missing:
            raise TraceImportError(
                f"{label}, {where}: missing field(s) {missing}; this file's first row is a "
                f"{shape!r} row, so every row needs {list(SHAPES[shape])} (the other shape: "
                f"{list(SHAPES['messages' if shape == 'responses' else 'responses'])})"
            )
    default_source = path.name.split(".")[0] or "imported"
    for where, record in records:
        rows += 1
        teacher = _text(label, where, "teacher", record.get("teacher"), required=False)
        prompt, answers = _answers(label, where, record, shape, teacher or "imported")
        gold = _text(label, where, "gold_answer", record["gold_answer"])
        source = _text(label, where, "source", record.get("source"), required=False)
        qid = _text(label, where, "question_id", record.get("question_id"), required=False)
        qid = qid or "q-" + hashlib.sha256(prompt.encode()).hexdigest()[:12]
        if qid in questions:
            earlier = questions[qid]
            for name, value in (("prompt", prompt), ("gold_answer", gold)):
                if getattr(earlier, name) != value:
                    raise TraceImportError(
                        f"{label}, {where}, field {name!r}: question {qid!r} has another "
                        f"{name} in {first_row[qid]}; one question, one {name}"
                    )
        else:
            questions[qid] = Question(qid, prompt, gold, source or default_source)
            first_row[qid] = where
        samples += [Sample(qid, who, text) for who, text in answers]
    if not questions:
        raise TraceImportError(f"{label}: holds no rows")
    return list(questions.values()), samples, rows


def import_traces(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    extraction: str = "boxed",
    assume_correct: bool = False,
    max_traces: int = 4,
    near_duplicate_threshold: float = 0.9,
) -> ImportSummary:
    """Read ``path``, grade and select as the build does, write the trace set to ``out``."""
    check_extraction(extraction)
    questions, samples, rows = read_answers(path)
    by_question: dict[str, list[Graded]] = {q.question_id: [] for q in questions}
    gold = {q.question_id: q.gold_answer for q in questions}
    for sample in samples:
        if assume_correct:
            graded = Graded(sample, None, True, ASSUMED)
        else:
            graded = Graded(
                sample, *grade_sample(gold[sample.question_id], sample.text, extraction)
            )
        by_question[sample.question_id].append(graded)
    summary = ImportSummary(rows=rows, questions=len(questions), answers=len(samples))
    sets: list[TraceSet] = []
    rejected: list[dict[str, Any]] = []
    for q in questions:
        graded = by_question[q.question_id]
        trace_set, counts, outcomes = select_traces(
            q, graded, max_traces=max_traces, near_duplicate_threshold=near_duplicate_threshold
        )
        summary.drops.update({k: v for k, v in counts.items() if v})
        rejected += rejected_rows(q.question_id, graded, outcomes)
        if trace_set.traces:
            sets.append(trace_set)
            summary.traces += len(trace_set.traces)
    summary.questions_with_traces = len(sets)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rejected(out.parent / "rejected_samples.parquet", rejected)
    if not sets:
        raise TraceImportError(
            f"traces file {str(path)!r}: none of its {summary.answers} answers to "
            f"{summary.questions} questions was kept ({dict(summary.drops)}), so no trace set "
            f"was written. Their parsed answers and reasons are in "
            f"{out.parent / 'rejected_samples.parquet'}; try --extraction "
            f"{'/'.join(e for e in EXTRACTIONS if e != extraction)}, or --assume-correct for "
            "answers already checked."
        )
    summary.digest = write_trace_sets(out, sets)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ssft.data.trace_import", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("input", help="a Parquet or JSONL file of responses or messages rows")
    parser.add_argument("output", help="the trace-set Parquet file to write")
    parser.add_argument(
        "--extraction",
        default="boxed",
        choices=list(EXTRACTIONS),
        help="where grading finds each answer's final answer (default boxed)",
    )
    parser.add_argument(
        "--assume-correct",
        action="store_true",
        help="trust every answer as correct (files already filtered)",
    )
    parser.add_argument("--max-traces", type=int, default=4, help="M: traces kept per question")
    parser.add_argument("--near-duplicate-threshold", type=float, default=0.9,
                        help="word 3-gram Jaccard at which two traces count as one")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        summary = import_traces(
            args.input, args.output, extraction=args.extraction,
            assume_correct=args.assume_correct, max_traces=args.max_traces,
            near_duplicate_threshold=args.near_duplicate_threshold,
        )  # fmt: skip
    except (InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    print(
        f"{summary.traces} traces for {summary.questions_with_traces}/{summary.questions} "
        f"questions from {summary.answers} answers in {summary.rows} rows "
        f"(dropped: {dict(summary.drops) or 'none'}) -> {args.output} [{summary.digest}]"
    )


if __name__ == "__main__":
    main()
