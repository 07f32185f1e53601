import logging

import pytest
from mlflow import MlflowClient

from ssft.tracking import NullTracker, default_tracking_uri, start_run


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_run_logs_everything_and_closes(uri, tmp_path, caplog):
    artifact = tmp_path / "table.txt"
    artifact.write_text("hello")
    with start_run("exp", "run-a", tracking_uri=uri, tags={"method": "ssft", "skip": None}) as t:
        t.log_params({"forking.num_tags": 4, "matching.prefix_tokens": None})
        t.log_metrics({"loss": 1.5, "tag usage[1]": 3}, step=2)
        with caplog.at_level(logging.WARNING):
            t.log_metrics({"tag usage[1]": 4}, step=3)
        t.log_artifact(artifact, "tables")
        t.log_text("a: 1\n", "config.yaml")
    run = MlflowClient(uri).get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run-a"
    assert run.data.params == {"forking.num_tags": "4", "matching.prefix_tokens": "null"}
    assert run.data.tags["method"] == "ssft" and "skip" not in run.data.tags
    assert run.data.metrics == {"loss": 1.5, "tag usage_1_": 4.0}
    history = MlflowClient(uri).get_metric_history(t.run_id, "tag usage_1_")
    assert [(m.step, m.value) for m in history] == [(2, 3.0), (3, 4.0)]
    files = {f.path for f in MlflowClient(uri).list_artifacts(t.run_id)}
    assert files == {"tables", "config.yaml"}


def test_failed_block_marks_run_failed_and_child_links_parent(uri):
    with start_run("exp", "parent", tracking_uri=uri) as parent:
        with (
            pytest.raises(RuntimeError),
            start_run("exp", "child", tracking_uri=uri, parent_run_id=parent.run_id) as child,
        ):
            raise RuntimeError("boom")
    client = MlflowClient(uri)
    assert client.get_run(child.run_id).info.status == "FAILED"
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_run(parent.run_id).info.status == "FINISHED"


def test_disabled_tracking_is_a_no_op(tmp_path):
    t = start_run("exp", "r", enabled=False, default_dir=tmp_path)
    assert isinstance(t, NullTracker) and t.run_id is None
    with t:
        t.log_metrics({"x": 1}, step=0)
    assert not (tmp_path / "mlflow.db").exists()


def test_default_uri_prefers_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert default_tracking_uri(tmp_path) == "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_resume_key_reopens_an_unfinished_run(uri):
    first = start_run("exp", "train-a", tracking_uri=uri, resume_key="train-a")
    first.log_metrics({"loss": 2.0}, step=1)  # the process dies here: never finished
    again = start_run("exp", "train-a", tracking_uri=uri, resume_key="train-a")
    assert again.run_id == first.run_id
    again.log_metrics({"loss": 1.0}, step=2)
    again.finish()
    fresh = start_run("exp", "train-a", tracking_uri=uri, resume_key="train-a")
    assert fresh.run_id != first.run_id  # a finished run is never reopened
    fresh.finish()
    history = MlflowClient(uri).get_metric_history(first.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]


def test_a_resumed_run_logs_each_replayed_step_once(uri):
    """A training resumed from its last checkpoint replays steps it had logged already."""
    first = start_run("exp", "train-b", tracking_uri=uri, resume_key="train-b")
    for step in (1, 2, 3, 4):
        first.log_metrics({"loss": 10.0 + step}, step=step)  # dies after step 4
    again = start_run("exp", "train-b", tracking_uri=uri, resume_key="train-b")
    for step in (3, 4, 5):  # resumed from the checkpoint of step 2
        again.log_metrics({"loss": 20.0 + step, "new": 1.0}, step=step)
    again.log_metrics({"validation": 0.5})  # a metric never logged before: logged
    again.finish()
    client = MlflowClient(uri)
    history = client.get_metric_history(first.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 11), (2, 12), (3, 13), (4, 14), (5, 25)]
    assert [m.step for m in client.get_metric_history(first.run_id, "new")] == [3, 4, 5]
    assert len(client.get_metric_history(first.run_id, "validation")) == 1


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_at_start_with_the_fix():
    from ssft.tracking import TrackingUnavailable, check_tracking_uri

    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(TrackingUnavailable) as info:
        check_tracking_uri(uri)
    message = str(info.value)
    assert f"MLflow tracking server at {uri} did not answer" in message
    assert "bash ops/local_services.sh start" in message and "MLFLOW_TRACKING_URI" in message
    with pytest.raises(TrackingUnavailable, match="did not answer"):
        start_run("exp", "r", tracking_uri=uri)


