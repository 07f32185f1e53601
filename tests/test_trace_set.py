"""Tests for ssft.data.trace_set: round trip, digest, validation messages, atomic writes."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssft.data import trace_set as ts_mod
from ssft.data.trace_set import (
    SCHEMA_VERSION_KEY,
    TRACE_SET_SCHEMA,
    Trace,
    TraceSet,
    TraceSetError,
    from_table,
    read_trace_sets,
    to_table,
    trace_set_digest,
    validate_trace_sets,
    write_trace_sets,
)


def make_sets() -> list[TraceSet]:
    return [
        TraceSet(
            question_id="q-0000",
            prompt="What is 12 + 30?",
            gold_answer="42",
            source="known_modes/addition",
            traces=(
                Trace("t0", "strategy:column", "2+0=2, 1+3=4 → \\boxed{42}", "42", True, 17, "col"),
                Trace("t1", "replay:gpt-4", "Think: 12+30 = 42", "42", True),
                Trace("t2", "qwen", "naïve guess 41 — ∑ ≠", None, False, 0, None),
            ),
        ),
        TraceSet("q-0001", "Ünïcödé prompt 数学", "√2", "champ", ()),
        TraceSet("q-0002", "p", "7", "champ", (Trace("a", "m", "x = 7", "7", True, 3),)),
    ]


def table_rows() -> list[dict]:
    return to_table(make_sets()).to_pylist()


def write_table(path, table: pa.Table) -> str:
    pq.write_table(table, path)
    return str(path)


def assert_names(exc: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(exc.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# -- round trip ------------------------------------------------------------------------------


def test_round_trip_keeps_everything(tmp_path):
    sets = make_sets()
    path = tmp_path / "sub" / "dir" / "train.parquet"
    digest = write_trace_sets(path, sets)
    back = read_trace_sets(path)
    assert back == sets
    assert back[1].traces == ()
    assert back[0].traces[1].num_tokens is None and back[0].traces[1].mode is None
    assert back[0].traces[2].parsed_answer is None
    assert digest == trace_set_digest(back)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64


def test_file_schema_is_the_declared_one_with_zstd_and_version(tmp_path):
    path = tmp_path / "t.parquet"
    write_trace_sets(path, make_sets())
    schema = pq.read_schema(path)
    assert schema.equals(TRACE_SET_SCHEMA, check_metadata=False)
    assert schema.metadata[SCHEMA_VERSION_KEY] == b"1"
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_list_traces_are_stored_as_tuple():
    ts = TraceSet("q", "p", "g", "s", [Trace("t", "m", "x", None, False)])
    assert isinstance(ts.traces, tuple)
    assert ts == TraceSet("q", "p", "g", "s", (Trace("t", "m", "x", None, False),))


def test_large_string_and_int64_num_tokens_are_accepted():
    table = to_table(make_sets())
    trace_type = table.schema.field("traces").type.value_type
    wide = pa.struct(
        [pa.field(f.name, pa.int64() if f.name == "num_tokens" else f.type) for f in trace_type]
    )
    schema = pa.schema(
        [pa.field(n, pa.large_string()) for n in ("question_id", "prompt", "gold_answer", "source")]
        + [pa.field("traces", pa.large_list(wide))]
    )
    assert from_table(pa.Table.from_pylist(table.to_pylist(), schema=schema)) == make_sets()


# -- digest ----------------------------------------------------------------------------------


def test_digest_ignores_row_order_and_compression(tmp_path):
    sets = make_sets()
    digest = trace_set_digest(sets)
    assert trace_set_digest(list(reversed(sets))) == digest
    plain = tmp_path / "plain.parquet"
    pq.write_table(to_table(list(reversed(sets))), plain, compression="none")
    assert trace_set_digest(read_trace_sets(plain)) == digest
    assert write_trace_sets(tmp_path / "z.parquet", sets) == digest


def test_digest_changes_with_one_character_and_with_trace_order():
    sets = make_sets()
    digest = trace_set_digest(sets)
    first = sets[0]
    t0 = replace(first.traces[0], text=first.traces[0].text.replace("42", "43", 1))
    edited = replace(first, traces=(t0, *first.traces[1:]))
    assert trace_set_digest([edited, *sets[1:]]) != digest
    swapped = replace(first, traces=tuple(reversed(first.traces)))
    assert trace_set_digest([swapped, *sets[1:]]) != digest
    assert trace_set_digest([replace(first, source="champ"), *sets[1:]]) != digest


# -- malformed files -------------------------------------------------------------------------


def test_missing_column(tmp_path):
    path = write_table(tmp_path / "miss.parquet", to_table(make_sets()).drop_columns(["prompt"]))
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(path)
    assert_names(exc, "miss.parquet", "all rows", "'prompt' is missing")


def test_missing_trace_field(tmp_path):
    rows = table_rows()
    for row in rows:
        for t in row["traces"]:
            del t["correct"]
    path = write_table(tmp_path / "mt.parquet", pa.Table.from_pylist(rows))
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(path)
    assert_names(exc, "mt.parquet", "'traces[*].correct' is missing")


def test_extra_misspelled_column_suggests_name(tmp_path):
    table = to_table(make_sets()).append_column("questoin_id", pa.array(["a", "b", "c"]))
    path = write_table(tmp_path / "extra.parquet", table)
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(path)
    assert_names(exc, "extra.parquet", "'questoin_id' is not in", "Did you mean 'question_id'?")


def test_wrong_type(tmp_path):
    table = to_table(make_sets())
    table = table.set_column(0, "question_id", pa.array([1, 2, 3], pa.int64()))
    path = write_table(tmp_path / "wt.parquet", table)
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(path)
    assert_names(exc, "wt.parquet", "'question_id' has type int64, expected string")


def test_binary_text_is_wrong_type():
    rows = table_rows()
    for row in rows:
        for t in row["traces"]:
            t["text"] = t["text"].encode()
    with pytest.raises(TraceSetError) as exc:
        from_table(pa.Table.from_pylist(rows), "b.parquet")
    assert_names(exc, "b.parquet", "'traces[*].text' has type binary, expected string")


def test_newer_schema_version(tmp_path):
    table = to_table(make_sets()).replace_schema_metadata({SCHEMA_VERSION_KEY: b"2"})
    path = write_table(tmp_path / "v2.parquet", table)
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(path)
    assert_names(exc, "v2.parquet", "schema version '2'", "up to '1'")


def bad_row_file(tmp_path, name: str, edit) -> str:
    rows = table_rows()
    edit(rows)
    # Inferred schema: all nullable (the declared one forbids the nulls under test), int64 counts.
    return write_table(tmp_path / name, pa.Table.from_pylist(rows))


@pytest.mark.parametrize(
    ("edit", "parts"),
    [
        (
            lambda rows: rows[2].update(question_id=None),
            ["row 2:", "field 'question_id' is null"],
        ),
        (
            lambda rows: rows[2].update(question_id="q-0000"),
            ["row 0 and row 2 (question_id='q-0000')", "field 'question_id'", "unique"],
        ),
        (
            lambda rows: rows[0]["traces"][2].update(trace_id="t0"),
            ["row 0 (question_id='q-0000')", "'traces[2].trace_id'", "repeats traces[0]"],
        ),
        (
            lambda rows: rows[0]["traces"][1].update(text=" \n\t "),
            ["row 0 (question_id='q-0000')", "'traces[1].text' is whitespace-only"],
        ),
        (
            lambda rows: rows[2]["traces"][0].update(num_tokens=-3),
            ["row 2 (question_id='q-0002')", "'traces[0].num_tokens' is -3"],
        ),
        (
            lambda rows: rows[2]["traces"][0].update(correct=None),
            ["row 2 (question_id='q-0002')", "'traces[0].correct' is None"],
        ),
        (
            lambda rows: rows[1].update(gold_answer=""),
            ["row 1 (question_id='q-0001')", "field 'gold_answer' is empty"],
        ),
        (
            lambda rows: rows[1].update(prompt=" \n"),
            ["row 1 (question_id='q-0001')", "field 'prompt' is whitespace-only"],
        ),
        (
            lambda rows: rows[2].update(gold_answer=None),
            ["row 2 (question_id='q-0002')", "field 'gold_answer' is null", "gold answer"],
        ),
        (
            lambda rows: rows[0]["traces"][0].update(text=""),
            ["row 0 (question_id='q-0000')", "'traces[0].text' is empty"],
        ),
        (
            lambda rows: rows[1].update(traces=None),
            ["row 1 (question_id='q-0001')", "field 'traces' is null"],
        ),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, edit, parts):
    path = bad_row_file(tmp_path, "bad.parquet", edit)
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(path)
    assert_names(exc, "trace set file", "bad.parquet", *parts)


def test_num_tokens_overflow_in_int64_file():
    rows = table_rows()
    rows[2]["traces"][0]["num_tokens"] = 2**40
    table = pa.Table.from_pylist(rows)  # num_tokens inferred as int64
    with pytest.raises(TraceSetError) as exc:
        from_table(table, "big.parquet")
    assert_names(exc, "big.parquet", "row 2", "'traces[0].num_tokens' is 1099511627776")


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.parquet"
    write_trace_sets(path, make_sets())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(path)
    assert_names(exc, "cut.parquet", "not a readable Parquet file", "truncated")


def test_not_parquet(tmp_path):
    path = tmp_path / "notes.parquet"
    path.write_text("question_id,prompt\nq,p\n")
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(path)
    assert_names(exc, "notes.parquet", "not a readable Parquet file")


def replace_bytes(path, old: bytes, new: bytes) -> None:
    """Patch a file in place, length-preserving (pages and footer offsets stay valid)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new))


