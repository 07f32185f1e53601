"""The main job end to end on an embedded Ray: stages run once, then are reused."""

import importlib.metadata
import json
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssft.config import parse_cli
from ssft.tracking import read_run_record
from tests.conftest import last_wins
from workflows import evaluate
from workflows.pipeline import main, run

pytestmark = pytest.mark.slow


CONFIG = Path(__file__).resolve().parents[1] / "tests" / "configs" / "tiny_test.yaml"


def small(tmp_path, *extra):
    return parse_cli(small_args(*extra))


def small_args(*extra) -> list[str]:
    # RELATIVE output folders, as a user's defaults are: Ray Train workers run in another
    # directory, so the drivers must resolve them (the test runs from inside tmp_path).
    return [
        "--config", str(CONFIG), *last_wins(
            "build.output_dir=traces", "train.output_dir=train",
            "eval.output_dir=eval", "pipeline.output_dir=cmp",
            "build.num_questions=24", "train.epochs=1", "train.questions_per_step=8",
            "eval.num_questions=4", "eval.samples_per_tag=1", "pipeline.methods=ssft,sft_mixed",
            *extra,
        ),
    ]  # fmt: skip


def test_pipeline_runs_every_stage_then_reuses_them(ray_local, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    table = run(small(tmp_path))
    assert "| ssft | 1 |" in table and "| sft_mixed | 1 |" in table
    comparison = json.loads((tmp_path / "cmp" / "tiny-cpu" / "comparison.json").read_text())
    assert {r["method"] for r in comparison["runs"]} == {"ssft", "sft_mixed"}
    assert (tmp_path / "cmp" / "tiny-cpu" / "pass_at_k.png").stat().st_size > 0
    first = capsys.readouterr().out
    # Evaluation says how far it is as its tasks finish, not only when it is done.
    progress = r"\[eval\] \S+: task \d+ done \(\d+ questions\) \| 1/\d+ \| \d+s elapsed"
    assert re.search(progress, first)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-cpu")
    parent, trains = check_tree(client, experiment.experiment_id, tmp_path, first)
    assert "[pipeline] browse every run: mlflow ui --backend-store-uri" in first
    assert f"--artifacts-destination {tmp_path / 'mlartifacts'}" in first

    assert run(small(tmp_path)) == table  # nothing changed: every stage reused
    out = capsys.readouterr().out
    assert out.count("inputs unchanged, reusing") == 4
    assert "resuming: 1 of 1 shards already on disk" in out  # 24 questions, 32 per shard
    runs = client.search_runs([experiment.experiment_id])
    # the same config reopens its parent; the build ran again (a new child), nothing else
    assert [r.info.run_id for r in runs if r.data.tags["stage"] == "pipeline"] == [parent]
    assert sorted(r.data.tags["stage"] for r in runs) == [
        "build_traces", "build_traces", "eval", "eval", "pipeline", "train", "train"]  # fmt: skip
    assert client.get_run(parent).info.status == "FINISHED"

    run(small(tmp_path, "eval.samples_per_tag=2"))  # only the evaluations depend on this
    out = capsys.readouterr().out
    assert out.count("[pipeline] train") == 2 and out.count("[pipeline] eval") == 0
    # a changed config is a new parent: its evaluations are its children and link to the
    # (reused) training runs, which its description links too
    parents = client.search_runs([experiment.experiment_id], "tags.stage = 'pipeline'")
    [new] = [r for r in parents if r.info.run_id != parent]
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{new.info.run_id}'"
    )
    new_evals = [r for r in children if r.data.tags["stage"] == "eval"]
    assert len(new_evals) == 2 and {r.data.tags["ssft.train_run_id"] for r in new_evals} == trains
    assert all(run_id in new.data.tags["mlflow.note.content"] for run_id in trains)

    # An evaluation run alone has no parent and still finds the training run of its model.
    [final] = (tmp_path / "train").glob("tiny-cpu-ssft-s0-*/final_model")
    evaluate.run(small(tmp_path, f"eval.model_dir={final}", "name=alone"))
    [alone] = client.search_runs([experiment.experiment_id], "attributes.run_name = 'eval-alone'")
    assert "mlflow.parentRunId" not in alone.data.tags
    trained = client.get_run(alone.data.tags["ssft.train_run_id"])
    assert trained.info.run_id in trains and trained.info.run_name.startswith("ssft-n")

    # Models that did not learn their task: every result is written, and the job exits 1
    # saying so (the tiny test models are not meant to learn; tiny_test sets the floor null).
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(small_args("pipeline.require_pass1_above=0.99"))
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "error: no model learned its task: the best Pass@1 is" in err
    assert "pipeline.require_pass1_above=0.99" in err and "(seed 0)" in err
    failed = client.search_runs(
        [experiment.experiment_id], "tags.stage = 'pipeline' and attributes.status = 'FAILED'"
    )
    assert failed[0].data.tags["ssft.nothing_learned"].startswith("no model learned its task")
    assert len(failed) == 1 and "comparison/comparison.md" in {
        f.path for f in client.list_artifacts(failed[0].info.run_id, "comparison")}  # fmt: skip


