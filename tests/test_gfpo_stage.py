"""GFPO as the pipeline's stage after SSFT, and as its own entrypoint, on an embedded Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssft.config import ConfigError, load_config, parse_cli
from ssft.final_model import read_model_tags
from tests.conftest import last_wins
from workflows import gfpo
from workflows.pipeline import run, train_config, variant_configs

CONFIGS = Path(__file__).resolve().parents[1] / "workflows" / "configs"
CONFIG = Path(__file__).resolve().parents[1] / "tests" / "configs" / "tiny_test.yaml"


def small(*extra):
    return parse_cli([
        "--config", str(CONFIG), *last_wins(
            "build.output_dir=traces", "train.output_dir=train", "eval.output_dir=eval",
            "pipeline.output_dir=cmp", "build.num_questions=24", "train.epochs=1",
            "train.questions_per_step=8", "eval.num_questions=4", "eval.samples_per_tag=1",
            "eval.greedy=false", "pipeline.methods=ssft,sft_mixed", "pipeline.gfpo=true",
            "eval.self_selected=true", "gfpo.steps=2", "gfpo.questions_per_step=4",
            "gfpo.rollouts_per_tag=1", "gfpo.max_new_tokens=8", *extra,
        ),
    ])  # fmt: skip


@pytest.mark.slow
def test_the_pipeline_runs_gfpo_after_ssft_and_evaluates_both(
    ray_local, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    table = run(small())
    # SSFT gets a GFPO stage; SFT-mixed (one shared tag, nothing to choose) does not.
    assert "| ssft-gfpo | 1 |" in table and "sft_mixed-gfpo" not in table
    assert "Pass@1, self-selected tag" in table
    comparison = json.loads((tmp_path / "cmp" / "tiny-cpu" / "comparison.json").read_text())
    by_method = {r["method"]: r for r in comparison["runs"]}
    assert set(by_method) == {"ssft", "sft_mixed", "gfpo"}
    assert "self/pass1" in by_method["gfpo"]["metrics"]
    # The GFPO model starts from the SSFT model and keeps its tags.
    finals = {p.parent.name: p for p in (tmp_path / "train").glob("*/final_model")}
    (gfpo_name,) = [n for n in finals if "-gfpo-" in n]
    ssft_name = gfpo_name.split("-gfpo-")[0]
    assert read_model_tags(finals[gfpo_name])["tags"] == read_model_tags(finals[ssft_name])["tags"]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-cpu")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name.startswith("pipeline-")]
    (stage,) = [r for r in runs if r.data.tags.get("method") == "gfpo"
                and r.data.tags.get("stage") == "train"]  # fmt: skip
    assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert stage.info.run_name == "ssft-n4-s0-gfpo"
    assert stage.data.tags["gfpo.init_from"] == str(finals[ssft_name].resolve())
    history = client.get_metric_history(stage.info.run_id, "gfpo/reward")
    assert [m.step for m in history] == [1, 2]
    assert {"gfpo/tag_entropy", "gfpo/p/think1", "gfpo/advantage_abs"} <= set(stage.data.metrics)
    (evaluation,) = [r for r in runs if r.info.run_name == "eval-ssft-n4-s0-gfpo"]
    assert "self/pass1" in evaluation.data.metrics
    capsys.readouterr()
    assert run(small()) == table  # a rerun reuses every training and evaluation, GFPO's too
    assert capsys.readouterr().out.count("inputs unchanged, reusing") == 6


def test_gfpo_needs_a_model_with_forking_tokens(tmp_path, known_modes_traces):
    cfg = load_config(CONFIG, [f"data.train_path={known_modes_traces}"])
    with pytest.raises(ConfigError, match=r"gfpo\.init_from=null"):
        gfpo.stage_config(cfg)
    with pytest.raises(ConfigError, match="is not a final model"):
        gfpo.stage_config(cfg, tmp_path)


def test_the_gfpo_experiment_reuses_the_spare_tag_experiments_ssft_runs(tmp_path):
    """known_modes_gfpo.yaml's SSFT arm is the spare-tag experiment's ssft-n6, by name."""
    traces = tmp_path / "t.parquet"
    a = {v.name: c for v, c in variant_configs(load_config(CONFIGS / "known_modes_gfpo.yaml"))}
    b = {v.name: c for v, c in variant_configs(load_config(CONFIGS / "known_modes_spare_n6.yaml"))}
    for seed in (0, 1, 2):
        ours = train_config(a["ssft-n6"], "ssft-n6", seed, traces, "sha256:x")
        theirs = train_config(b["ssft-n6"], "ssft-n6", seed, traces, "sha256:x")
        assert ours.name == theirs.name


def test_a_gfpo_stage_is_named_after_its_section_and_its_rollouts_decoding(
    tmp_path, known_modes_traces
):
    """A rerun reuses a GFPO stage by name: what changes its model (the gfpo section, how its
    rollouts sample and are graded) must change the name; the evaluation's size must not."""
    from ssft.train.loop import TrainContext, train
    from workflows.pipeline import _gfpo_arm, make_arm

    def arm(*overrides: str):
        cfg = load_config(CONFIG, [f"train.output_dir={tmp_path}", "train.epochs=1", *overrides])
        return make_arm("ssft", cfg, 0, known_modes_traces, "sha256:x")

    base = arm()
    train(base.train_cfg, TrainContext(final_dir=base.final))  # a final model to start from
    name = _gfpo_arm(base).train_cfg.name
    assert name.startswith(f"{base.train_cfg.name}-gfpo-")
    same = ["eval.num_questions=3", "eval.samples_per_tag=5"]
    # (eval.top_p and eval.max_new_tokens name the SSFT training too: its tag validation)
    changed = ["eval.mask_forking_tokens=false", "eval.answer_extraction=last_expression",
               "gfpo.lr=0.5", "gfpo.steps=3", "gfpo.temperature=0.5"]  # fmt: skip
    for override in same + changed:
        other = arm(override)
        assert other.train_cfg.name == base.train_cfg.name, override  # the same SSFT model
        assert (_gfpo_arm(other).train_cfg.name == name) == (override in same), override


