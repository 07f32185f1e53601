"""Row files a user brings (Parquet or JSONL), read strictly, each row with where it came from.

Replay files and imported traces share these rules, so one reader enforces them and every
error names the file, the row (Parquet rows count from 0, like ``trace_set``) or line (JSONL,
from 1, like editors) and the field:

- a Parquet file must be readable (page checksums verified when present) and hold the
  ``required`` columns, each once; only those and the ``optional`` ones present are read;
- its strings must be valid UTF-8 (Arrow does not check this on read);
- a JSONL line must be valid UTF-8 and one JSON object, with no key written twice (``json``
  would keep the last one silently); blank lines are skipped.

Field values are checked by the caller, which knows what each must be.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ssft.errors import InputError

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


class _RepeatedKey(Exception):
    """Raised inside ``json.loads``; turned into an error that names the line."""


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _RepeatedKey(key)
        record[key] = value
    return record


def read_records(
    path: Path,
    *,
    what: str,
    error: type[InputError],
    required: Sequence[str],
    optional: Sequence[str] = (),
    missing_hint: str = "",
) -> list[tuple[str, dict[str, Any]]]:
    """``[(where, record)]`` in file order: ``where`` is ``"row i"`` or ``"line n"``.

    ``what`` names the file in messages ("replay file"); ``error`` is the ``InputError``
    subclass raised; ``missing_hint`` ends the message for a file that does not exist.
    """
    label = f"{what} {str(path)!r}"
    if not path.is_file():
        raise error(f"{label} does not exist{'; ' + missing_hint if missing_hint else ''}")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _parquet_records(path, label, error, required, optional)
    if suffix in JSONL_SUFFIXES:
        return _jsonl_records(path, label, error, required, optional)
    raise error(
        f"{label}: unknown suffix {suffix!r}; use one of {PARQUET_SUFFIXES + JSONL_SUFFIXES}"
    )


def _parquet_records(path, label, error, required, optional) -> list[tuple[str, dict[str, Any]]]:
    unreadable = (
        f"{label} is not a readable Parquet file (it may be truncated or corrupt; re-copy or "
        "regenerate it)"
    )
    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as parquet:
            names = parquet.schema_arrow.names
            missing = [c for c in required if c not in names]
            if missing:
                raise error(
                    f"{label}: missing column(s) {missing}; found {names}, need "
                    f"{list(required)}" + (f" (+ optional {list(optional)})" if optional else "")
                )
            repeated = sorted({n for n in names if names.count(n) > 1} & {*required, *optional})
            if repeated:
                raise error(
                    f"{label}: column(s) {repeated} appear more than once; keep one of each"
                )
            table = parquet.read(columns=[*required, *(c for c in optional if c in names)])
    except (pa.ArrowException, OSError, UnicodeDecodeError) as err:
        # UnicodeDecodeError: a corrupt footer whose column names are not UTF-8.
        raise error(f"{unreadable}: {type(err).__name__}: {err}") from err
    try:
        records = table.to_pylist()
    except UnicodeDecodeError:
        raise _utf8_error(label, error, table) from None
    return [(f"row {i}", record) for i, record in enumerate(records)]


def _utf8_error(label: str, error: type[InputError], table: pa.Table) -> InputError:
    """The first value that is not valid UTF-8, by row and column (only on the error path)."""
    for i in range(table.num_rows):
        for name in table.column_names:
            try:
                table.column(name)[i].as_py()
            except UnicodeDecodeError:
                return error(
                    f"{label}, row {i}, field {name!r}: holds bytes that are not valid UTF-8 "
                    "(a corrupt file, or text stored in another encoding)"
                )
    return error(f"{label}: holds bytes that are not valid UTF-8")


def _jsonl_records(path, label, error, required, optional) -> list[tuple[str, dict[str, Any]]]:
    records = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        where = f"line {lineno}"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise error(
                f"{label}, {where}: not valid UTF-8 (byte {err.start} of the line); re-encode "
                "the file as UTF-8"
            ) from None
        if not line:
            continue  # blank lines (a trailing newline) are not rows
        try:
            record = json.loads(line, object_pairs_hook=_object_without_repeated_keys)
        except json.JSONDecodeError as err:
            raise error(f"{label}, {where}: invalid JSON ({err})") from None
        except _RepeatedKey as err:
            raise error(
                f"{label}, {where}, field {err.args[0]!r}: appears twice in one object; keep one"
            ) from None
        except RecursionError:
            raise error(f"{label}, {where}: JSON nested too deeply") from None
        if not isinstance(record, dict):
            raise error(f"{label}, {where}: expected a JSON object, got {type(record).__name__}")
        missing = [c for c in required if c not in record]
        if missing:
            raise error(
                f"{label}, {where}: missing field(s) {missing}; every line needs "
                f"{list(required)}" + (f" (+ optional {list(optional)})" if optional else "")
            )
        records.append((where, record))
    return records
