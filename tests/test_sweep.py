"""The N x matching-cost sweep: its grid and report (fast), and a real Tune sweep (slow)."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ssft.config import ConfigError, load_config
from ssft.report.sweep import apply_variant, grid, summary_markdown, write_summary

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


def test_summary_table_and_plot(tmp_path):
    rows = [
        {"label": "ssft-n2-mean_nll-Lall", "method": "ssft", "num_tags": 2, "cost": "mean_nll",
         "prefix_tokens": None, "status": "ok", "final_loss": 1.5, "steps": 6},
        {"label": "ssft-n4-mean_nll-Lall", "method": "ssft", "num_tags": 4, "cost": "mean_nll",
         "prefix_tokens": None, "status": "ok", "final_loss": 1.2, "steps": 6},
        {"label": "ssft-n4-sum_nll-L16", "method": "ssft", "num_tags": 4, "cost": "sum_nll",
         "prefix_tokens": 16, "status": "error", "final_loss": None, "error": "worker died"},
        {"label": "sft_mixed", "method": "sft_mixed", "num_tags": 4, "cost": "mean_nll",
         "prefix_tokens": None, "status": "ok", "final_loss": 1.4, "steps": 6},
    ]  # fmt: skip
    paths = write_summary(rows, tmp_path)
    assert [p.name for p in paths] == ["summary.parquet", "summary.md", "loss_vs_n.png"]
    table = pq.read_table(paths[0]).to_pylist()
    assert [r["label"] for r in table] == [r["label"] for r in rows]
    assert table[2]["status"] == "error" and table[2]["prefix_tokens"] == 16
    md = summary_markdown(rows).splitlines()
    assert md[2].startswith("| ssft-n4-mean_nll-Lall |") and "worker died" in md[-1]
    assert paths[2].stat().st_size > 1000


@pytest.mark.slow
def test_two_trial_sweep_logs_parent_children_and_summary(
    ray_local, known_modes_traces, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    from workflows.sweep import run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = load_config(CONFIG, [
        f"data.train_path={known_modes_traces}", "name=sweep-test", *SHORT,
        "sweep.num_tags=2,4", "sweep.costs=mean_nll", "sweep.prefixes=none", "sweep.baselines=",
        f"sweep.output_dir={tmp_path / 'sweeps'}",
    ])  # fmt: skip
    rows = run(cfg)
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    assert {r["num_tags"] for r in rows} == {2, 4} and all(r["final_loss"] > 0 for r in rows)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-cpu-sweep").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if r.data.tags.get("stage") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.tags["num_tags"] for c in children) == ["2", "4"]
    assert {c.info.run_id for c in children} == {r["mlflow_run_id"] for r in rows}
    assert parent.data.tags["sweep.ok"] == "2" and parent.data.tags["sweep.error"] == "0"
    files = {f.path for f in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/summary.parquet", "summary/summary.md", "summary/loss_vs_n.png"} <= files


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
