"""The N x matching-cost sweep: its grid and report (fast), and a real Tune sweep (slow)."""

from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from ssft.config import ConfigError, SweepConfig, load_config
from ssft.method.table import METHODS
from ssft.report.sweep import (
    EVAL_COLUMNS,
    RANK_METRICS,
    apply_variant,
    best_row,
    grid,
    rank_rows,
    report_to_parent,
    summary_markdown,
    summary_rows,
    write_summary,
)

CONFIG = "workflows/configs/sweep_tiny.yaml"
# 48 questions (the known_modes_traces fixture) / 8 per step = 6 steps, a checkpoint every 2.
SHORT = ["train.epochs=1", "train.questions_per_step=8", "train.checkpoint_every=2",
         "train.warmup_steps=0"]  # fmt: skip
# One SSFT trial (N = 4) and the SFT-mixed baseline, one at a time (grid order: SSFT first).
ONE_N4_AND_SFT = ["sweep.num_tags=4", "sweep.costs=mean_nll", "sweep.prefixes=none",
                  "sweep.baselines=sft_mixed", "sweep.max_concurrent_trials=1"]  # fmt: skip


def test_grid_crosses_n_cost_prefix_and_adds_each_baseline_once():
    base = load_config(CONFIG)
    n_base = base.forking.num_tags
    variants = grid([2, 4], ["mean_nll", "sum_nll"], [None, 16], ["sft_mixed", "random"], base)
    labels = [v["label"] for v in variants]
    assert len(labels) == 2 * 2 * 2 + 2 and len(set(labels)) == len(labels)
    assert labels[0] == "ssft-n2-mean_nll-Lall" and "ssft-n4-sum_nll-L16" in labels
    assert labels[-2:] == ["sft_mixed", f"random-n{base.forking.num_tags}"]
    cfg = apply_variant(base, variants[3], "trial")
    assert (cfg.name, cfg.method, cfg.forking.num_tags) == ("trial", "ssft", 2)
    assert (cfg.matching.cost, cfg.matching.prefix_tokens) == ("sum_nll", 16)
    assert base.forking.num_tags == n_base  # the base config is left as it was


def test_grid_settings_parse_and_reject_bad_values():
    """The sweep section's lists are typed and checked when the config loads (every rule:
    tests/test_config.py); the grid takes them as they are."""
    cfg = load_config(CONFIG, ["sweep.num_tags=2, 4,8", "sweep.prefixes=None,16",
                               "sweep.baselines="])  # fmt: skip
    sw = cfg.sweep
    assert (sw.num_tags, sw.prefixes, sw.baselines) == ((2, 4, 8), (None, 16), ())
    for bad in ("0,2", "2,2", "two", ""):
        with pytest.raises(ConfigError, match=r"sweep\.num_tags"):
            load_config(CONFIG, [f"sweep.num_tags={bad}"])
    with pytest.raises(ConfigError, match="mean_nll"):
        load_config(CONFIG, ["sweep.costs=mean_nll,l2"])
    with pytest.raises(ConfigError, match=r"sweep\.prefixes"):
        load_config(CONFIG, ["sweep.prefixes=none,all"])


def _row(label, method, n, status="ok", loss=None, **figures):
    """A summary row as ``summary_rows`` makes it (a baseline's cost and prefix: n/a)."""
    cost, prefix = "n/a", "n/a"
    if method == "ssft":
        cost, prefix = label.split("-")[2], None if label.endswith("Lall") else 16
    return {"label": label, "method": method, "num_tags": n, "cost": cost,
            "prefix_tokens": prefix, "status": status, "final_loss": loss,
            "steps": 6 if loss is not None else None, **figures}  # fmt: skip


def test_summary_table_and_plot(tmp_path):
    rows = [
        _row("ssft-n2-mean_nll-Lall", "ssft", 2, loss=1.5),
        _row("ssft-n4-mean_nll-Lall", "ssft", 4, loss=1.2),
        {**_row("ssft-n4-sum_nll-L16", "ssft", 4, "error"), "error": "worker died"},
        _row("sft_mixed", "sft_mixed", 4, loss=1.4),
    ]
    paths = write_summary(rows, tmp_path)  # no evaluation: ranked by the final loss
    assert [p.name for p in paths] == ["summary.parquet", "summary.md", "loss_vs_n.png"]
    table = pq.read_table(paths[0]).to_pylist()
    assert [r["label"] for r in table] == [r["label"] for r in rows]  # grid order, with ranks
    assert [r["rank"] for r in table] == [3, 1, None, 2]
    assert table[2]["status"] == "error" and table[2]["prefix_tokens"] == "16"
    assert table[0]["prefix_tokens"] == "all" and table[0]["pass1"] is None
    assert (table[3]["cost"], table[3]["prefix_tokens"]) == ("n/a", "n/a")
    md = summary_markdown(rows).splitlines()
    assert md[0].startswith("| rank | label |") and "pass1" not in md[0]  # no figures: no column
    assert md[2].startswith("| 1 | ssft-n4-mean_nll-Lall |") and "worker died" in md[-1]
    assert "| sft_mixed | sft_mixed | 4 | n/a | n/a | ok |" in md[3]
    assert paths[2].stat().st_size > 1000