def check_tree(client, experiment_id: str, tmp_path, log: str):
    """One parent run for the pipeline, every stage's run its child, each evaluation linked to
    its training run, durations as long as the stages' work, artifacts beside the store.
    Returns the parent's id and the training runs' ids."""
    runs = client.search_runs([experiment_id])
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags["stage"], []).append(r)
    assert sorted(by_stage) == ["build_traces", "eval", "pipeline", "train"]  # no compare run
    [parent] = by_stage["pipeline"]
    assert parent.info.run_name == "pipeline-tiny-cpu"
    assert "sft_mixed" in parent.data.params["pipeline.methods"]
    assert parent.data.params["eval.num_questions"] == "4"
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "comparison"} <= files
    compared = {f.path for f in client.list_artifacts(parent.info.run_id, "comparison")}
    assert "comparison/comparison.md" in compared and "comparison/pass_at_k.png" in compared
    assert "ssft/pass1" in parent.data.metrics
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["stage"] for r in children) == [
        "build_traces", "eval", "eval", "train", "train"]  # fmt: skip
    assert all("ray_job_id" not in r.data.tags for r in runs)  # not under `ray job submit`
    # Every run names the versions of the packages that computed it (and the git commit).
    versions = {f"version.{p}": importlib.metadata.version(p) for p in ("torch", "transformers")}
    assert all(versions.items() <= r.data.tags.items() for r in runs)

    trains = {r.info.run_id: r for r in by_stage["train"]}
    assert sorted(r.info.run_name for r in trains.values()) == ["sft_mixed-n4-s0", "ssft-n4-s0"]
    for r in trains.values():  # the full name (the resume key, the folder) is a tag
        assert r.data.tags["ssft.name"] == r.data.tags["ssft.run_key"]
        assert r.data.tags["ssft.name"].startswith(f"tiny-cpu-{r.data.tags['method']}-s0-")
        final = tmp_path / "train" / r.data.tags["ssft.name"] / "final_model"
        assert read_run_record(final)["run_id"] == r.info.run_id  # the model names its run
    elapsed = {}  # the stage's own log: seconds elapsed when each task finished
    for name, seconds in re.findall(r"\[eval\] (\S+): task \d+ done .*?\| (\d+)s elapsed", log):
        elapsed[name] = max(elapsed.get(name, 0), int(seconds))
    for ev in by_stage["eval"]:
        trained = trains[ev.data.tags["ssft.train_run_id"]]
        assert ev.info.run_name == f"eval-{trained.info.run_name}"
        assert trained.data.metrics["eval/pass1"] == ev.data.metrics["pass1"]
        assert trained.data.tags["ssft.eval_run_id"] == ev.info.run_id
        note = ev.data.tags["mlflow.note.content"]
        assert f"[{trained.info.run_name}](#/experiments/{experiment_id}/runs/" in note
        assert trained.info.run_id in note and trained.info.run_id in parent.data.tags[
            "mlflow.note.content"]  # fmt: skip
        # Open around the work: the run lasts at least as long as the stage measured and
        # logged (not a speed check: the same clock, read at both ends).
        duration = (ev.info.end_time - ev.info.start_time) / 1000
        assert ev.data.metrics["wall_time_s"] > 0
        assert duration >= ev.data.metrics["wall_time_s"] - 0.05
        assert duration >= elapsed[ev.data.tags["ssft.name"]] - 1  # log rounds to seconds
    [build] = by_stage["build_traces"]
    history = client.get_metric_history(build.info.run_id, "shards_done")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 1.0)]  # as shards finish
    assert (build.info.end_time - build.info.start_time) / 1000 >= (
        build.data.metrics["wall_time_s"] - 0.05)  # fmt: skip
    # Artifacts beside the store (tmp_path/mlflow.db), not in ./mlruns of the working dir.
    root = (tmp_path / "mlartifacts" / "tiny-cpu").as_uri()
    assert all(r.info.artifact_uri.startswith(root + "/") for r in runs)
    assert not (tmp_path / "mlruns").exists()
    return parent.info.run_id, set(trains)