def test_sqlite_folder_that_cannot_be_created_fails_at_start(tmp_path):
    from ssft.tracking import TrackingUnavailable, check_tracking_uri

    (tmp_path / "file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'file' / 'runs' / 'mlflow.db'}"
    with pytest.raises(TrackingUnavailable, match=r"is not writable \(Not a directory\)"):
        check_tracking_uri(uri)
    check_tracking_uri(f"sqlite:///{tmp_path / 'ok' / 'mlflow.db'}")  # created on demand


def test_calls_after_the_server_is_gone_are_recorded_not_raised(tmp_path, capsys, caplog):
    import json

    from ssft.tracking import MLflowTracker

    uri = f"http://127.0.0.1:{closed_port()}"
    tracker = MLflowTracker(MlflowClient(uri), "run-123", uri, local_dir=tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="ssft.tracking"), tracker:
        tracker.log_metrics({"loss": 1.5}, step=7)  # fails (after MLflow's short retries)
        tracker.log_params({"train.lr": 0.1})  # skipped at once: the server is known down
        tracker.log_text("a: 1\n", "config.yaml")
        tracker.log_artifact(tmp_path, "folder")
    records = [
        json.loads(line) for line in (tmp_path / "out" / "unlogged.jsonl").read_text().splitlines()
    ]
    calls = [r["call"] for r in records]
    assert calls == ["log_metrics", "log_params", "log_text", "log_artifact", "set_tag",
                     "set_terminated"]  # fmt: skip
    assert records[0]["metrics"] == {"loss": 1.5} and records[0]["step"] == 7
    assert "MlflowException" in records[0]["error"] or "Connection" in records[0]["error"]
    assert records[1]["params"] == {"train.lr": "0.1"}
    assert records[1]["error"] == "not sent: the tracking server was unreachable"
    assert (tmp_path / "out" / "unlogged" / "config.yaml").read_text() == "a: 1\n"
    assert records[3]["local_path"] == str(tmp_path)
    assert records[5]["status"] == "FINISHED"
    assert sum("not logged" in r.message for r in caplog.records) == 6 + 1  # + the summary
    out = capsys.readouterr().out
    assert "6 call(s) were not logged" in out and str(tmp_path / "out" / "unlogged.jsonl") in out


def test_browse_hint_points_at_the_experiments_runs_page(uri, tmp_path):
    from mlflow import MlflowClient

    from ssft.tracking import browse_hint

    experiment_id = MlflowClient(uri).create_experiment("hinted")
    hint = browse_hint(uri, "hinted")
    assert hint == (f"mlflow ui --backend-store-uri {uri} --artifacts-destination "
                    f"{tmp_path / 'mlartifacts'}  then open "
                    f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs")  # fmt: skip
    assert browse_hint(uri, "no-such-experiment").endswith("/#/experiments")
    # a server that does not answer still gets a usable hint, quickly enough to never block
    assert browse_hint("http://127.0.0.1:9/", "x") == "open http://127.0.0.1:9/#/experiments"


def test_a_sqlite_stores_artifacts_live_beside_it_and_older_experiments_keep_theirs(
    uri, tmp_path, monkeypatch
):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # MLflow's own default would be ./mlruns of this folder
    (cwd / "a.txt").write_text("a")
    with start_run("tiny-cpu", "r", tracking_uri=uri) as fresh:
        fresh.log_artifact(cwd / "a.txt", "files")
    with start_run("odd name/1", "r", tracking_uri=uri) as odd:
        odd.log_text("b", "b.txt")
    old_root = tmp_path / "old-root"
    MlflowClient(uri).create_experiment("made-earlier", artifact_location=old_root.as_uri())
    with start_run("made-earlier", "r", tracking_uri=uri) as old:
        old.log_text("c", "c.txt")
    client = MlflowClient(uri)
    root = tmp_path / "mlartifacts"
    assert client.get_run(fresh.run_id).info.artifact_uri == (
        f"{(root / 'tiny-cpu').as_uri()}/{fresh.run_id}/artifacts"
    )
    assert (root / "tiny-cpu" / fresh.run_id / "artifacts" / "files" / "a.txt").read_text() == "a"
    [odd_folder] = [p for p in root.iterdir() if p.name.startswith("odd_name_1-")]
    assert (odd_folder / odd.run_id / "artifacts" / "b.txt").exists()
    assert (old_root / old.run_id / "artifacts" / "c.txt").read_text() == "c"
    assert sorted(p.name for p in cwd.iterdir()) == ["a.txt"]  # no mlruns/ here
    assert {p.name for p in tmp_path.iterdir()} == {"mlflow.db", "mlartifacts", "old-root",
                                                    "elsewhere"}  # fmt: skip


def test_runs_find_each_other_by_record_or_key_and_log_on_each_other(uri, tmp_path):
    from ssft.tracking import RUN_RECORD, read_run_record, run_link, write_run_record

    model = tmp_path / "train" / "my-ssft" / "final_model"
    model.mkdir(parents=True)
    with start_run("exp", "ssft-n4-s0", tracking_uri=uri, resume_key="my-ssft") as trained:
        write_run_record(model, trained)
    record = read_run_record(model)
    assert record["run_id"] == trained.run_id and record["tracking_uri"] == uri
    assert record["experiment_id"] == trained.experiment_id
    assert read_run_record(tmp_path) == {}  # no record: nothing, no error
    with start_run("exp", "eval-ssft-n4-s0", tracking_uri=uri) as evaluation:
        assert evaluation.find_run(record["run_id"]).info.run_name == "ssft-n4-s0"
        # a record from another store: found by the resume key instead
        assert evaluation.find_run("0" * 32, "my-ssft").info.run_id == trained.run_id
        assert evaluation.find_run(None, "no-such-key") is None
        evaluation.log_to_run(trained.run_id, {"eval/pass1": 0.75, "skip": None},
                              {"ssft.eval_run_id": evaluation.run_id})  # fmt: skip
    run = MlflowClient(uri).get_run(trained.run_id)
    assert run.data.metrics == {"eval/pass1": 0.75}
    assert run.data.tags["ssft.eval_run_id"] == evaluation.run_id
    assert run_link("3", "abc") == "#/experiments/3/runs/abc"
    offline = NullTracker()
    write_run_record(tmp_path, offline)  # a run without an id writes no record
    assert not (tmp_path / RUN_RECORD).exists() and offline.find_run("x", "y") is None


def test_log_table_is_a_table_mlflow_reads_back_and_is_kept_locally_when_mlflow_is_down(
    uri, tmp_path, monkeypatch
):
    import json

    import pandas as pd

    from ssft.tracking import MLflowTracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # load_table searches the default store
    long = "step " * 1000 + "so the answer is 42"  # 5,019 characters
    data = {"question_id": ["q1", "q2"], "text": ["short", long], "correct": [True, False]}
    with start_run("exp", "tables", tracking_uri=uri, local_dir=tmp_path / "run") as t:
        t.log_table(data, "eval/samples.json")
        t.log_table({"a": [1], "b": [2, 3]}, "eval/bad.json")  # unequal columns: a warning
    client = MlflowClient(uri)
    experiment = client.get_run(t.run_id).info.experiment_id
    table = client.load_table(experiment, "eval/samples.json", run_ids=[t.run_id])
    assert list(table.columns) == ["question_id", "text", "correct"]
    assert table["text"][0] == "short" and table["correct"].tolist() == [True, False]
    cut = table["text"][1]  # its start and its end (where the answer is) around a marker
    assert len(cut) < 2100 and cut.startswith("step step") and cut.endswith("answer is 42")
    assert f"[... {len(long) - 2000} characters cut ...]" in cut
    assert {"path": "eval/samples.json", "type": "table"} in json.loads(
        client.get_run(t.run_id).data.tags["mlflow.loggedArtifacts"]
    )  # what makes the UI show it as a table
    assert "bad.json" not in {f.path for f in client.list_artifacts(t.run_id, "eval")}

    offline = MLflowTracker(None, None, uri, local_dir=tmp_path / "out")  # MLflow was down
    offline.log_table(pd.DataFrame(data), "eval/samples.json")
    saved = tmp_path / "out" / "unlogged" / "eval" / "samples.json"
    frame = pd.read_json(saved, orient="split")
    assert frame["question_id"].tolist() == ["q1", "q2"] and frame["text"][1] == cut
    (record,) = [json.loads(x) for x in (tmp_path / "out" / "unlogged.jsonl").open()]
    assert record["call"] == "log_table" and record["saved_to"] == str(saved)
    assert record["rows"] == 2
    NullTracker().log_table(data, "eval/samples.json")  # no-op
