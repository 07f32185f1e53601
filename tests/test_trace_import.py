"""Bring your own traces (ssft.data.trace_import): both row shapes, grading and selection as in the
build, errors naming file, row or line and field, nothing written on failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssft.data.trace_import import TraceImportError, import_traces, read_answers
from ssft.data.trace_set import read_trace_sets

ROOT = Path(__file__).resolve().parents[1]

RESPONSES = [
    {"question_id": "q1", "prompt": "2 + 2 = ?", "gold_answer": "4", "teacher": "t1",
     "responses": ["2 + 2 = 4, so \\boxed{4}", {"text": "I get \\boxed{5}", "teacher": "bad"},
                   {"text": "Two and two make \\boxed{4}.", "teacher": "t2"},
                   "2 + 2 = 4, so   \\boxed{4}"]},
    {"prompt": "3 + 3 = ?", "gold_answer": "6", "responses": ["The final answer is 6."]},
]  # fmt: skip


def write_jsonl(path: Path, rows: list, raw: tuple[str, ...] = ()) -> Path:
    path.write_text("\n".join([*(json.dumps(r) for r in rows), *raw]) + "\n", encoding="utf-8")
    return path


def test_responses_rows_are_graded_deduplicated_and_selected_like_the_build(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", RESPONSES)
    summary = import_traces(path, tmp_path / "out" / "traces.parquet")
    sets = read_trace_sets(tmp_path / "out" / "traces.parquet")
    [q1] = sets  # q2's only answer has no box: rejected under the strict default
    assert [(t.teacher, t.text) for t in q1.traces] == [
        ("t1", "2 + 2 = 4, so \\boxed{4}"), ("t2", "Two and two make \\boxed{4}."),
    ]  # fmt: skip
    assert {t.grading for t in q1.traces} == {"boxed"} and q1.source == "mine"
    assert (summary.rows, summary.questions, summary.answers, summary.traces) == (2, 2, 5, 2)
    assert summary.drops == {"incorrect": 2, "duplicate_exact": 1}
    rejected = pq.read_table(tmp_path / "out" / "rejected_samples.parquet").to_pylist()
    assert sorted((r["teacher"], r["parsed_answer"], r["reason"]) for r in rejected) == [
        ("bad", "5", "incorrect"), ("imported", None, "incorrect"), ("t1", "4", "duplicate_exact"),
    ]  # fmt: skip
    # The second question's id is derived from its prompt, and stable.
    again = read_answers(path)[0]
    assert again[1].question_id.startswith("q-") and len(again[1].question_id) == 14

    summary = import_traces(path, tmp_path / "fa.parquet", extraction="final_answer")
    q2 = read_trace_sets(tmp_path / "fa.parquet")[1]
    assert q2.traces[0].parsed_answer == "6" and q2.traces[0].grading == "final_answer"


def test_messages_rows_of_one_question_are_merged(tmp_path):
    def chat(answer: str, teacher: str) -> dict:
        return {"messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "1 + 1 = ?"},
                             {"role": "assistant", "content": answer}],
                "gold_answer": "2", "teacher": teacher}  # fmt: skip

    rows = [chat("\\boxed{2}", "a"), chat("one and one: \\boxed{2}", "b"), chat("\\boxed{3}", "c")]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    import_traces(path, tmp_path / "t.parquet")
    [ts] = read_trace_sets(tmp_path / "t.parquet")
    assert ts.prompt == "1 + 1 = ?" and [t.teacher for t in ts.traces] == ["a", "b"]


def test_assume_correct_trusts_every_answer_and_says_so(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", RESPONSES[1:])
    import_traces(path, tmp_path / "t.parquet", assume_correct=True)
    [ts] = read_trace_sets(tmp_path / "t.parquet")
    assert ts.traces[0].correct and ts.traces[0].grading == "assumed"


@pytest.mark.parametrize(
    ("rows", "raw", "match"),
    [
        ([RESPONSES[0], {"prompt": "p", "gold_answer": "1"}], (),
         r"line 2: missing field\(s\) \['responses'\]; this file's first row is a 'responses'"),
        ([RESPONSES[0], {**RESPONSES[0], "gold_answer": "5"}], (),
         r"line 2, field 'gold_answer': question 'q1' has another gold_answer in line 1"),
        ([{**RESPONSES[0], "responses": [7]}], (), r"line 1, field 'responses\[0\]': must be a"),
        ([{**RESPONSES[0], "responses": [{"teacher": "x"}]}], (),
         r"line 1, field 'responses\[0\].text': is missing"),
        ([{**RESPONSES[0], "gold_answer": " "}], (), r"line 1, field 'gold_answer': must be"),
        ([RESPONSES[0]], ("{oops",), r"line 2: invalid JSON"),
        ([{"messages": [{"role": "user", "content": "p"}], "gold_answer": "1"}], (),
         r"line 1, field 'messages': has no 'assistant' turn"),
        ([{"messages": [{"role": "assistant"}], "gold_answer": "1"}], (),
         r"line 1, field 'messages\[0\].content': must be a non-empty string"),
        ([], (), r"holds no rows"),
    ],
)  # fmt: skip
def test_bad_rows_name_file_line_and_field_and_write_nothing(tmp_path, rows, raw, match):
    path = write_jsonl(tmp_path / "bad.jsonl", rows, raw)
    with pytest.raises(TraceImportError, match=match) as err:
        import_traces(path, tmp_path / "out" / "t.parquet")
    assert "bad.jsonl" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_nothing_kept_is_an_error_that_points_at_the_rejected_samples(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", RESPONSES[1:])
    with pytest.raises(TraceImportError, match=r"none of its 1 answers to 1 questions was kept"):
        import_traces(path, tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()
    [row] = pq.read_table(tmp_path / "rejected_samples.parquet").to_pylist()
    assert row["reason"] == "incorrect" and row["text"] == "The final answer is 6."


def test_the_command_line_exits_2_on_bad_input_and_prints_the_summary(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", RESPONSES)
    run = [sys.executable, "-m", "ssft.data.trace_import"]
    done = subprocess.run([*run, str(good), str(tmp_path / "t.parquet")], cwd=ROOT,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 traces for 1/2 questions from 5 answers in 2 rows")
    bad = write_jsonl(tmp_path / "bad.jsonl", [], ("[1, 2]",))
    done = subprocess.run([*run, str(bad), str(tmp_path / "u.parquet")], cwd=ROOT,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "line 1: expected a JSON object, got list" in done.stderr
