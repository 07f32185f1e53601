"""What a person reads: the main job's console (each of our lines once, none of Ray's own
start-up and controller lines, no traceback in a run that succeeds, evaluation and validation
say how far they are) and the evaluation's samples as a table the MLflow UI shows."""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssft.eval.sampling import Progress
from ssft.report.eval import SAMPLE_TABLE, SAMPLE_TABLE_COLUMNS, log_eval
from ssft.tracking import start_run

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny_test.yaml"

# Ray's lines that a run which succeeds no longer prints (workflows/ray_runtime.py); each one
# came back with SSFT_RAY_LOGS=1.
RAY_CHATTER = (
    "Traceback",
    "repeated",  # Ray's log deduplication: "[repeated 6x across cluster]"
    "Ray deduplicates logs",
    "TrainController",  # "Requesting resources", "Started training worker group", ...
    "Requesting resources",
    "Started training worker group",
    "Setting up process group",
    "Checkpoint successfully created",
    "Reporting training result",  # the result-dict dump of every report
    "core_worker.cc",  # the preemption watcher's actor warning
    "Failed to query Ray Train Controller",
    "Found multiple active Ray instances",
    "Failed to send resource request",
    "View the dashboard at",
    "\x1b[",  # colour codes in a console that is no terminal
)
RAY_PREFIX = re.compile(r"^\(\S+ pid=\d+(?:, ip=\S+)?\) ")
STEP = re.compile(r"\[train (\S+)\] step (\d+)/(\d+) \|")
EVAL_PROGRESS = re.compile(
    r"\[eval\] \S+ \((sampled|greedy)\): \d+/\d+ \(question, tag\) pairs \| \d+s elapsed, "
    r"ETA \d+s$"
)
VALIDATION_PROGRESS = re.compile(
    r"\[train(?: \S+)?\] validation: \d+/\d+ \(question, tag\) pairs \| \d+s elapsed, ETA"
)


def test_progress_lines_say_how_far_and_never_at_the_end(capsys):
    meter = Progress("[eval] x (sampled)", 12, every_s=0)
    for _ in range(3):
        meter.advance(4)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("[eval] x (sampled): 4/12 (question, tag)")
    assert re.fullmatch(EVAL_PROGRESS, lines[1]) and "8/12" in lines[1]
    slow = Progress("[eval] y", 12, every_s=3600)  # within the interval: nothing
    silent = Progress(None, 12, every_s=0)  # no label: nothing
    for meter in (slow, silent):
        meter.advance(4)
    assert capsys.readouterr().out == ""


def test_the_evaluation_logs_its_samples_as_a_table_the_ui_shows(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # MlflowClient.load_table searches there
    rows = [
        {"question_id": f"q{i}", "question": f"What is {i} + 1?", "gold_answer": str(i + 1),
         "decoding": "sampled", "tag": f"<think{k}>", "sample_index": 0,
         "text": f"{i} plus one is {i + 1}", "num_tokens": 9, "parsed_answer": str(i + 1),
         "correct": True, "strategy": "column", "strategy_strict": "column", "teacher": None}
        for i in range(3) for k in (1, 2)
    ]  # fmt: skip
    metrics = {"pass1": 1.0, "pass1/<think1>": 1.0, "pass1/<think2>": 1.0, "pass@1": 1.0,
               "length_mean/<think1>": 9.0, "length_mean/<think2>": 9.0}  # fmt: skip
    out = tmp_path / "eval"
    out.mkdir()
    for name in ("samples.parquet", "tag_probabilities.parquet", "metrics.json"):
        (out / name).write_text("x")
    with start_run("exp", "eval-x", tracking_uri=uri, local_dir=out) as tracker:
        log_eval(tracker, out, rows, metrics, "x (ssft)")
    client = MlflowClient(uri)
    experiment = client.get_run(tracker.run_id).info.experiment_id
    table = client.load_table(experiment, SAMPLE_TABLE, run_ids=[tracker.run_id])
    # No row has a teacher (no teacher profiles): that column is left out.
    assert list(table.columns) == [c for c in SAMPLE_TABLE_COLUMNS if c != "teacher"]
    assert table["question"][2] == "What is 1 + 1?" and table["tag"][2] == "<think1>"
    assert table["text"][5] == "2 plus one is 3" and table["correct"].all()
    assert not (out / "unlogged.jsonl").exists()  # every call went through


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """The main job, small, in a subprocess as a user runs it: two trainings at once (whose
    step lines Ray's deduplication used to merge), held-out validation, evaluation with a
    progress line after every batch (SSFT_PROGRESS_EVERY_S=0)."""
    tmp = tmp_path_factory.mktemp("console")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SSFT_FAULT_DIR", "RAY_ADDRESS", "SSFT_RAY_LOGS", "RAY_DEDUP_LOGS")
    }
    env.update(MLFLOW_TRACKING_URI=uri, RAY_USAGE_STATS_ENABLED="0", SSFT_PROGRESS_EVERY_S="0",
               PYTHONPATH=str(REPO))  # fmt: skip
    args = [
        f"build.output_dir={tmp / 'traces'}", f"train.output_dir={tmp / 'train'}",
        f"eval.output_dir={tmp / 'eval'}", f"pipeline.output_dir={tmp / 'cmp'}",
        "build.num_questions=32", "train.epochs=1", "train.questions_per_step=6",
        "tag_selection.validation_questions=4", "eval.num_questions=4",
        "eval.samples_per_tag=1", "pipeline.methods=ssft,sft_mixed", "pipeline.max_concurrent=2",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "workflows.pipeline", "--config", str(TINY), *args],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    console = done.stdout + done.stderr
    (tmp / "console.txt").write_text(console)  # to read when a test fails
    assert done.returncode == 0, console[-4000:]
    return console, uri, tmp