@pytest.mark.parametrize(
    ("field", "parts"),
    [
        ("prompt", ["row 1 (question_id='q-0001')", "field 'prompt' holds bytes"]),
        ("trace_text", ["row 0 (question_id='q-0000')", "'traces[1].text' holds bytes"]),
        ("question_id", ["row 2:", "field 'question_id' holds bytes"]),
    ],
)
def test_invalid_utf8_names_row_and_field(tmp_path, field, parts):
    """Arrow reads invalid UTF-8 without complaint; the loader must name where it is."""
    sets = make_sets()
    marker = "MARKER7"
    if field == "prompt":
        sets[1] = replace(sets[1], prompt=marker)
    elif field == "question_id":
        sets[2] = replace(sets[2], question_id=marker)
    else:
        t1 = replace(sets[0].traces[1], text=marker)
        sets[0] = replace(sets[0], traces=(sets[0].traces[0], t1, sets[0].traces[2]))
    path = tmp_path / "latin.parquet"
    pq.write_table(to_table(sets), path, compression="none")  # no checksums: like other writers
    replace_bytes(path, marker.encode(), b"MA\xffKER7")
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(path)
    assert_names(exc, "latin.parquet", *parts, "not valid UTF-8")


def test_page_checksums_catch_a_flipped_bit(tmp_path):
    """A flip inside a trace's text would otherwise read as a different, valid trace."""
    sets = make_sets()
    t1 = replace(sets[0].traces[1], text="Think: 12+30 = 42 MARKER7")
    sets[0] = replace(sets[0], traces=(sets[0].traces[0], t1, sets[0].traces[2]))
    path = tmp_path / "flip.parquet"
    table = to_table(sets)
    pq.write_table(table, path, compression="none", write_page_checksum=True)
    replace_bytes(path, b"MARKER7", b"MARKER8")
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(path)
    assert_names(exc, "flip.parquet", "not a readable Parquet file")
    # The same flip without checksums is silently a different trace: why we write them.
    pq.write_table(table, path, compression="none")
    replace_bytes(path, b"MARKER7", b"MARKER8")
    assert read_trace_sets(path)[0].traces[1].text.endswith("MARKER8")