@pytest.mark.slow
def test_rollouts_on_ray_tasks_score_what_the_worker_would(ray_local, known_modes_traces, tmp_path):
    """The same requests, in process and spread over Ray tasks: the same rewards, in order.
    Gold answers are set to the samples' own answers on every other request that has one, so
    the rewards alternate and a reordering or a different seed shows."""
    from ssft.data.grading import grade
    from ssft.method.base import RolloutRequest
    from ssft.train.loop import TrainContext, train
    from ssft.train.policy_hooks import rollouts
    from ssft.train.setup import setup_run
    from workflows.rollout_tasks import ray_task_rollouts

    base = load_config(CONFIG, [f"data.train_path={known_modes_traces}", "train.epochs=1"])
    train(base, TrainContext(final_dir=tmp_path / "ssft"))
    cfg = gfpo.stage_config(
        load_config(CONFIG, [f"data.train_path={known_modes_traces}", "gfpo.rollout_tasks=3",
                             "gfpo.max_new_tokens=10", "eval.answer_extraction=last_expression"]),
        tmp_path / "ssft",
    )  # fmt: skip
    run = setup_run(cfg, TrainContext())
    requests = [RolloutRequest(q, i % 4, 2, f"k{i}") for i, q in enumerate(run.questions[:16])]
    from ssft.eval.sampling import sample_requests
    from ssft.train.policy_hooks import sample_requests_of

    texts = sample_requests(run.model, run.tokenizer, sample_requests_of(run, requests),
                            temperature=cfg.gfpo.temperature, max_new_tokens=10,
                            seed=cfg.seed, use_chat_template=cfg.data.use_chat_template,
                            prompt_template=cfg.data.prompt_template,
                            blocked_tokens=run.blocked_tokens)  # as rollouts do  # fmt: skip
    answered = 0  # a random model answers few samples: alternate over those that do
    for r, samples in zip(requests, texts, strict=True):
        src = run.sources[r.question.question_id]
        answer = grade("0", samples[0]["text"], "last_expression")[0]
        gold = answer if answer is not None and answered % 2 == 0 else "no such answer"
        answered += answer is not None
        run.sources[src.question_id] = type(src)(src.question_id, src.prompt, gold, src.source)
    local = rollouts(run)(requests)
    assert any(x == 1.0 for rs in local for x in rs) and any(x == 0.0 for rs in local for x in rs)
    assert ray_task_rollouts(run)(requests) == local