@pytest.mark.slow
def test_every_training_step_is_printed_once(main_job):
    console, _, _ = main_job
    steps: dict[str, list[int]] = {}
    totals = {}
    for name, step, total in STEP.findall(console):
        steps.setdefault(name, []).append(int(step))
        totals[name] = int(total)
    assert len(steps) == 2, console[-4000:]
    for name, seen in steps.items():  # each once, in order, none merged away
        assert seen == list(range(1, totals[name] + 1)) and len(seen) >= 3, (name, seen)
    ours = [RAY_PREFIX.sub("", line) for line in console.splitlines()]
    ours = [line for line in ours if line.startswith(("[train", "[eval]", "[build]"))]
    assert [line for line, n in Counter(ours).items() if n > 1] == []


@pytest.mark.slow
def test_ray_chatter_and_tracebacks_stay_out_of_a_run_that_succeeds(main_job):
    console, _, _ = main_job
    found = {pattern: line for line in console.splitlines() for pattern in RAY_CHATTER
             if pattern in line}  # fmt: skip
    assert found == {}, found
    # One line of ours instead of Ray's start-up lines: where its dashboard and logs are.
    (started,) = [line for line in console.splitlines() if line.startswith("[ray] ")]
    assert "Started a local Ray instance (dashboard http://127.0.0.1:" in started
    assert "SSFT_RAY_LOGS=1" in started


@pytest.mark.slow
def test_evaluation_and_validation_say_how_far_they_are(main_job):
    console, _, _ = main_job
    lines = [RAY_PREFIX.sub("", line) for line in console.splitlines()]
    evals = [line for line in lines if EVAL_PROGRESS.search(line)]
    # SSFT's four tags over one batch of questions: a line after each tag but the last.
    assert sum("(sampled): " in line for line in evals) >= 3, console[-4000:]
    assert any(VALIDATION_PROGRESS.search(line) for line in lines), console[-4000:]


@pytest.mark.slow
def test_the_main_jobs_evaluations_have_a_sample_table(main_job):
    _, uri, tmp = main_job
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-cpu").experiment_id
    evals = client.search_runs([experiment], filter_string="tags.stage = 'eval'")
    assert len(evals) == 2
    for run in evals:
        logged = json.loads(run.data.tags["mlflow.loggedArtifacts"])
        assert {"path": SAMPLE_TABLE, "type": "table"} in logged  # the UI's table view
        path = client.download_artifacts(run.info.run_id, SAMPLE_TABLE, str(tmp))
        table = json.loads(Path(path).read_text())  # MLflow's format: columns, then data rows
        columns = table["columns"]
        # Every column but the attributed teacher, which a random model's texts may lack.
        assert set(SAMPLE_TABLE_COLUMNS) - set(columns) <= {"teacher"}
        assert columns == [c for c in SAMPLE_TABLE_COLUMNS if c in columns]
        assert len(table["data"]) >= 4 * 4  # 4 questions x 4 samples (+ greedy answers)
        row = dict(zip(columns, table["data"][0], strict=True))
        assert row["question"] and row["gold_answer"] and row["strategy"]