def test_written_files_carry_page_checksums(tmp_path):
    """Each data page header gains a 4-byte CRC: the only trace of it pyarrow lets us see."""
    sets = make_sets()
    write_trace_sets(tmp_path / "ours.parquet", sets)
    pq.write_table(to_table(sets), tmp_path / "plain.parquet", compression="zstd")
    leaf_columns = pq.ParquetFile(tmp_path / "plain.parquet").metadata.num_columns  # >= 1 page
    grown = os.path.getsize(tmp_path / "ours.parquet") - os.path.getsize(tmp_path / "plain.parquet")
    assert grown >= 4 * leaf_columns, grown


def test_duplicate_column_names(tmp_path):
    table = to_table(make_sets())
    table = table.append_column("prompt", table.column("prompt"))
    path = write_table(tmp_path / "dup.parquet", table)
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(path)
    assert_names(exc, "dup.parquet", "field 'prompt' appears 2 times")


def test_non_utf8_schema_version_metadata(tmp_path):
    table = to_table(make_sets()).replace_schema_metadata({SCHEMA_VERSION_KEY: b"\xff1"})
    path = write_table(tmp_path / "meta.parquet", table)
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(path)
    assert_names(exc, "meta.parquet", "schema version", "not one this code reads")


def test_nonexistent_path(tmp_path):
    with pytest.raises(TraceSetError) as exc:
        read_trace_sets(tmp_path / "nope.parquet")
    assert_names(exc, "nope.parquet", "does not exist")