def test_summary_ranks_by_the_chosen_metric_ties_and_missing_values_last(tmp_path):
    rows = [
        _row("ssft-n2-mean_nll-Lall", "ssft", 2, loss=1.5, pass1=0.5, cons_native=0.6,
             mode_purity=0.9, tag_accuracy_min=0.1),
        # Same pass1 as n2: the lower final loss goes first.
        _row("ssft-n4-mean_nll-Lall", "ssft", 4, loss=1.2, pass1=0.5, cons_native=0.7,
             mode_purity=0.8, tag_accuracy_min=0.3),
        _row("ssft-n8-mean_nll-Lall", "ssft", 8, loss=1.1, pass1=float("nan")),
        _row("ssft-n6-mean_nll-Lall", "ssft", 6, "error"),
        {**_row("sft_mixed", "sft_mixed", 4, "eval_error", loss=1.0), "error": "OOM"},
        _row("random-n4", "random", 4, loss=1.3, pass1=0.75, cons_native=0.5),
    ]  # fmt: skip
    ranks = {r["label"]: r["rank"] for r in rank_rows(rows, "pass1")}
    assert ranks == {"random-n4": 1, "ssft-n4-mean_nll-Lall": 2, "ssft-n2-mean_nll-Lall": 3,
                     "ssft-n8-mean_nll-Lall": None, "ssft-n6-mean_nll-Lall": None,
                     "sft_mixed": None}  # fmt: skip
    # Lower is better for the loss only; an eval_error row keeps its training result.
    by_loss = {r["label"]: r["rank"] for r in rank_rows(rows, "final_loss")}
    assert by_loss["sft_mixed"] == 1 and by_loss["ssft-n2-mean_nll-Lall"] == 5
    assert by_loss["ssft-n6-mean_nll-Lall"] is None
    assert best_row(rows, "tag_accuracy_min")["label"] == "ssft-n4-mean_nll-Lall"
    assert best_row(rows, "mode_purity")["label"] == "ssft-n2-mean_nll-Lall"
    assert best_row(rows, "per_question_purity") is None  # nobody has it
    md = summary_markdown(rows, "cons_native").splitlines()
    header = [c.strip() for c in md[0].strip("|").split("|")]
    # The ranked metric right after the status, the other figures any row has beside it.
    assert header[6:12] == ["status", "cons_native", "pass1", "mode_purity", "tag_accuracy_min",
                            "final_loss"]  # fmt: skip
    order = [line.split("|")[2].strip() for line in md[2:]]
    assert order[:3] == ["ssft-n4-mean_nll-Lall", "ssft-n2-mean_nll-Lall", "random-n4"]
    # Without the metric: trained rows (the NaN, the failed evaluation), then the failure.
    assert order[3:] == ["sft_mixed", "ssft-n8-mean_nll-Lall", "ssft-n6-mean_nll-Lall"]
    paths = write_summary(rows, tmp_path, "cons_native")
    assert [p.name for p in paths][2:] == ["loss_vs_n.png", "cons_native_vs_n.png"]
    assert set(RANK_METRICS) == {*EVAL_COLUMNS, "final_loss"} == set(SweepConfig.RANK_METRICS)
    with pytest.raises(ValueError, match="unknown sweep metric"):
        rank_rows(rows, "loss")


