"""The ``replay`` teacher: reading Parquet/JSONL answer files, and the CHAMP transcripts."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssft.config.checks import ConfigError
from ssft.data.teachers.base import Question, build_teacher
from ssft.data.teachers.replay import (
    CHAMP_MODELS,
    CHAMP_REFERENCE_TEACHER,
    ReplayFileError,
    champ_gold_answer,
    champ_questions,
    champ_replay_rows,
    read_replay_rows,
    write_champ_replay,
)

ROWS = [
    {"question_id": "a", "teacher": "gpt", "text": "a1", "num_tokens": 3},
    {"question_id": "b", "teacher": "gpt", "text": "b1", "num_tokens": None},
    {"question_id": "a", "teacher": "palm", "text": "a2", "num_tokens": 5},
    {"question_id": "a", "teacher": "gpt", "text": "a3", "num_tokens": 4},
    {"question_id": "a", "teacher": "palm", "text": "a4", "num_tokens": 1},
    {"question_id": "c", "teacher": "gpt", "text": "c1", "num_tokens": 2},
]
QUESTIONS = [Question(q, f"prompt {q}", "1", "test") for q in ("c", "a", "missing", "b")]


def write_jsonl(path, rows, raw_lines=()):
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def make_teacher(path, name="old"):
    return build_teacher(SimpleNamespace(name=name, kind="replay", replay_path=str(path)))


@pytest.fixture(params=["jsonl", "parquet"])
def replay_file(request, tmp_path):
    if request.param == "jsonl":
        return write_jsonl(tmp_path / "r.jsonl", ROWS)
    return write_parquet(tmp_path / "r.parquet", ROWS)


def test_grouping_order_and_naming(replay_file):
    samples = make_teacher(replay_file).generate(QUESTIONS, num_samples=10, seed=0)
    assert [(s.question_id, s.text) for s in samples] == [
        ("c", "c1"), ("a", "a1"), ("a", "a2"), ("a", "a3"), ("a", "a4"), ("b", "b1"),
    ]  # fmt: skip
    assert samples[1].teacher == "old:gpt" and samples[2].teacher == "old:palm"
    assert [s.num_tokens for s in samples] == [2, 3, 5, 4, 1, None]


def test_subset_is_deterministic_by_seed(replay_file):
    teacher = make_teacher(replay_file)
    qa = [QUESTIONS[1]]
    picks = {s: tuple(x.text for x in teacher.generate(qa, 2, seed=s)) for s in range(20)}
    assert all(len(p) == 2 and list(p) == sorted(p) for p in picks.values())  # file order kept
    assert picks[3] == tuple(x.text for x in teacher.generate(qa, 2, seed=3))
    assert len(set(picks.values())) > 1  # the seed matters
    # The choice for one question does not depend on the rest of the batch.
    batch = teacher.generate(QUESTIONS, 2, seed=3)
    assert tuple(s.text for s in batch if s.question_id == "a") == picks[3]
    assert teacher.generate(qa, 0, seed=0) == []


def test_jsonl_skips_blank_lines_and_ignores_extra_fields(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('\n{"question_id": "a", "teacher": "t", "text": "x", "extra": 1}\n\n')
    assert read_replay_rows(path) == [
        {"question_id": "a", "teacher": "t", "text": "x", "num_tokens": None, "human_correct": None}
    ]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"question_id": "q", "teacher": "t"}, r"line 2: missing field\(s\) \['text'\]"),
        ({"question_id": "q", "teacher": "t", "text": None}, r"line 2, field 'text'"),
        ({"question_id": "q", "teacher": "t", "text": "  "}, r"line 2, field 'text'"),
        ({"question_id": "", "teacher": "t", "text": "x"}, r"line 2, field 'question_id'"),
        ({"question_id": "q", "teacher": "t", "text": "x", "num_tokens": -1}, "num_tokens"),
        ({"question_id": "q", "teacher": 4, "text": "x"}, r"line 2, field 'teacher'.*got 4"),
        (
            {"question_id": "q", "teacher": "t", "text": "\ud800"},
            r"line 2, field 'text'.*surrogate",
        ),
    ],
)
def test_jsonl_bad_rows_name_file_line_and_field(tmp_path, bad, match):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], bad])
    with pytest.raises(ReplayFileError, match=match) as info:
        make_teacher(path)
    assert "bad.jsonl" in str(info.value)


def test_jsonl_repeated_key_is_an_error(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"question_id": "a", "teacher": "t", "text": "x", "text": "y"}\n')
    with pytest.raises(ReplayFileError, match=r"dup.jsonl.*line 1, field 'text': appears twice"):
        read_replay_rows(path)


def test_jsonl_invalid_json_and_utf8(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", ROWS[:2], raw_lines=["{not json"])
    with pytest.raises(ValueError, match="line 3: invalid JSON"):
        read_replay_rows(path)
    raw = (json.dumps(ROWS[0]) + "\n").encode() + b'{"question_id": "\xff\xfe"}\n'
    (tmp_path / "latin.jsonl").write_bytes(raw)
    with pytest.raises(ValueError, match=r"latin.jsonl.*line 2: not valid UTF-8"):
        read_replay_rows(tmp_path / "latin.jsonl")


def test_parquet_bad_input(tmp_path):
    no_text = write_parquet(tmp_path / "no_text.parquet", [{"question_id": "q", "teacher": "t"}])
    with pytest.raises(ValueError, match=r"no_text.parquet.*missing column\(s\) \['text'\]"):
        read_replay_rows(no_text)
    rows = [dict(ROWS[0]), dict(ROWS[1], text=None)]
    null_text = write_parquet(tmp_path / "null.parquet", rows)
    with pytest.raises(ValueError, match=r"null.parquet.*row 1, field 'text'"):
        read_replay_rows(null_text)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ReplayFileError, match="not a readable Parquet file"):
        read_replay_rows(tmp_path / "junk.parquet")
    data = write_parquet(tmp_path / "cut.parquet", ROWS).read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) - 9])
    with pytest.raises(ReplayFileError, match=r"cut.parquet.*not a readable Parquet file"):
        read_replay_rows(tmp_path / "cut.parquet")


def test_parquet_invalid_utf8_names_row_and_field(tmp_path):
    """Arrow reads invalid UTF-8 without complaint; the loader must say where it is."""
    rows = [dict(ROWS[0]), dict(ROWS[1], text="MARKER7")]
    path = write_parquet(tmp_path / "latin.parquet", rows)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"MARKER7", b"MA\xffKER7"))
    with pytest.raises(ReplayFileError, match=r"latin.parquet', row 1, field 'text'.*UTF-8"):
        read_replay_rows(path)


def test_missing_file_and_path(tmp_path):
    with pytest.raises(ReplayFileError, match=r"nope.jsonl.*does not exist"):
        make_teacher(tmp_path / "nope.jsonl")
    with pytest.raises(ReplayFileError, match="unknown suffix"):
        read_replay_rows(write_jsonl(tmp_path / "r.txt", ROWS))
    with pytest.raises(ConfigError, match="needs replay_path"):
        build_teacher(SimpleNamespace(name="x", kind="replay", replay_path=None))


# -- CHAMP -----------------------------------------------------------------------------------


def test_champ_gold_answer_format():
    from math_verify import parse, verify

    assert champ_gold_answer("239") == "239"
    assert champ_gold_answer("@@C(10, 5)@@, or equivalently @@252@@") == (
        "$C(10, 5)$, or equivalently $252$"
    )
    assert champ_gold_answer("@@5/14@@, or approximately 35.7%") == "$5/14$"
    assert champ_gold_answer("100 (i.e., all numbers)") == "100"
    for gold, answer in [
        ("@@C(10, 5)@@, or equivalently @@252@@", "\\boxed{252}"),
        ("@@5/14@@, or approximately 35.7%", "so the answer is $\\frac{5}{14}$"),
        ("@@2^(n-1)@@", "\\boxed{2^{n-1}}"),
        ("@@x=2, y=1@@", "$x=2, y=1$"),
    ]:
        assert verify(parse(champ_gold_answer(gold)), parse(answer)), gold


def test_champ_questions_and_rows(tmp_path):
    questions = champ_questions()
    assert len(questions) == 270
    assert len({q.question_id for q in questions}) == 270
    assert all(
        q.prompt.strip() and q.gold_answer.strip() and q.source == "champ" for q in questions
    )

    from math_verify import parse

    parsed = sum(bool(parse(q.gold_answer)) for q in questions)
    assert parsed >= 200, parsed  # the rest are prose answers ("No", "It is not possible")

    rows = champ_replay_rows()
    assert len(rows) > 10_000
    assert {r["teacher"] for r in rows} == {*CHAMP_MODELS, CHAMP_REFERENCE_TEACHER}
    assert {r["question_id"] for r in rows} <= {q.question_id for q in questions}
    assert not {"1/3 Soln", "2/3 Soln"} & {r["variant"] for r in rows}
    assert len(champ_replay_rows(exclude_variants=())) > len(rows)
    # The official solution of every problem, as teacher "human", judged correct by CHAMP.
    reference = [r for r in rows if r["teacher"] == CHAMP_REFERENCE_TEACHER]
    assert len(reference) == 270 and all(r["human_correct"] is True for r in reference)
    assert {r["variant"] for r in reference} == {"reference"}
    # CHAMP's first-wrong-step annotations: no wrong step = correct, one = incorrect.
    verdicts = Counter(r["human_correct"] for r in rows if r["teacher"] in CHAMP_MODELS)
    assert verdicts[True] == 96 and verdicts[False] == 438, verdicts
    assert sum(r["summary"] is not None for r in rows) > 10_000  # the one-sentence answers
    assert len(champ_replay_rows(include_reference=False)) == len(rows) - 270

    path = write_champ_replay(tmp_path / "champ" / "replay.parquet")
    assert [p.name for p in path.parent.iterdir()] == ["replay.parquet"]  # no temp file left
    teacher = make_teacher(path, name="champ")
    samples = teacher.generate(questions[:3], num_samples=4, seed=0)
    assert [s.question_id for s in samples] == [
        q.question_id for q in questions[:3] for _ in "1234"
    ]
    assert all(s.teacher.startswith("champ:") for s in samples)
    # The verdicts travel with the samples (grading trusts them over extraction).
    everything = teacher.generate(questions, num_samples=100, seed=0)
    by_teacher = Counter((s.teacher, s.human_verdict) for s in everything)
    assert by_teacher[("champ:human", True)] == 270
    assert sum(n for (t, v), n in by_teacher.items() if v is False) == 438


def test_human_correct_column_is_read_and_checked(tmp_path):
    rows = [dict(r, human_correct=i % 2 == 0 if i < 4 else None) for i, r in enumerate(ROWS)]
    for path in (
        write_jsonl(tmp_path / "h.jsonl", rows),
        write_parquet(tmp_path / "h.parquet", rows),
    ):
        samples = make_teacher(path).generate(QUESTIONS, num_samples=10, seed=0)
        verdicts = {s.text: s.human_verdict for s in samples}
        assert verdicts == {
            "a1": True,
            "b1": False,
            "a2": True,
            "a3": False,
            "a4": None,
            "c1": None,
        }
    bad = [dict(ROWS[0], human_correct="yes")]
    with pytest.raises(ReplayFileError, match=r"line 1, field 'human_correct': must be true, "):
        read_replay_rows(write_jsonl(tmp_path / "bad.jsonl", bad))
