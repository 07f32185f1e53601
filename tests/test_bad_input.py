"""Bad input end to end (issue 7): real entrypoints in a child process, and the file -> training
data path. Each failure must exit non-zero with a message naming the file, row and field, and
leave whatever was written before byte-identical. Per-loader cases live with each loader's
tests (``test_trace_set``, ``test_question_sources``, ``test_teacher_replay``, ``test_config``,
``test_data_prep``, ``test_forking_tokens``, ``test_models``) and in ``test_fuzz_loaders``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssft.config.presets import tiny_test
from ssft.data.trace_set import TRACE_SET_SCHEMA, Trace, TraceSet, write_trace_sets
from ssft.errors import InputError
from ssft.method.sequences import format_prompt
from ssft.models import build_char_tokenizer
from ssft.train.setup import load_training_data
from tests.openai_server import API_KEY_ENV, ChatServer
from tests.test_trace_set import make_sets

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = str(ROOT / "tests" / "configs" / "tiny_test.yaml")


def run_entrypoint(
    module: str, *args: str, cwd: Path, config: str | Path = TINY_YAML
) -> subprocess.CompletedProcess:
    """``python -m <module> --config <config> <args>`` from ``cwd`` (so runs/ lands there)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", module, "--config", str(config), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (hidden temp files included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def earlier_outputs(folder: Path) -> dict[str, bytes]:
    """An output folder holding a finished earlier result, as a user's would."""
    write_trace_sets(folder / "earlier" / "trace_sets.parquet", make_sets())
    (folder / "earlier" / "summary.json").write_text(json.dumps({"digest": "sha256:0"}))
    return snapshot(folder)


