"""The trace-building stage end to end on an embedded Ray, with real MLflow (SQLite)."""

import json
from collections import Counter
from dataclasses import asdict, replace

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from ssft.config import parse_cli
from ssft.data import known_modes
from ssft.data.question_sources import load_questions
from ssft.data.trace_building import build_shard
from ssft.data.trace_set import read_trace_sets
from ssft.models import build_char_tokenizer, build_random_model
from tests.conftest import last_wins, tiny_model_config
from workflows.build_traces import run

pytestmark = pytest.mark.slow


def tiny_build(tmp_path, *extra):
    return parse_cli(
        [
            "--config",
            "tests/configs/tiny_test.yaml",
            *last_wins(
                f"build.output_dir={tmp_path / 'traces'}",
                "build.num_questions=24",
                "build.questions_per_shard=8",
                *extra,
            ),
        ]
    )


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_strategy_teachers_end_to_end_then_resume(ray_local, tmp_path, mlflow_uri, capsys):
    out = run(tiny_build(tmp_path))
    sets = read_trace_sets(out)
    summary = json.loads((out.parent / "summary.json").read_text())
    rejected = json.loads((out.parent / "rejected_questions.json").read_text())
    assert len(sets) + len(rejected) == 24 == summary["questions"]
    for s in sets:
        assert 1 <= len(s.traces) <= 4
        assert len({t.teacher for t in s.traces}) == len(s.traces)  # distinct teachers first
        for t in s.traces:
            assert t.correct and t.parsed_answer == s.gold_answer
            assert t.mode == t.teacher.removeprefix("strategy:")  # classifier agrees
            assert known_modes.classify(t.text) == t.mode
    # Every teacher sampled every question once; slips (error_rate 0.1) were filtered out.
    assert summary["samples_by_teacher"] == {t: 24 for t in summary["samples_by_teacher"]}
    assert summary["drops"]["incorrect"] == 96 - summary["traces"] - summary["drops"].get(
        "duplicate_exact", 0
    ) - summary["drops"].get("duplicate_near", 0) - summary["drops"].get("over_max", 0)

    # Every sample not kept is on disk with its reason; every kept one says how it was graded.
    rejected = pq.read_table(out.parent / "rejected_samples.parquet").to_pylist()
    assert Counter(r["reason"] for r in rejected) == +Counter(summary["drops"])
    assert len(rejected) + summary["traces"] == 96
    assert {t.grading for s in sets for t in s.traces} == {"boxed"}
    by_count = summary["questions_by_teacher_count"]
    assert sum(by_count.values()) == len(sets)
    assert sum(int(k) * n for k, n in by_count.items()) == summary["traces"]  # distinct teachers
    # One strategy teacher, one sample per question: nobody has 2 distinct traces of its own.
    assert set(summary["questions_2plus_by_teacher"].values()) == {0}

    client = MlflowClient(mlflow_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny-cpu"]
    (run_info,) = client.search_runs([experiment.experiment_id])
    assert run_info.data.tags["dataset_digest"] == summary["digest"]
    assert run_info.data.metrics["questions"] == 24
    assert 0.8 < run_info.data.metrics["teacher/strategy:round/accuracy"] <= 1.0
    assert run_info.data.params["build.num_questions"] == "24"
    artifacts = {f.path for f in client.list_artifacts(run_info.info.run_id, "traces")}
    assert {"traces/trace_sets.parquet", "traces/rejected_samples.parquet"} <= artifacts
    assert (
        run_info.data.metrics["teacher/strategy:round/kept"]
        == summary["kept_by_teacher"]["strategy:round"]
    )
    assert [f.path for f in client.list_artifacts(run_info.info.run_id, "plots")] == [
        "plots/traces_per_question.png"
    ]

    capsys.readouterr()
    again = run(tiny_build(tmp_path))
    assert "resuming: 3 of 3 shards already on disk" in capsys.readouterr().out
    assert again == out and read_trace_sets(again) == sets


def test_modes_come_from_the_question_source_not_from_the_build(tmp_path):
    """Ray-free: the same questions as a known_modes build and as a jsonl file build the same
    trace sets, labelled with strategies only under the known_modes source."""
    cfg = tiny_build(tmp_path, "build.num_questions=6")
    questions = load_questions(cfg.build)
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(asdict(q)) + "\n" for q in questions))
    as_file = tiny_build(tmp_path, "build.questions=jsonl", f"build.questions_path={path}")
    assert load_questions(as_file.build)[:6] == questions
    labelled, stats, rejected = build_shard(questions, cfg.build, cfg.seed)
    unlabelled, stats_file, rejected_file = build_shard(questions, as_file.build, cfg.seed)
    assert labelled and (stats.to_json(), rejected) == (stats_file.to_json(), rejected_file)
    for a, b in zip(labelled, unlabelled, strict=True):
        assert [t.mode for t in a.traces] == [known_modes.classify(t.text) for t in a.traces]
        assert {t.mode for t in b.traces} == {None}
        assert replace(a, traces=tuple(replace(t, mode=None) for t in a.traces)) == b


