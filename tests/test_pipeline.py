"""The main job end to end on an embedded Ray: stages run once, then are reused."""

import json
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssft.config import parse_cli
from tests.conftest import last_wins
from workflows.pipeline import run

pytestmark = pytest.mark.slow


CONFIG = Path(__file__).resolve().parents[1] / "tests" / "configs" / "tiny_test.yaml"


def small(tmp_path, *extra):
    # RELATIVE output folders, as a user's defaults are: Ray Train workers run in another
    # directory, so the drivers must resolve them (the test runs from inside tmp_path).
    return parse_cli([
        "--config", str(CONFIG), *last_wins(
            "build.output_dir=traces", "train.output_dir=train",
            "eval.output_dir=eval", "pipeline.output_dir=cmp",
            "build.num_questions=24", "train.epochs=1", "train.questions_per_step=8",
            "eval.num_questions=4", "eval.samples_per_tag=1", "pipeline.methods=ssft,sft_mixed",
            *extra,
        ),
    ])  # fmt: skip


def test_pipeline_runs_every_stage_then_reuses_them(ray_local, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    table = run(small(tmp_path))
    assert "| ssft | 1 |" in table and "| sft_mixed | 1 |" in table
    comparison = json.loads((tmp_path / "cmp" / "tiny-cpu" / "comparison.json").read_text())
    assert {r["method"] for r in comparison["runs"]} == {"ssft", "sft_mixed"}
    assert (tmp_path / "cmp" / "tiny-cpu" / "pass_at_k.png").stat().st_size > 0
    client = MlflowClient(uri)
    names = {r.info.run_name for r in client.search_runs(
        [client.get_experiment_by_name("tiny-cpu").experiment_id])}  # fmt: skip
    assert sum(n.startswith("build-traces-") for n in names) == 1
    assert sum(n.startswith("eval-") for n in names) == 2
    assert "compare-tiny-cpu" in names and len(names) == 1 + 2 + 2 + 1  # build, 2 train, ...

    first = capsys.readouterr().out
    # Evaluation says how far it is as its tasks finish, not only when it is done.
    progress = r"\[eval\] \S+: task \d+ done \(\d+ questions\) \| 1/\d+ \| \d+s elapsed"
    assert re.search(progress, first)
    assert run(small(tmp_path)) == table  # nothing changed: every stage reused
    out = capsys.readouterr().out
    assert out.count("inputs unchanged, reusing") == 4
    assert "resuming: 1 of 1 shards already on disk" in out  # 24 questions, 32 per shard

    run(small(tmp_path, "eval.samples_per_tag=2"))  # only the evaluations depend on this
    out = capsys.readouterr().out
    assert out.count("[pipeline] train") == 2 and out.count("[pipeline] eval") == 0