def test_rows_show_n_a_for_what_a_baseline_does_not_use_and_the_parent_the_best(tmp_path):
    """summary_rows over Tune-shaped results and a real MLflow parent: the method table says
    which methods have no matching cost; an evaluation that failed is eval_error."""
    from mlflow import MlflowClient

    from ssft.tracking import start_run

    base = load_config(CONFIG)
    variants = {v["label"]: v for v in grid([4], ["sum_nll"], [16], ["sft_mixed", "random",
                                                                     "single"], base)}  # fmt: skip
    n = base.forking.num_tags
    results = [
        SimpleNamespace(config={"variant": variants["ssft-n4-sum_nll-L16"]}, error=None,
                        metrics={"loss": 1.2, "step": 6, "eval_status": "ok", "eval/pass1": 0.5}),
        SimpleNamespace(config={"variant": variants["sft_mixed"]}, error=None,
                        metrics={"loss": 1.1, "step": 6, "eval_status": "error",
                                 "eval_error": "ValueError: no samples"}),
        SimpleNamespace(config={"variant": variants[f"random-n{n}"]}, error=None,
                        metrics={"loss": 1.3, "step": 6, "eval_status": "ok", "eval/pass1": 0.75}),
        SimpleNamespace(config={"variant": variants["single"]}, error=RuntimeError("died"),
                        metrics={}),
    ]  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_run("sweep-rows", "sweep", tracking_uri=uri, local_dir=tmp_path)
    # An evaluation's run that a dead worker left open: closed, and no trial's run.
    orphan = start_run("sweep-rows", "eval-x", tracking_uri=uri, parent_run_id=parent.run_id,
                       tags={"stage": "eval"}, local_dir=tmp_path)  # fmt: skip
    rows = {r["label"]: r for r in rank_rows(summary_rows(results, parent), "pass1")}
    assert MlflowClient(uri).get_run(orphan.run_id).info.status == "FAILED"
    assert all(r["mlflow_run_id"] is None for r in rows.values())
    for label, row in rows.items():
        applies = METHODS[row["method"]].needs_cost
        assert (row["cost"] == "n/a") == (row["prefix_tokens"] == "n/a") == (not applies), label
    assert (rows["ssft-n4-sum_nll-L16"]["cost"], rows["ssft-n4-sum_nll-L16"]["prefix_tokens"]) == (
        "sum_nll", 16)  # fmt: skip
    assert rows["sft_mixed"]["status"] == "eval_error" and rows["sft_mixed"]["final_loss"] == 1.1
    assert rows["sft_mixed"]["error"] == "ValueError: no samples"
    assert rows["single"]["status"] == "error" and rows["single"]["error"] == "RuntimeError: died"
    assert [rows[k]["rank"] for k in (f"random-n{n}", "ssft-n4-sum_nll-L16")] == [1, 2]
    report_to_parent(parent, list(rows.values()), tmp_path / "summary", "pass1")
    run = MlflowClient(uri).get_run(parent.run_id)
    tags = run.data.tags
    assert (tags["sweep.rank_by"], tags["sweep.best"]) == ("pass1", f"random-n{n}")
    assert run.data.metrics["best_pass1"] == 0.75 and run.info.status == "FAILED"  # `single`
    assert (tags["sweep.eval_error"], tags["sweep.eval_failed"]) == ("1", "sft_mixed")
    assert tags["sweep.eval_failure.sft_mixed"] == "ValueError: no samples"
    assert tags["sweep.failed"] == "single" and tags["sweep.error"] == "1"


@pytest.mark.slow
def test_crashed_trial_is_recorded_and_a_rerun_resumes_it(
    ray_local, known_modes_traces, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    from workflows.sweep import run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # One trial at a time, so the first trial (grid order) is the one whose rank 0 dies before
    # step 5, after its step-2 and step-4 checkpoints (train.checkpoint_every=2).
    cfg = load_config(CONFIG, [
        f"data.train_path={known_modes_traces}", "name=sweep-crash", *SHORT, *ONE_N4_AND_SFT,
        f"sweep.output_dir={tmp_path / 'sweeps'}",
    ])  # fmt: skip
    (ray_local / "crash-train-step-4").write_text("")
    first = {r["label"]: r for r in run(cfg)}
    assert not (ray_local / "crash-train-step-4").exists()
    assert first["ssft-n4-mean_nll-Lall"]["status"] == "error", first
    assert first["sft_mixed"]["status"] == "ok", first
    client = MlflowClient(uri)
    crashed_id = first["ssft-n4-mean_nll-Lall"]["mlflow_run_id"]
    crashed = client.get_run(crashed_id)
    parent_id = crashed.data.tags["mlflow.parentRunId"]
    assert crashed.info.status == "FAILED"  # closed by the driver: its process died
    parent = client.get_run(parent_id)
    assert parent.info.status == "FAILED" and parent.data.tags["sweep.error"] == "1"

    second = {r["label"]: r for r in run(cfg)}  # same name: Tune restores the sweep
    assert {r["status"] for r in second.values()} == {"ok"}, second
    assert {k: r["mlflow_run_id"] for k, r in second.items()} == {
        k: r["mlflow_run_id"] for k, r in first.items()
    }
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.ok"] == "2"
    # Resumed from the step-4 checkpoint in the same MLflow run: every step logged once.
    history = client.get_metric_history(crashed_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 7))