def test_crashed_and_raising_shards_are_retried_without_duplicates_or_gaps(
    ray_local, tmp_path, mlflow_uri
):
    clean = run(tiny_build(tmp_path / "clean"))
    died, raised = ray_local / "crash-shard-1", ray_local / "raise-shard-2"
    died.write_text("")  # shard 1's worker process dies (os._exit) on its first attempt
    raised.write_text("")  # shard 2's first attempt raises
    crashed = run(tiny_build(tmp_path / "crashed"))
    assert not died.exists() and not raised.exists()  # both first attempts really failed
    assert (
        json.loads((crashed.parent / "summary.json").read_text())["digest"]
        == json.loads((clean.parent / "summary.json").read_text())["digest"]
    )
    ids = [s.question_id for s in read_trace_sets(crashed)]
    rejected = [r["question_id"] for r in
                json.loads((crashed.parent / "rejected_questions.json").read_text())]  # fmt: skip
    assert len(ids) == len(set(ids)) and not set(ids) & set(rejected)
    assert len(ids) + len(rejected) == 24  # every question exactly once
    assert not list(crashed.parent.glob("**/.*tmp*"))  # no temp file left behind


def test_hf_teacher_in_ray_tasks(ray_local, tmp_path, mlflow_uri):
    """A tiny random-weight model loaded from a directory: it samples, grading rejects."""
    tok = build_char_tokenizer()
    model = build_random_model(tiny_model_config(), len(tok), tok)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    config = tmp_path / "build.yaml"
    config.write_text(
        "preset: tiny_test\n"
        "build:\n"
        "  num_questions: 6\n"
        f"  output_dir: {tmp_path / 'traces'}\n"
        "  teachers:\n"
        f"    - {{name: tiny-hf, kind: hf, model: {tmp_path / 'model'}, samples_per_question: 2,"
        " max_new_tokens: 12, temperature: 1.0}\n"
        "    - {name: strategy:split, kind: strategy, strategy: split, samples_per_question: 1}\n"
    )
    out = run(parse_cli(["--config", str(config)]))
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["samples_by_teacher"] == {"tiny-hf": 12, "strategy:split": 6}
    assert summary["correct_by_teacher"].get("tiny-hf", 0) == 0
    assert {t.teacher for s in read_trace_sets(out) for t in s.traces} == {"strategy:split"}


def test_champ_preset_writes_its_replay_file_then_builds_from_every_teacher(
    ray_local, tmp_path, mlflow_uri, capsys
):
    """One command: the replay file is written on first use; models, reference solutions and
    human verdicts all reach the trace set."""
    replay = tmp_path / "champ" / "replay.parquet"
    cfg = parse_cli(
        ["--config", "workflows/configs/champ.yaml", f"build.output_dir={tmp_path / 'traces'}",
         "build.num_questions=3", "build.questions_per_shard=3",
         f"build.teachers.champ.replay_path={replay}"]
    )  # fmt: skip
    out = run(cfg)
    assert f"writing CHAMP's transcripts to {replay}" in capsys.readouterr().out
    sets = read_trace_sets(out)
    assert len(sets) == 3  # every problem has its reference solution
    teachers = {t.teacher for s in sets for t in s.traces}
    assert "champ:human" in teachers and len(teachers) >= 3
    gradings = {t.grading for s in sets for t in s.traces}
    assert gradings <= {"human", "last_expression"} and "human" in gradings
    assert all(t.correct for s in sets for t in s.traces)
    # A rerun finds the file and does not rewrite it.
    mtime = replay.stat().st_mtime_ns
    capsys.readouterr()
    run(cfg)
    assert "writing CHAMP" not in capsys.readouterr().out and replay.stat().st_mtime_ns == mtime


def test_a_build_below_min_coverage_warns_with_the_figures_and_succeeds(
    ray_local, tmp_path, mlflow_uri, capsys, caplog
):
    config = tmp_path / "sloppy.yaml"
    config.write_text(
        "preset: tiny_test\nbuild:\n  num_questions: 12\n  questions_per_shard: 4\n"
        f"  output_dir: {tmp_path / 'traces'}\n  teachers:\n"
        "    - {name: sloppy, kind: strategy, strategy: column, error_rate: 0.8,"
        " samples_per_question: 1}\n"
    )
    with caplog.at_level("WARNING", logger="ssft.build_traces"):
        out = run(parse_cli(["--config", str(config)]))
    covered = json.loads((out.parent / "summary.json").read_text())["questions_with_traces"]
    assert 0 < covered < 6  # the seeded slips leave fewer than half the questions a trace
    assert len(read_trace_sets(out)) == covered
    assert (
        f"only {covered} of 12 questions ({100 * covered / 12:.0f}%) got a trace, below "
        "build.min_coverage=0.50" in caplog.text
    )
    assert f"sloppy: 12 sampled, {covered} graded correct" in capsys.readouterr().out