# -- in-memory validation --------------------------------------------------------------------


def test_validate_python_objects():
    sets = make_sets()
    validate_trace_sets(sets)
    bad = [*sets, TraceSet("q-9", "p", "g", "s", (Trace("t", "m", "ok", None, 1),))]
    with pytest.raises(TraceSetError) as exc:
        validate_trace_sets(bad, "<new>")
    assert_names(exc, "trace sets <new>, row 3 (question_id='q-9')", "'traces[0].correct' is 1")
    with pytest.raises(TraceSetError) as exc:
        validate_trace_sets([TraceSet(17, "p", "g", "s", ())])
    assert_names(exc, "row 0:", "'question_id' has type int")
    with pytest.raises(TraceSetError) as exc:
        to_table([*sets, sets[0]])
    assert_names(exc, "row 0 and row 3", "question_id")


# -- atomic write ----------------------------------------------------------------------------


def leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".tmp-" in name)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "train.parquet"
    write_trace_sets(path, make_sets()[:1])
    before = path.read_bytes()

    def broken_write(table, where, **kwargs):  # the writer gets the temp path, never `path`
        Path(where).write_bytes(b"PAR1 partial")
        assert os.path.basename(where).startswith(".train.parquet.tmp-")
        raise OSError("disk full")

    monkeypatch.setattr(ts_mod.pq, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_trace_sets(path, make_sets())
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_invalid_data_is_not_written(tmp_path):
    path = tmp_path / "train.parquet"
    write_trace_sets(path, make_sets())
    before = path.read_bytes()
    bad = [TraceSet("q", "p", "g", "s", (Trace("t", "m", "   ", None, False),))]
    with pytest.raises(TraceSetError) as exc:
        write_trace_sets(path, bad)
    assert_names(exc, "train.parquet", "row 0 (question_id='q')", "'traces[0].text'")
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


# -- nullable fields a file may lack -----------------------------------------------------------


def test_absent_or_all_null_nullable_trace_fields_read_as_null(tmp_path):
    """Files from other writers (or from before ``grading`` existed) may lack nullable fields."""
    rows = table_rows()
    for row in rows:
        for trace in row["traces"]:
            del trace["grading"], trace["mode"]
            trace["parsed_answer"] = None
    table = pa.Table.from_pylist(rows)  # inferred types: parsed_answer is all null
    path = write_table(tmp_path / "old.parquet", table)
    back = read_trace_sets(path)
    assert [t.mode for t in back[0].traces] == [None, None, None]
    assert {t.grading for s in back for t in s.traces} == {None}
    assert {t.parsed_answer for s in back for t in s.traces} == {None}
    assert [t.text for t in back[0].traces] == [t.text for t in make_sets()[0].traces]


def test_grading_round_trips_and_is_checked_as_text(tmp_path):
    sets = [TraceSet("q", "p", "7", "s", (Trace("t", "m", "x", "7", True, grading="human"),))]
    write_trace_sets(tmp_path / "g.parquet", sets)
    assert read_trace_sets(tmp_path / "g.parquet")[0].traces[0].grading == "human"
    bad = [replace(sets[0], traces=(replace(sets[0].traces[0], grading=7),))]
    with pytest.raises(TraceSetError) as exc:
        validate_trace_sets(bad)
    assert_names(exc, "row 0", "'traces[0].grading' has type int")