def test_build_traces_with_a_bad_questions_file_fails_and_writes_nothing(tmp_path):
    """Fails in input validation, before Ray starts or any shard is written."""
    questions = tmp_path / "questions.jsonl"
    good = {"question_id": "q1", "prompt": "1 + 1 = ?", "gold_answer": "2", "source": "mine"}
    bad = {k: v for k, v in good.items() if k != "gold_answer"} | {"question_id": "q2"}
    questions.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    out = tmp_path / "traces"
    before = earlier_outputs(out)
    done = run_entrypoint(
        "workflows.build_traces",
        "build.questions=jsonl", f"build.questions_path={questions}", f"build.output_dir={out}",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{questions}:2: field 'gold_answer' is missing" in done.stderr.splitlines()[-1]
    assert "Started a local Ray instance" not in done.stderr
    assert snapshot(out) == before


def test_train_with_a_misspelled_key_exits_2_with_one_line(tmp_path):
    out = tmp_path / "train_out"
    before = earlier_outputs(out)
    done = run_entrypoint(
        "workflows.train", "trian.lr=0.1", f"train.output_dir={out}", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "unknown config key 'trian.lr'" in line and "Did you mean 'train.lr'?" in line
    assert snapshot(out) == before


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one ``error: ...`` line of a failed entrypoint (exit 2, no traceback, no Ray)."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "Started a local Ray instance" not in done.stdout + done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    return line


def test_build_traces_with_a_bad_replay_file_fails_before_ray(tmp_path):
    """A replay teacher's file is read and checked on the driver, before Ray or any shard."""
    replay = tmp_path / "replay.jsonl"
    good = {"question_id": "q1", "teacher": "GPT-4", "text": "1 + 1 = 2"}
    replay.write_text(json.dumps(good) + "\n" + json.dumps({**good, "text": " \t "}) + "\n")
    config = tmp_path / "replay.yaml"
    teacher = {"name": "rp", "kind": "replay", "replay_path": str(replay)}
    config.write_text(json.dumps({"preset": "tiny_test", "build": {"teachers": [teacher]}}))
    out = tmp_path / "traces"
    before = earlier_outputs(out)
    done = run_entrypoint(
        "workflows.build_traces", f"build.output_dir={out}", cwd=tmp_path, config=config
    )
    line = error_line(done)
    assert f"replay file {str(replay)!r}, line 2, field 'text'" in line
    assert "whitespace-only" in line
    assert snapshot(out) == before


def test_train_with_a_bad_trace_set_exits_2_and_keeps_earlier_outputs(tmp_path):
    """A row-level error: names the file, the row, the question and the field; no traceback.

    The trace set is read on the driver before Ray starts, so this costs no Ray start-up.
    """
    rows = make_sets()
    rows[2] = TraceSet("q-0002", "p", "7", "champ", (Trace("a", "m", "  \n", "7", True),))
    bad = tmp_path / "bad.parquet"
    # Written without validation, as another tool might.
    table_rows = [{**vars(ts), "traces": [vars(t) for t in ts.traces]} for ts in rows]
    pq.write_table(pa.Table.from_pylist(table_rows, schema=TRACE_SET_SCHEMA), bad)
    out = tmp_path / "train_out"
    before = earlier_outputs(out)
    done = run_entrypoint(
        "workflows.train", f"data.train_path={bad}", f"train.output_dir={out}", "name=bad-input",
        cwd=tmp_path,
    )  # fmt: skip
    line = error_line(done)
    assert f"trace set file {str(bad)!r}, row 2 (question_id='q-0002')" in line
    assert "field 'traces[0].text' is whitespace-only" in line
    assert snapshot(out) == before


def test_more_traces_than_tags_in_a_file_names_file_row_and_field(tmp_path):
    """The M > N policy on the real path: Parquet file -> read -> tokenize (default 'error')."""
    path = many_traces_file(tmp_path)
    cfg = tiny_test()  # forking.num_tags = 4
    with pytest.raises(InputError) as err:
        load_training_data(cfg, build_char_tokenizer(), str(path))
    message = str(err.value)
    assert f"{str(path)!r}, row 1 (question_id='q-many')" in message
    assert "field 'traces' has 5 usable traces but forking.num_tags=4" in message
    cfg.data.too_many_traces = "keep_most_distinct"
    questions, stats = load_training_data(cfg, build_char_tokenizer(), str(path))
    assert [q.num_traces for q in questions] == [2, 4]
    assert stats.dropped == {"too_many_traces": 1}


def many_traces_file(tmp_path: Path) -> Path:
    """Row 1 has 5 correct traces: more than tiny_test's forking.num_tags = 4."""
    traces = tuple(Trace(f"t{k}", "m", f"{k}+1={k + 1}", None, True) for k in range(5))
    sets = [
        TraceSet("q-ok", "1+1=?", "2", "s", traces[:2]),
        TraceSet("q-many", "p", "g", "s", traces),
    ]
    path = tmp_path / "many.parquet"
    write_trace_sets(path, sets)
    return path


def test_train_with_more_traces_than_tags_exits_2_before_ray(tmp_path):
    """M > N under the default data.too_many_traces=error, from the real entrypoint: the data
    is tokenized on the driver (tokenizer and tags, no model) before Ray starts."""
    path = many_traces_file(tmp_path)
    out = tmp_path / "train_out"
    before = earlier_outputs(out)
    done = run_entrypoint(
        "workflows.train", f"data.train_path={path}", f"train.output_dir={out}", "name=m-gt-n",
        cwd=tmp_path,
    )  # fmt: skip
    line = error_line(done)
    assert f"trace set {str(path)!r}, row 1 (question_id='q-many')" in line
    assert "field 'traces' has 5 usable traces but forking.num_tags=4" in line
    assert snapshot(out) == before


def test_train_with_an_overlong_trace_under_overlong_error_exits_2_before_ray(tmp_path):
    path = tmp_path / "long.parquet"
    long_trace = Trace("t0", "m", "1+1=2 " * 60, None, True)  # 360 characters > 256 tokens
    write_trace_sets(path, [TraceSet("q-long", "1+1=?", "2", "s", (long_trace,))])
    done = run_entrypoint(
        "workflows.train", f"data.train_path={path}", "data.overlong=error",
        f"train.output_dir={tmp_path / 'out'}", cwd=tmp_path,
    )  # fmt: skip
    line = error_line(done)
    assert f"trace set {str(path)!r}, row 0 (question_id='q-long')" in line
    assert "field 'traces[0].text' makes a" in line and "data.max_seq_len=256" in line


def test_driver_check_prepares_data_with_the_forking_tags_added(tmp_path):
    """A trace that writes a tag's text counts it as one token, as on the workers: a sequence
    at exactly data.max_seq_len passes the driver's check, one token more fails it."""
    from ssft.train.setup import check_training_data

    cfg = tiny_test()
    cfg.data.overlong = "error"
    prompt = "1+1=?"
    prompt_len = len(format_prompt(
        build_char_tokenizer(), prompt, use_chat_template=cfg.data.use_chat_template,
        prompt_template=cfg.data.prompt_template,
    ))  # fmt: skip
    # prompt + tag + trace + end-of-turn == max_seq_len, with "<think1>" one token of the trace
    filler = "x" * (cfg.data.max_seq_len - prompt_len - 1 - 1 - 1)
    for extra, fits in (("", True), ("y", False)):
        path = tmp_path / f"tagged{extra}.parquet"
        trace = Trace("t0", "m", "<think1>" + filler + extra, None, True)
        write_trace_sets(path, [TraceSet("q", prompt, "2", "s", (trace,))])
        cfg.data.train_path = str(path)
        if fits:
            assert check_training_data(cfg).startswith("sha256:")
        else:
            with pytest.raises(InputError, match=r"over data\.max_seq_len=256"):
                check_training_data(cfg)


def test_sweep_with_more_traces_than_a_grid_points_tags_exits_2_before_ray(tmp_path):
    """The sweep checks its data once per (method, N) of the grid before Ray starts: N=4 fits
    this file's 3 traces, N=2 does not (with data.too_many_traces=error)."""
    path = tmp_path / "three.parquet"
    traces = tuple(Trace(f"t{k}", "m", f"{k}+1={k + 1}", None, True) for k in range(3))
    write_trace_sets(path, [TraceSet("q-three", "p", "g", "s", traces)])
    out = tmp_path / "sweeps"
    before = earlier_outputs(out)
    done = run_entrypoint(
        "workflows.sweep", f"data.train_path={path}", "data.too_many_traces=error",
        "sweep.num_tags=4,2", "sweep.costs=mean_nll", "sweep.prefixes=none", "sweep.baselines=",
        f"sweep.output_dir={out}", cwd=tmp_path,
        config=ROOT / "workflows" / "configs" / "sweep_tiny.yaml",
    )  # fmt: skip
    line = error_line(done)
    assert f"trace set {str(path)!r}, row 0 (question_id='q-three')" in line
    assert "field 'traces' has 3 usable traces but forking.num_tags=2" in line
    assert snapshot(out) == before


# ---- the outside corpus's cases (issue: reliability defects) ---------------------------------


def test_a_number_of_tags_past_the_cap_exits_2_in_every_entrypoint(tmp_path):
    for module in ("workflows.train", "workflows.build_traces"):
        line = error_line(run_entrypoint(module, "forking.num_tags=100000", cwd=tmp_path))
        assert "forking.num_tags=100000: must be at most 1024" in line


def test_a_key_given_twice_on_the_command_line_exits_2(tmp_path):
    line = error_line(run_entrypoint("workflows.train", "train.epochs=2", "train.epochs=3",
                                     cwd=tmp_path))  # fmt: skip
    assert "override 'train.epochs=...' is given twice" in line


def test_a_yaml_alias_bomb_is_refused_in_a_short_line(tmp_path):
    levels = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("preset: tiny_test\n" + "\n".join(levels) + "\ntrain:\n  lr: *a8\n")
    line = error_line(run_entrypoint("workflows.train", cwd=tmp_path, config=bomb))
    assert "bomb.yaml" in line and "alias *a0 is not allowed" in line and len(line) < 600


def test_an_unknown_preset_names_the_config_file(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("preset: tiny_cpuu\n")
    line = error_line(run_entrypoint("workflows.train", cwd=tmp_path, config=config))
    assert "preset='tiny_cpuu': unknown preset" in line and "mine.yaml" in line


def test_compare_on_a_missing_or_broken_folder_exits_2_naming_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": "sqlite:///x.db"}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    for folder, what in ((tmp_path / "nowhere", "does not exist"),
                         (broken, "is not an evaluation's metrics file")):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "workflows.compare", str(folder), "--out", str(tmp_path / "o")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        line = error_line(done)
        assert str(folder.name) in line and what in line


@pytest.mark.slow
def test_a_teacher_refusing_the_key_stops_the_build_at_once_in_one_line(tmp_path, monkeypatch):
    """401 is not worth a retry: no Ray task retry, no traceback, the key nowhere."""
    wrong = "sk-wrong-0123456789abcdef0123"
    monkeypatch.setenv(API_KEY_ENV, wrong)
    chat = ChatServer(mode="canned")
    chat.expected_key = "sk-the-right-one-987654321"
    config = tmp_path / "build.yaml"
    config.write_text(
        "preset: tiny_test\nbuild:\n  num_questions: 6\n  questions_per_shard: 2\n"
        f"  output_dir: {tmp_path / 'traces'}\n  teachers:\n"
        f"    - {{name: api, kind: openai, model: tiny, base_url: '{chat.base_url}',"
        f" api_key_env: {API_KEY_ENV}, samples_per_question: 1, batch_size: 1}}\n"
    )
    try:
        done = run_entrypoint("workflows.build_traces", cwd=tmp_path, config=config)
    finally:
        chat.stop()
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and wrong not in done.stdout + done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "teacher 'api'" in line and chat.base_url in line and "HTTP 401" in line
    assert f"${API_KEY_ENV}" in line
    # Three shards of 2 questions, one request at a time per shard: at most one request per
    # shard that started before the first refusal came back; Ray retried none.
    assert len(chat.requests) <= 3


@pytest.mark.slow
def test_copies_of_a_trace_are_trained_once_through_the_entrypoint(tmp_path):
    """Three identical texts (whitespace aside) under distinct trace ids: one is trained, the
    two copies are counted as ``duplicate`` in the training's data line."""
    copies = (
        Trace("c0", "m", "x = 7", "7", True),
        Trace("c1", "m", "x  =\n7", "7", True),
        Trace("c2", "m", "x = 7", "7", True),
        Trace("d", "m", "seven: x = 7", "7", True),
    )
    path = tmp_path / "copies.parquet"
    sets = make_sets()
    write_trace_sets(path, [sets[0], sets[2], TraceSet("q-copies", "p", "7", "s", copies)])
    done = run_entrypoint(
        "workflows.train", f"data.train_path={path}", f"train.output_dir={tmp_path / 'out'}",
        "name=copies", "train.epochs=1", "tag_selection.validation_questions=0", cwd=tmp_path,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    [line] = [x for x in out.splitlines() if "[train] ssft: kept" in x]
    assert "kept 5/8 traces of 3/3 questions; dropped: duplicate=2, incorrect=1" in line, line


def _strategy_build(tmp_path: Path, error_rate: float, samples: int, questions: int) -> Path:
    config = tmp_path / "build.yaml"
    config.write_text(
        f"preset: tiny_test\nbuild:\n  num_questions: {questions}\n  questions_per_shard: 4\n"
        f"  output_dir: {tmp_path / 'traces'}\n  teachers:\n"
        f"    - {{name: sloppy, kind: strategy, strategy: column, error_rate: {error_rate},"
        f" samples_per_question: {samples}}}\n"
    )
    return config


def test_a_build_without_any_trace_exits_2_with_the_reasons_and_writes_no_trace_set(tmp_path):
    """Nothing to train on is an error, not an empty file; every rejected sample is kept."""
    config = _strategy_build(tmp_path, error_rate=1.0, samples=2, questions=6)
    done = run_entrypoint("workflows.build_traces", cwd=tmp_path, config=config)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    message = done.stderr[done.stderr.index("error: ") :]
    assert "the build gave no trace for any of its 6 questions" in message
    assert "sloppy: 12 sampled, 0 graded correct (0.0%), 0 kept" in message
    assert "top reasons a question got no trace: '0 of 2 samples correct' x6" in message
    assert "answer_extraction" in message
    [build_dir] = (tmp_path / "traces").iterdir()
    assert not (build_dir / "trace_sets.parquet").exists()
    assert str(build_dir / "rejected_samples.parquet") in message
    rejected = pq.read_table(build_dir / "rejected_samples.parquet").to_pylist()
    assert len(rejected) == 12 and {r["reason"] for r in rejected} == {"incorrect"}
    assert {r["teacher"] for r in rejected} == {"sloppy"}
    assert {r["grading"] for r in rejected} == {"boxed"}
    assert all(r["parsed_answer"] and r["text"].endswith(f"\\boxed{{{r['parsed_answer']}}}")
               for r in rejected)  # fmt: skip
    assert len(json.loads((build_dir / "rejected_questions.json").read_text())) == 6


def test_a_packaged_student_never_materialized_stops_the_pipeline_before_the_build(tmp_path):
    """The pretrained-student preset on a machine without the model: one line, two commands."""
    missing = tmp_path / "models" / "smollm2-135m-instruct"
    done = run_entrypoint(
        "workflows.pipeline", f"model.name_or_path={missing}", cwd=tmp_path,
        config=ROOT / "workflows" / "configs" / "smollm2_known_modes.yaml",
    )  # fmt: skip
    line = error_line(done)
    assert f"model.name_or_path='{missing}': no such directory" in line
    assert f"materialize smollm2-135m-instruct --out {missing.parent}" in line
    assert not list(tmp_path.rglob("*.parquet"))  # stopped before building anything
