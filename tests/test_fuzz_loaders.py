"""Property-based fuzzing of every loader of user files (issue 7, "bad input").

The property, for each loader: whatever the bytes, it either returns data that obeys its
documented rules, or raises the project's own error type (an ``InputError``) whose message names
the file, and the row/line and field when the damage is row-level. Never an uncaught pyarrow,
json, UnicodeDecodeError or KeyError traceback. Checking "the project's type" matters because
``UnicodeDecodeError`` and ``json.JSONDecodeError`` are themselves ``ValueError``s.

Deterministic (``derandomize=True``, no example database) so CI sees the same examples.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssft.config import ConfigError, load_config
from ssft.data.question_sources import QuestionFileError, read_questions_jsonl
from ssft.data.teachers.replay import REPLAY_COLUMNS, ReplayFileError, read_replay_rows
from ssft.data.trace_set import (
    TRACE_SET_SCHEMA,
    TraceSetError,
    read_trace_sets,
    to_table,
    validate_trace_sets,
    write_trace_sets,
)
from tests.test_trace_set import make_sets

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -- byte-level damage -------------------------------------------------------------------------

# One edit: flip a bit, overwrite a few bytes, or cut the file there. Positions are fractions
# of the length so one strategy fits files of any size.
EDIT = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("set"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("cut"), st.floats(0, 1), st.none()),
)


def damage(data: bytes, edits: list[tuple]) -> bytes:
    out = bytearray(data)
    for op, where, arg in edits:
        if not out:
            break
        i = min(int(where * len(out)), len(out) - 1)
        if op == "flip":
            out[i] ^= 1 << arg
        elif op == "set":
            out[i : i + len(arg)] = arg
        else:
            del out[i:]
    return bytes(out)


def parquet_bytes(table: pa.Table, **kwargs) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **kwargs)
    return sink.getvalue()


def ours_bytes(workdir: Path) -> bytes:
    """A file exactly as ``write_trace_sets`` writes it (zstd, page checksums)."""
    path = workdir / "ours.parquet"
    write_trace_sets(path, make_sets())
    return path.read_bytes()


TRACE_SET_FILES = {
    "ours": ours_bytes,
    # Other writers: uncompressed pages and no checksums, so damage reaches the strings.
    "plain": lambda _: parquet_bytes(to_table(make_sets()), compression="none"),
    "snappy": lambda _: parquet_bytes(to_table(make_sets()), compression="snappy"),
}


@FUZZ
@given(
    variant=st.sampled_from(sorted(TRACE_SET_FILES)),
    edits=st.lists(EDIT, min_size=1, max_size=4),
)
def test_damaged_trace_set_file_reads_or_raises_trace_set_error(workdir, variant, edits):
    path = workdir / "damaged.parquet"
    path.write_bytes(damage(TRACE_SET_FILES[variant](workdir), edits))
    try:
        sets = read_trace_sets(path)
    except TraceSetError as err:
        assert "damaged.parquet" in str(err)
    else:
        validate_trace_sets(sets)


@FUZZ
@given(cut=st.integers(0, 4000))
def test_truncated_trace_set_file_always_raises(workdir, cut):
    data = ours_bytes(workdir)
    path = workdir / "cut.parquet"
    path.write_bytes(data[: cut % len(data)])
    with pytest.raises(TraceSetError, match=r"cut\.parquet"):
        read_trace_sets(path)


# -- trace sets: odd values in rows, wrong column types ---------------------------------------

NO_SURROGATES = st.characters(blacklist_categories=("Cs",))
TEXT = st.one_of(
    st.sampled_from(["", " ", "\n\t", "ok", "q-0000", "t0", "\x00", "数学 √2"]),
    st.text(NO_SURROGATES, max_size=12),
)
OPTIONAL_TEXT = st.one_of(st.none(), TEXT)
# The permissive schema a careless writer infers: everything nullable, int64 counts.
LOOSE_TRACE = pa.struct(
    [
        pa.field(f.name, pa.int64() if f.name == "num_tokens" else f.type)
        for f in TRACE_SET_SCHEMA.field("traces").type.value_type
    ]
)
LOOSE_SCHEMA = pa.schema(
    [pa.field(n, pa.string()) for n in ("question_id", "prompt", "gold_answer", "source")]
    + [pa.field("traces", pa.list_(LOOSE_TRACE))]
)
TRACE = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "trace_id": OPTIONAL_TEXT,
            "teacher": OPTIONAL_TEXT,
            "text": OPTIONAL_TEXT,
            "parsed_answer": OPTIONAL_TEXT,
            "correct": st.one_of(st.none(), st.booleans()),
            "num_tokens": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
            "mode": OPTIONAL_TEXT,
        }
    ),
)
ROW = st.fixed_dictionaries(
    {
        "question_id": OPTIONAL_TEXT,
        "prompt": OPTIONAL_TEXT,
        "gold_answer": OPTIONAL_TEXT,
        "source": OPTIONAL_TEXT,
        "traces": st.one_of(st.none(), st.lists(TRACE, max_size=3)),
    }
)


@FUZZ
@given(rows=st.lists(ROW, min_size=1, max_size=4))
def test_odd_row_values_read_or_name_file_row_and_field(workdir, rows):
    path = workdir / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=LOOSE_SCHEMA), path)
    try:
        sets = read_trace_sets(path)
    except TraceSetError as err:
        message = str(err)
        assert message.startswith(f"trace set file {str(path)!r}, row "), message
        assert re.search(r"row \d+", message) and ("field '" in message or "entry" in message)
    else:
        validate_trace_sets(sets)
        assert [s.question_id for s in sets] == [r["question_id"] for r in rows]


WRONG_TYPES = {
    "int64": (pa.int64(), 7),
    "float64": (pa.float64(), 1.5),
    "bool": (pa.bool_(), True),
    "binary": (pa.binary(), b"x"),
    "list<string>": (pa.list_(pa.string()), ["x"]),
    "null": (pa.null(), None),
}
TOP_FIELDS = ["question_id", "prompt", "gold_answer", "source", "traces"]
TRACE_FIELDS = [f.name for f in LOOSE_TRACE]


def retyped(field: str, new_type: pa.DataType, value) -> pa.Table:
    rows = to_table(make_sets()).to_pylist()
    if field in TOP_FIELDS:
        schema = LOOSE_SCHEMA.set(LOOSE_SCHEMA.get_field_index(field), pa.field(field, new_type))
        for row in rows:
            row[field] = value
        return pa.Table.from_pylist(rows, schema=schema)
    trace_type = pa.struct(
        [pa.field(f.name, new_type) if f.name == field else f for f in LOOSE_TRACE]
    )
    schema = LOOSE_SCHEMA.set(4, pa.field("traces", pa.list_(trace_type)))
    for row in rows:
        for trace in row["traces"]:
            trace[field] = value
    return pa.Table.from_pylist(rows, schema=schema)


# int64 token counts are range-checked row by row; a nullable trace field typed null (what a
# writer infers for an all-null column) reads as null, like an absent one.
NULLABLE_TRACE_FIELDS = ("parsed_answer", "num_tokens", "mode", "grading")
ACCEPTED = {("num_tokens", "int64"), ("correct", "bool")} | {
    (field, "null") for field in NULLABLE_TRACE_FIELDS
}


@pytest.mark.parametrize("field", NULLABLE_TRACE_FIELDS)
def test_a_nullable_trace_field_typed_null_reads_as_null(tmp_path, field):
    path = tmp_path / "typed.parquet"
    pq.write_table(retyped(field, pa.null(), None), path)
    sets = read_trace_sets(path)
    assert {getattr(t, field) for s in sets for t in s.traces} == {None}


@pytest.mark.parametrize(
    ("field", "type_name"),
    [
        (field, type_name)
        for field in TOP_FIELDS + TRACE_FIELDS
        for type_name in sorted(WRONG_TYPES)
        if (field, type_name) not in ACCEPTED
    ],
)
def test_every_field_with_a_wrong_column_type_names_file_and_field(tmp_path, field, type_name):
    new_type, value = WRONG_TYPES[type_name]
    path = tmp_path / "typed.parquet"
    pq.write_table(retyped(field, new_type, value), path)
    with pytest.raises(TraceSetError) as err:
        read_trace_sets(path)
    name = field if field in TOP_FIELDS else f"traces[*].{field}"
    # A list of the wrong item type is named by its items: field 'traces[*]'.
    assert "typed.parquet" in str(err.value) and f"field '{name}" in str(err.value)


# -- JSONL: questions and replay answers ------------------------------------------------------

JSON_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    TEXT,
    st.just("\ud800 lone surrogate"),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def json_object(fields: tuple[str, ...]) -> st.SearchStrategy[dict]:
    """A valid object, then some fields replaced by odd values or deleted."""
    valid = st.fixed_dictionaries(
        {name: st.sampled_from(["a", "q1", "x + 1", "46"]) for name in fields}
    )

    def spoil(obj: dict, draws: list[tuple[str, object, bool]]) -> dict:
        obj = dict(obj)
        for name, value, delete in draws:
            if delete:
                obj.pop(name, None)
            else:
                obj[name] = value
        return obj

    edits = st.lists(st.tuples(st.sampled_from(fields), JSON_VALUE, st.booleans()), max_size=2)
    return st.builds(spoil, valid, edits)


def jsonl_line(fields: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        json_object(fields).map(lambda o: json.dumps(o).encode()),
        json_object(fields).map(
            lambda o: json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogatepass")
        ),
        JSON_VALUE.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=24),
        st.text(max_size=24).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from([b"", b"   ", b'{"question_id": ', b"[" * 5000, b'{"a": 1, "a": 2}']),
    )


QUESTION_FIELDS = ("question_id", "prompt", "gold_answer", "source")


@FUZZ
@given(lines=st.lists(jsonl_line(QUESTION_FIELDS), min_size=1, max_size=5))
def test_questions_jsonl_reads_or_names_file_and_line(workdir, lines):
    path = workdir / "questions.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        questions = read_questions_jsonl(path)
    except QuestionFileError as err:
        message = str(err)
        if "holds no questions" not in message:
            found = re.match(re.escape(str(path)) + r":(\d+): ", message)
            assert found and 1 <= int(found[1]) <= len(lines), message
    else:
        ids = [q.question_id for q in questions]
        assert len(set(ids)) == len(ids)
        for q in questions:
            for name in QUESTION_FIELDS:
                value = getattr(q, name)
                assert isinstance(value, str) and value.strip()
                value.encode("utf-8")


@FUZZ
@given(lines=st.lists(jsonl_line((*REPLAY_COLUMNS, "num_tokens")), min_size=1, max_size=5))
def test_replay_jsonl_reads_or_names_file_and_line(workdir, lines):
    path = workdir / "replay.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        rows = read_replay_rows(path)
    except ReplayFileError as err:
        found = re.match(rf"replay file {re.escape(repr(str(path)))}, line (\d+)", str(err))
        assert found and 1 <= int(found[1]) <= len(lines), str(err)
    else:
        for row in rows:
            assert all(isinstance(row[c], str) and row[c].strip() for c in REPLAY_COLUMNS)
            assert row["num_tokens"] is None or row["num_tokens"] >= 0


REPLAY_TABLE = pa.Table.from_pylist(
    [
        {"question_id": "a", "teacher": "gpt", "text": "a1 = 46", "num_tokens": 3},
        {"question_id": "b", "teacher": "palm", "text": "√2 ≈ 1.41", "num_tokens": None},
    ]
)


@FUZZ
@given(
    compression=st.sampled_from(["none", "zstd"]),
    edits=st.lists(EDIT, min_size=1, max_size=4),
)
def test_damaged_replay_parquet_reads_or_raises_replay_error(workdir, compression, edits):
    path = workdir / "replay.parquet"
    path.write_bytes(damage(parquet_bytes(REPLAY_TABLE, compression=compression), edits))
    try:
        rows = read_replay_rows(path)
    except ReplayFileError as err:
        assert f"replay file {str(path)!r}" in str(err)
    else:
        assert all(isinstance(r["text"], str) and r["text"].strip() for r in rows)


# -- config files and overrides ---------------------------------------------------------------

TINY_YAML = (ROOT / "tests" / "configs" / "tiny_test.yaml").read_bytes()
YAML_SNIPPETS = st.sampled_from(
    [
        b"preset: tiny_test\n",
        b"train:\n  lr: 0.1\n",
        b"train:\n  lrr: 0.1\n",
        b"forking:\n  num_tags: 0\n",
        b"forking:\n  num_tags: 2\n  num_tags: 3\n",
        b"data: [1, 2]\n",
        b"model: {tokenizer: char, init: random}\n",
        b"- a\n- b\n",
        b"\xff\xfe",
        b"!!python/object:os.system {}\n",
        b"? [a, b]\n: 1\n",
        b"&a [*a]\n",
        b"\t",
    ]
)


@FUZZ
@given(
    parts=st.lists(st.one_of(YAML_SNIPPETS, st.binary(max_size=16)), min_size=1, max_size=4),
    keep_base=st.booleans(),
)
def test_config_file_loads_or_raises_config_error_naming_it(workdir, parts, keep_base):
    path = workdir / "fuzz.yaml"
    path.write_bytes((TINY_YAML if keep_base else b"") + b"".join(parts))
    try:
        load_config(path)
    except ConfigError as err:
        assert "fuzz.yaml" in str(err)


OVERRIDE_KEYS = st.sampled_from(
    ["train.lr", "forking.num_tags", "method", "data.max_seq_len", "trian.lr", "seed",
     "matching.prefix_tokens", "build.teachers.0.temperature", "build.teachers", "model", ""]
)  # fmt: skip
OVERRIDE_VALUES = st.one_of(
    st.sampled_from(["1", "-1", "0", "1e-3", "null", "true", "[1", "{a: 1}", "ssft", ".nan"]),
    st.text(max_size=10),
)


@FUZZ
@given(items=st.lists(st.tuples(OVERRIDE_KEYS, OVERRIDE_VALUES), min_size=1, max_size=3))
def test_overrides_apply_or_raise_config_error(items):
    overrides = [f"{key}={value}" for key, value in items]
    try:
        load_config(ROOT / "tests" / "configs" / "tiny_test.yaml", overrides)
    except ConfigError as err:
        assert str(err)