def test_cli_reads_the_grid_from_the_sweep_section():
    from ssft.config import parse_cli
    from workflows.sweep import _scheduler

    argv = ["--config", CONFIG, "sweep.num_tags=2,4", "sweep.baselines=", "sweep.asha=true",
            "train.lr=0.01"]  # fmt: skip
    cfg = parse_cli(argv + SHORT)
    sw = cfg.sweep
    assert (sw.num_tags, sw.baselines, sw.asha) == ((2, 4), (), True)
    assert sw.costs == ("mean_nll", "sum_nll") and sw.prefixes == (None, 16)
    assert cfg.train.lr == 0.01 and cfg.name == "sweep-tiny"
    asha = _scheduler(cfg, n_questions=48)
    assert asha is not None and asha._max_t == 3
    with pytest.raises(ConfigError, match=r"sweep\.max_concurrent_trials"):
        parse_cli(["--config", CONFIG, "sweep.max_concurrent_trials=0"])


@pytest.mark.slow
def test_trial_crashing_on_every_attempt_fails_alone_and_the_parent_records_it(
    ray_local, known_modes_traces, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    from workflows.sweep import run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # One restart allowed per trial: the SSFT trial's rank 0 dies at step 3 on both attempts
    # (the restart resumes from the step-2 checkpoint and reaches step 3 again).
    cfg = load_config(CONFIG, [f"data.train_path={known_modes_traces}", "name=sweep-always",
                               "train.max_failures=1", *SHORT, *ONE_N4_AND_SFT,
                               f"sweep.output_dir={tmp_path / 'sweeps'}"])  # fmt: skip
    trap = ray_local / "crash-train-always-step-3"
    hits = ray_local / "crash-train-always-step-3.hits"
    trap.write_text("ssft-n4")  # only runs whose name contains this
    try:
        rows = {r["label"]: r for r in run(cfg)}
        attempts = hits.read_text().splitlines()
    finally:
        trap.unlink()
        hits.unlink(missing_ok=True)
    assert len(attempts) == 2 and all("ssft-n4-mean_nll-Lall" in a for a in attempts)
    crashed, other = rows["ssft-n4-mean_nll-Lall"], rows["sft_mixed"]
    assert crashed["status"] == "error" and crashed["error"], crashed
    assert other["status"] == "ok" and other["steps"] == 6 and other["final_loss"] > 0
    client = MlflowClient(uri)
    parent = client.get_run(client.get_run(other["mlflow_run_id"]).data.tags["mlflow.parentRunId"])
    tags = parent.data.tags
    assert parent.info.status == "FAILED"
    assert (tags["sweep.ok"], tags["sweep.error"]) == ("1", "1")
    assert tags["sweep.failed"] == "ssft-n4-mean_nll-Lall"
    assert tags["sweep.failure.ssft-n4-mean_nll-Lall"] == crashed["error"]
    assert client.get_run(crashed["mlflow_run_id"]).info.status == "FAILED"
    summary = client.download_artifacts(parent.info.run_id, "summary/summary.md", str(tmp_path))
    assert "| ssft-n4-mean_nll-Lall |" in Path(summary).read_text()


@pytest.mark.slow
def test_an_evaluating_sweep_ranks_its_trials_by_pass1_of_real_evaluations(
    ray_local, known_modes_traces, tmp_path, monkeypatch
):
    """Two trials (SSFT N = 4, SFT-mixed) under one parent run, each evaluated, ranked."""
    from mlflow import MlflowClient

    from ssft.report.comparison import load_eval
    from workflows.sweep import run, trial_name

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = load_config(CONFIG, [
        f"data.train_path={known_modes_traces}", "name=sweep-eval", *SHORT, *ONE_N4_AND_SFT,
        "sweep.evaluate=true", "eval.num_questions=8", f"sweep.output_dir={tmp_path / 'sweeps'}",
    ])  # fmt: skip
    assert cfg.sweep.ranked_by == "pass1"  # rank_by unset: Pass@1 when evaluating
    rows = {r["label"]: r for r in run(cfg)}
    assert [r["status"] for r in rows.values()] == ["ok", "ok"], rows
    ssft, sft = rows["ssft-n4-mean_nll-Lall"], rows["sft_mixed"]
    root = tmp_path / "sweeps" / "sweep-eval"
    for row in rows.values():  # the row's figures are its trial's evaluation's
        folder = root / "eval" / trial_name("sweep-eval", row["label"], row["trial_id"])
        metrics = load_eval(folder)["metrics"]
        assert metrics["n_questions"] == 8 and row["final_loss"] > 0 and row["steps"] == 6
        for column, key in EVAL_COLUMNS.items():
            assert row[column] == pytest.approx(metrics[key]), (column, row)
    assert sorted(r["rank"] for r in rows.values()) == [1, 2]
    first, second = sorted(rows.values(), key=lambda r: r["rank"])
    assert (first["pass1"], -first["final_loss"]) >= (second["pass1"], -second["final_loss"])
    assert (sft["cost"], sft["prefix_tokens"]) == ("n/a", "n/a")
    assert (ssft["cost"], ssft["prefix_tokens"]) == ("mean_nll", None)

    client = MlflowClient(uri)
    for row in rows.values():  # the trial's own run: its evaluation's headline figures
        child = client.get_run(row["mlflow_run_id"])
        assert child.info.status == "FINISHED" and child.data.tags["eval.status"] == "ok"
        assert child.data.metrics["eval/pass1"] == pytest.approx(row["pass1"])
        assert child.data.metrics["eval/cons_native"] == pytest.approx(row["cons_native"])
    sft_tags = client.get_run(sft["mlflow_run_id"]).data.tags
    assert (sft_tags["cost"], sft_tags["prefix_tokens"]) == ("n/a", "n/a")
    parent_id = sft_tags["mlflow.parentRunId"]
    evals = client.search_runs([client.get_run(parent_id).info.experiment_id],
                               filter_string="tags.stage = 'eval'")  # fmt: skip
    # Each evaluation's own run: beside the trials under the sweep, linked to its trial's run.
    assert {e.data.tags["ssft.train_run_id"] for e in evals} == {
        r["mlflow_run_id"] for r in rows.values()
    }
    assert {e.data.tags["mlflow.parentRunId"] for e in evals} == {parent_id}
    experiment = client.get_run(parent_id).info.experiment_id
    parents = client.search_runs([experiment], filter_string="tags.stage = 'sweep'")
    assert [p.info.run_id for p in parents] == [parent_id]  # one parent, both trials under it
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.rank_by"] == "pass1"
    assert (parent.data.tags["sweep.ok"], parent.data.tags["sweep.error"]) == ("2", "0")
    assert parent.data.tags["sweep.best"] == first["label"]
    assert parent.data.metrics["best_pass1"] == pytest.approx(first["pass1"])
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/summary.md", "summary/loss_vs_n.png", "summary/pass1_vs_n.png"} <= files
    table = pq.read_table(root / "summary" / "summary.parquet").to_pylist()
    assert {r["label"]: r["rank"] for r in table} == {k: r["rank"] for k, r in rows.items()}
    md = (root / "summary" / "summary.md").read_text().splitlines()
    assert md[2].startswith(f"| 1 | {first['label']} |") and "cons_native" in md[0]


@pytest.mark.slow
def test_a_failed_evaluation_is_returned_and_tagged_on_the_trial_run(ray_local, tmp_path):
    """evaluate_trial in real Ray tasks, on a model folder that is not there: no exception, the
    error for the row, and the trial's (finished) training run tagged with it."""
    from mlflow import MlflowClient

    from ssft.tracking import start_run
    from workflows.sweep import evaluate_trial

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(CONFIG, ["name=sweep-x-sft_mixed-t1", "eval.num_questions=2"])
    parent = start_run(cfg.experiment, "sweep-x", tracking_uri=uri, local_dir=tmp_path)
    with start_run(cfg.experiment, cfg.name, tracking_uri=uri, resume_key=cfg.name,
                   parent_run_id=parent.run_id, local_dir=tmp_path) as training:  # fmt: skip
        training.log_metrics({"loss": 1.0}, step=1)
    shared = {"tracking_uri": uri, "parent_run_id": parent.run_id,
              "eval_dir": str(tmp_path / "eval")}  # fmt: skip
    out = evaluate_trial(cfg, tmp_path / "missing" / "final_model", shared)
    assert out["eval_status"] == "error" and "ssft_tags.json" in out["eval_error"], out
    assert out["eval_error"].startswith("FileNotFoundError:")
    run = MlflowClient(uri).get_run(training.run_id)  # the same run, reopened and closed again
    assert run.info.status == "FINISHED" and run.data.metrics["loss"] == 1.0
    tags = run.data.tags
    assert (tags["eval.status"], tags["eval.error"]) == ("error", out["eval_error"])
