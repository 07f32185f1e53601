"""Trace sets: the training data of SSFT, one row per question, and their Parquet files.

A trace set is a question with the M distinct correct reasoning traces SSFT learns to predict as
a set (METHOD.md): each trace is later matched to one of N global forking tokens ``<think i>``.
M may exceed N, and traces may be incorrect or missing (M = 0 for a question nobody solved yet);
this module stores what was generated and never drops data. Which traces train, and the M > N
policy, belong to the training side.

Schema (one Parquet row per question; rows are numbered from 0 in every error message)::

    column             arrow type      rule
    question_id        string          not blank (empty or whitespace-only), unique in the file
    prompt             string          not blank; the question as shown to the model
    gold_answer        string          not blank
    source             string          not blank, e.g. "known_modes/addition", "champ"
    traces             list<struct>    may be empty; order is kept (it breaks ties downstream)
      .trace_id        string          not blank, unique within its question
      .teacher         string          not blank, e.g. a model name or "replay:gpt-4"
      .text            string          not blank
      .parsed_answer   string, null    null when no answer could be parsed
      .correct         bool            graded against gold_answer; never null
      .num_tokens      int32, null     length under the teacher's tokenizer, >= 0
      .mode            string, null    reasoning-strategy label when known
      .grading         string, null    what graded it: an answer extraction mode ("boxed",
                                       "final_answer", ...; ssft.data.grading) or "human"

Nullable trace fields (parsed_answer, num_tokens, mode, grading) may be absent from a file's
schema: they read as null, so files from other writers and from before a field existed load.

The schema version is stored in the Parquet schema metadata under ``SCHEMA_VERSION_KEY``. On
read, column types must match exactly, except that ``large_string``/``large_list`` are accepted
for ``string``/``list`` and int64 for ``num_tokens`` (values must fit int32). Every string
must be valid UTF-8: Arrow does not check this when reading, so a corrupt or mis-encoded file
is caught here and its row and field named.

Corruption: files are written with Parquet page checksums (CRC32), which ``read_trace_sets``
verifies, so flipped bits in a data page fail the read instead of changing a trace. Files from
other writers usually have none; for them only the checks above apply.

Atomic write: ``write_trace_sets`` validates, writes ``.<name>.tmp-<pid>-<random>`` in the target
directory, fsyncs it and ``os.replace``s it onto the final name, so readers see either the old
file or the complete new one; on any error the temp file is removed and an old file is untouched.

Digest: ``trace_set_digest`` hashes the content, not the bytes; see its docstring.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ssft.atomic_io import write_atomic
from ssft.errors import InputError

SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"ssft.trace_set.schema_version"
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Trace:
    trace_id: str
    teacher: str
    text: str
    parsed_answer: str | None
    correct: bool
    num_tokens: int | None = None
    mode: str | None = None
    grading: str | None = None


@dataclass(frozen=True)
class TraceSet:
    question_id: str
    prompt: str
    gold_answer: str
    source: str
    traces: tuple[Trace, ...]

    def __post_init__(self) -> None:
        # A list would make equality with a read-back TraceSet fail and the object unhashable.
        if isinstance(self.traces, list):
            object.__setattr__(self, "traces", tuple(self.traces))


_TRACE_TYPE = pa.struct(
    [
        pa.field("trace_id", pa.string(), nullable=False),
        pa.field("teacher", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("parsed_answer", pa.string()),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("num_tokens", pa.int32()),
        pa.field("mode", pa.string()),
        pa.field("grading", pa.string()),
    ]
)
_OPTIONAL_TRACE_FIELDS = tuple(f.name for f in _TRACE_TYPE if f.nullable)
TRACE_SET_SCHEMA = pa.schema(
    [
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("gold_answer", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("traces", pa.list_(pa.field("item", _TRACE_TYPE, nullable=False)), nullable=False),
    ],
    metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()},
)

# Why each required string field exists, and the fix, for error messages.
_REQUIRED_STR = {
    "question_id": "every question needs a unique id. Give it one, e.g. 'q-0017'",
    "prompt": "every question needs its prompt. Fill it from the source dataset",
    "gold_answer": "every question needs its gold answer. Fill it or drop the question",
    "source": "every question needs its source dataset name. Set it, e.g. 'champ'",
    "trace_id": "every trace needs an id. Number the traces, e.g. 't0', 't1'",
    "teacher": "every trace needs its teacher. Set the model or strategy that wrote it",
    "text": "every trace needs its text. Drop the trace or regenerate it",
}


class TraceSetError(InputError):
    """Invalid trace-set data or file; the message names file, row, question_id and field."""


def _describe(source_name: str) -> str:
    if source_name.startswith("<") and source_name.endswith(">"):
        return f"trace sets {source_name}"
    return f"trace set file {source_name!r}"


def _row_error(where: str, row: int | str, qid: Any, field: str, problem: str) -> TraceSetError:
    who = f" (question_id={qid!r})" if isinstance(qid, str) and qid else ""
    subject = f"field {field!r}" if field else "entry"
    return TraceSetError(f"{where}, row {row}{who}: {subject} {problem}")


def _str_problem(value: Any, name: str, optional: bool = False) -> str | None:
    """What is wrong with a string value, or None if it is fine."""
    if value is None:
        return None if optional else f"is null; {_REQUIRED_STR[name]}."
    if not isinstance(value, str):
        return f"has type {type(value).__name__} ({value!r:.60}), expected str."
    if not optional and not value.strip():
        blank = "whitespace-only" if value else "empty"
        return f"is {blank}; {_REQUIRED_STR[name]}."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"has a character at position {exc.start} that is not valid UTF-8 ({exc.reason})."
    return None


def _check_trace(trace: Any, path: str) -> tuple[str, str] | None:
    """(field path, problem) for the first problem in one trace dict, else None."""
    if trace is None:
        return path, "is null; drop the null entry from the traces list."
    for name in ("trace_id", "teacher", "text", "parsed_answer", "mode", "grading"):
        optional = name in _OPTIONAL_TRACE_FIELDS
        problem = _str_problem(trace.get(name), name, optional=optional)
        if problem:
            return f"{path}.{name}", problem
    if not isinstance(trace["correct"], bool):
        got = trace["correct"]
        return f"{path}.correct", f"is {got!r}, expected True or False; grade the trace."
    n = trace["num_tokens"]
    if n is not None and (
        isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= _INT32_MAX
    ):
        return f"{path}.num_tokens", f"is {n!r}, expected null or an int in [0, 2**31); recount it."
    return None


def _check_rows(rows: Sequence[dict[str, Any]], where: str) -> None:
    """Raise TraceSetError for the first invalid row (dicts shaped like TRACE_SET_SCHEMA)."""
    first_row_of: dict[str, int] = {}
    for i, row in enumerate(rows):
        qid = row["question_id"]
        for name in ("question_id", "prompt", "gold_answer", "source"):
            if problem := _str_problem(row[name], name):
                raise _row_error(where, i, qid, name, problem)
        if qid in first_row_of:
            problem = (
                f"value {qid!r} repeats row {first_row_of[qid]}; question ids must be unique "
                "within a file. Merge the two rows' traces or rename one question."
            )
            raise _row_error(where, f"{first_row_of[qid]} and row {i}", qid, "question_id", problem)
        first_row_of[qid] = i
        if row["traces"] is None:
            problem = "is null; store an empty list for a question with no traces yet."
            raise _row_error(where, i, qid, "traces", problem)
        first_trace_of: dict[str, int] = {}
        for j, trace in enumerate(row["traces"]):
            if found := _check_trace(trace, f"traces[{j}]"):
                raise _row_error(where, i, qid, *found)
            tid = trace["trace_id"]
            if tid in first_trace_of:
                problem = (
                    f"value {tid!r} repeats traces[{first_trace_of[tid]}].trace_id; trace ids "
                    "must be unique within a question. Renumber the traces or drop the duplicate."
                )
                raise _row_error(where, i, qid, f"traces[{j}].trace_id", problem)
            first_trace_of[tid] = j


def _as_rows(sets: Sequence[TraceSet], where: str) -> list[dict[str, Any]]:
    """Plain dicts in schema order; checks the Python types that dicts cannot show."""
    rows = []
    for i, ts in enumerate(sets):
        if not isinstance(ts, TraceSet):
            raise _row_error(where, i, None, "", f"holds a {type(ts).__name__}, expected TraceSet.")
        qid = ts.question_id
        if not isinstance(ts.traces, tuple):
            got = type(ts.traces).__name__
            raise _row_error(where, i, qid, "traces", f"is a {got}, expected a tuple of Trace.")
        for j, t in enumerate(ts.traces):
            if not isinstance(t, Trace):
                got = type(t).__name__
                raise _row_error(where, i, qid, f"traces[{j}]", f"is a {got}, expected Trace.")
        row = {f.name: getattr(ts, f.name) for f in fields(TraceSet)}
        row["traces"] = [{f.name: getattr(t, f.name) for f in fields(Trace)} for t in ts.traces]
        rows.append(row)
    return rows


def validate_trace_sets(sets: Sequence[TraceSet], source_name: str = "<memory>") -> None:
    """Raise TraceSetError for the first trace set that breaks a rule of the module docstring."""
    where = _describe(source_name)
    _check_rows(_as_rows(sets, where), where)


def _validated_table(sets: Sequence[TraceSet], where: str) -> pa.Table:
    rows = _as_rows(sets, where)
    _check_rows(rows, where)
    return pa.Table.from_pylist(rows, schema=TRACE_SET_SCHEMA)


def to_table(sets: Sequence[TraceSet]) -> pa.Table:
    """Validated Arrow table with TRACE_SET_SCHEMA (and its version metadata), rows in order."""
    return _validated_table(sets, _describe("<memory>"))


def _type_problems(found: pa.DataType, expected: pa.DataType, path: str) -> list[str]:
    """Human-readable schema mismatches of ``found`` against ``expected``, recursively."""
    if found == expected:
        return []
    if expected == pa.string() and found == pa.large_string():
        return []
    if path.endswith("num_tokens") and found == pa.int64():
        return []  # values are range-checked row by row
    if pa.types.is_list(expected) and (pa.types.is_list(found) or pa.types.is_large_list(found)):
        return _type_problems(found.value_type, expected.value_type, f"{path}[*]")
    if pa.types.is_struct(expected) and pa.types.is_struct(found):
        return _field_problems(list(found), list(expected), f"{path}.")
    fix = "Rewrite the file with write_trace_sets, or cast the column before writing."
    return [f"field {path!r} has type {found}, expected {expected}. {fix}"]


def _field_problems(found: list[pa.Field], expected: list[pa.Field], prefix: str) -> list[str]:
    names = [f.name for f in expected]
    by_name = {f.name: f for f in found}
    problems = [
        f"field {prefix + f.name!r} is missing; every trace-set file needs it ({f.type})."
        for f in expected
        if f.name not in by_name and not (prefix == "traces[*]." and f.nullable)
    ]
    for f in found:
        if f.name not in names:
            close = difflib.get_close_matches(f.name, names, n=1, cutoff=0.6)
            hint = f" Did you mean {prefix + close[0]!r}? Rename it." if close else " Drop it."
            problems.append(f"field {prefix + f.name!r} is not in the trace-set schema.{hint}")
    for f in expected:
        if f.name in by_name and not (f.nullable and by_name[f.name].type == pa.null()):
            # (a writer that inferred types types an all-null column as null)
            problems += _type_problems(by_name[f.name].type, f.type, prefix + f.name)
    return problems


def _check_schema(schema: pa.Schema, where: str) -> None:
    raw_version = (schema.metadata or {}).get(SCHEMA_VERSION_KEY, SCHEMA_VERSION.encode())
    version = raw_version.decode("utf-8", errors="replace")
    if not version.isdigit() or int(version) > int(SCHEMA_VERSION):
        raise TraceSetError(
            f"{where}: schema version {version!r} (metadata key {SCHEMA_VERSION_KEY.decode()!r}) "
            f"is not one this code reads (up to {SCHEMA_VERSION!r}). Update ssft, or rewrite "
            "the file with this version."
        )
    problems = [
        f"field {name!r} appears {schema.names.count(name)} times; keep one."
        for name in dict.fromkeys(schema.names)
        if schema.names.count(name) > 1
    ]
    problems += _field_problems(list(schema), list(TRACE_SET_SCHEMA), "")
    if problems:
        raise TraceSetError(f"{where}, schema (all rows): " + " ".join(problems))


def from_table(table: pa.Table, source_name: str = "<table>") -> list[TraceSet]:
    """Check the schema, validate every row, and return the trace sets in row order."""
    where = _describe(source_name)
    _check_schema(table.schema, where)
    table = table.select(TRACE_SET_SCHEMA.names)
    try:
        rows = table.to_pylist()
    except UnicodeDecodeError:
        raise _utf8_error(table, where) from None
    _check_rows(rows, where)
    absent = dict.fromkeys(_OPTIONAL_TRACE_FIELDS)  # nullable fields a file may lack
    return [
        TraceSet(**{**row, "traces": tuple(Trace(**{**absent, **t}) for t in row["traces"])})
        for row in rows
    ]


_NOT_UTF8 = (
    "holds bytes that are not valid UTF-8: the file is corrupt, or its writer stored text in "
    "another encoding. Regenerate or re-copy it, or decode the text before writing."
)


def _undecodable(scalar: pa.Scalar) -> bool:
    try:
        scalar.as_py()
    except UnicodeDecodeError:
        return True
    return False


def _utf8_error(table: pa.Table, where: str) -> TraceSetError:
    """The first string that is not valid UTF-8, by row and field (only on the error path)."""
    for i in range(table.num_rows):
        qid_scalar = table.column("question_id")[i]
        qid = None if _undecodable(qid_scalar) else qid_scalar.as_py()
        for name in ("question_id", "prompt", "gold_answer", "source"):
            if _undecodable(table.column(name)[i]):
                return _row_error(where, i, qid, name, _NOT_UTF8)
        traces = table.column("traces")[i].values
        for j in range(0 if traces is None else len(traces)):
            trace = traces[j]
            for name in [f.name for f in trace.type] if trace.is_valid else ():
                if _undecodable(trace[name]):
                    return _row_error(where, i, qid, f"traces[{j}].{name}", _NOT_UTF8)
    return TraceSetError(f"{where}: {_NOT_UTF8}")


def read_trace_sets(path: str | os.PathLike) -> list[TraceSet]:
    """Read and validate a trace-set Parquet file; any problem raises TraceSetError."""
    where = _describe(os.fspath(path))
    if not os.path.isfile(path):
        state = "is not a regular file" if os.path.exists(path) else "does not exist"
        raise TraceSetError(f"{where} {state} (cwd {os.getcwd()!r}). Check the path.")
    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as parquet:
            table = parquet.read()
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        # UnicodeDecodeError: a corrupt footer whose column names are not UTF-8.
        raise TraceSetError(
            f"{where} is not a readable Parquet file ({type(exc).__name__}: {exc}). It may be "
            "truncated by an interrupted copy or not Parquet at all; regenerate or re-copy it."
        ) from exc
    return from_table(table, os.fspath(path))


def write_trace_sets(path: str | os.PathLike, sets: Sequence[TraceSet]) -> str:
    """Validate, write atomically with zstd and page checksums (module docstring); the digest."""
    path = os.fspath(path)
    table = _validated_table(sets, f"trace sets to write to {path!r}")
    write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd",
                                                  write_page_checksum=True))  # fmt: skip
    return trace_set_digest(sets)


def trace_set_digest(sets: Sequence[TraceSet]) -> str:
    """``"sha256:<hex>"`` of the content, independent of Parquet encoding, compression, row order.

    Hashes one canonical JSON line per question (all fields, ``sort_keys=True``,
    ``ensure_ascii=False``, compact separators, UTF-8, each line ending in ``\\n``), lines sorted
    by question_id. Question order is canonicalised because rows carry no meaning in their order:
    shuffling or merging files must not change the digest. Trace order is kept as stored because
    it is data: it breaks ties downstream (e.g. which trace wins an equal-cost matching or which
    are kept when M > N), so reordering traces can change training and must change the digest.
    """
    rows = _as_rows(sets, _describe("<memory>"))
    dump = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode
    lines = sorted((str(row["question_id"]), dump(row)) for row in rows)
    digest = hashlib.sha256()
    for _, line in lines:
        digest.update(line.encode("utf-8") + b"\n")
    return f"sha256:{digest.hexdigest()}"
