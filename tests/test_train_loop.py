"""The training loop without Ray: every method, saved models, accumulation, resuming."""

import json
import logging
import math

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ssft.config import load_config
from ssft.method.sequences import build_sequence, format_prompt
from ssft.train.checkpointing import LocalCheckpoints
from ssft.train.loop import TrainContext, train, train_step
from ssft.train.optim import lr_factor
from ssft.train.setup import setup_run
from tests.conftest import last_wins


def tiny(path, *overrides):
    return load_config(
        "tests/configs/tiny_test.yaml",
        # The step counts below assume 48 questions, 8 per step, one epoch unless overridden.
        last_wins(
            f"data.train_path={path}",
            "train.log_every=100",
            "train.questions_per_step=8",
            "train.epochs=1",
            "train.warmup_steps=0",
            *overrides,
        ),
    )


@pytest.mark.parametrize("method", ["ssft", "sft_mixed", "random", "single"])
def test_every_method_trains_and_saves_a_loadable_model(method, known_modes_traces, tmp_path):
    cfg = tiny(known_modes_traces, f"method={method}", "train.epochs=2")
    result = train(cfg, TrainContext(final_dir=tmp_path / "final"))
    assert result.steps == 12 and len(result.losses) == 12
    assert result.losses[-1] < result.losses[0]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    tok = AutoTokenizer.from_pretrained(tmp_path / "final")
    tags = json.loads((tmp_path / "final" / "ssft_tags.json").read_text())
    # Serving: the saved chat template puts a chosen tag where training put it.
    messages = [{"role": "user", "content": "12 + 30 = ?"}]
    prompt = tok.decode(format_prompt(tok, "12 + 30 = ?", use_chat_template=True))
    tag = tags["shared_tag"] if method in ("sft_mixed", "single") else tags["tags"][1]
    served = tok.apply_chat_template(messages, add_generation_prompt=True, forking_tag=tag,
                                     tokenize=False)  # fmt: skip
    assert served == prompt + tag
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == prompt
    ids = tok.encode(served, add_special_tokens=False)
    assert ids[-1] == tok.convert_tokens_to_ids(tag)
    assert tags["prompt_format"]["use_chat_template"] is True
    for tag in [*tags["tags"], tags["shared_tag"]]:
        assert len(tok.encode(tag, add_special_tokens=False)) == 1
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    table = pq.read_table(tmp_path / "final" / "assignments.parquet").to_pylist()
    used = {row["tag"] for row in table}
    if method in ("ssft", "random"):
        assert tags["pass1_tag"] in tags["tags"] and used <= {1, 2, 3, 4} and len(used) > 1
        per_question = {}
        for row in table:
            per_question.setdefault(row["question_id"], []).append(row["tag"])
        assert all(len(set(t)) == len(t) for t in per_question.values())  # distinct tags
    else:
        assert tags["pass1_tag"] == "<think>" and used == {1}
    if method == "single":
        assert len(table) == 48  # one trace per question


def test_accumulation_chunks_do_not_change_the_trajectory(known_modes_traces):
    one = train(
        tiny(known_modes_traces, "train.grad_accum_steps=1", "train.micro_batch_sequences=32")
    )
    many = train(
        tiny(known_modes_traces, "train.grad_accum_steps=4", "train.micro_batch_sequences=1")
    )
    torch.testing.assert_close(
        torch.tensor(many.losses), torch.tensor(one.losses), rtol=2e-4, atol=1e-5
    )


@pytest.mark.parametrize("setting", ["train.packing=false", "train.activation_checkpointing=true"])
def test_padding_and_checkpointing_do_not_change_the_trajectory(known_modes_traces, setting):
    """Packed (the default) vs padded micro-batches, and with activation checkpointing."""
    overrides = ("train.epochs=2", "train.micro_batch_sequences=8")
    packed = train(tiny(known_modes_traces, *overrides, "train.packing=true"))
    other = train(tiny(known_modes_traces, *overrides, setting))
    torch.testing.assert_close(
        torch.tensor(other.losses), torch.tensor(packed.losses), rtol=2e-4, atol=1e-5
    )


@pytest.mark.slow  # torch.compile takes about a minute on a small CPU
def test_compiled_layers_train_the_same(known_modes_traces):
    eager = train(tiny(known_modes_traces))
    compiled = train(tiny(known_modes_traces, "train.compile=true"))
    torch.testing.assert_close(
        torch.tensor(compiled.losses), torch.tensor(eager.losses), rtol=2e-4, atol=1e-5
    )


def test_a_nonfinite_gradient_skips_the_update_on_the_device(known_modes_traces):
    run = setup_run(tiny(known_modes_traces), TrainContext())
    assert run.skips_on_device  # fused AdamW: the step reads the flag, the host never does
    q0 = run.questions[0]
    dummy = build_sequence(q0.prompt_ids, run.tag_ids[0], q0.trace_ids[0])
    before = [p.detach().clone() for p in run.model.parameters()]
    weight = run.model.get_input_embeddings().weight
    hook = weight.register_hook(lambda g: torch.full_like(g, math.nan))
    out = train_step(run, 0, dummy)
    hook.remove()
    assert not math.isfinite(float(out.grad_norm))
    assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
    steps = {float(s["step"]) for s in run.optimizer.state.values()}
    assert steps == {0.0}  # the skipped update is not counted either
    out = train_step(run, 1, dummy)  # a finite step after it trains normally
    assert math.isfinite(float(out.grad_norm))
    assert not torch.equal(before[0], next(run.model.parameters()))
    assert {float(s["step"]) for s in run.optimizer.state.values()} == {1.0}


def test_the_loop_warns_about_a_skipped_update(known_modes_traces, monkeypatch, caplog):
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def nan_on_second_step(params, max_norm):
        calls.append(real(params, max_norm))
        return calls[-1] * math.nan if len(calls) == 2 else calls[-1]

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", nan_on_second_step)
    with caplog.at_level(logging.WARNING, logger="ssft.train"):
        result = train(tiny(known_modes_traces, "train.questions_per_step=16"))
    assert [r.getMessage() for r in caplog.records] == [
        "step 1: gradient norm is nan; the update was skipped"
    ]
    assert all(math.isfinite(v) for v in result.losses)


def test_crash_then_resume_sees_every_batch_once(known_modes_traces, tmp_path):
    cfg = tiny(known_modes_traces, "train.epochs=2", "train.checkpoint_every=4")
    reference = train(cfg)
    checkpoints = LocalCheckpoints(tmp_path / "ckpt", keep=2)

    def crash_at_step_7(step):
        if step == 7:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, TrainContext(report=checkpoints.report, before_step=crash_at_step_7))
    latest = checkpoints.latest()
    assert latest.name == "checkpoint_00000004"
    resumed = train(cfg, TrainContext(report=checkpoints.report, resume_from=latest))
    assert resumed.data_log == reference.data_log  # same batches, each exactly once
    torch.testing.assert_close(
        torch.tensor(resumed.losses), torch.tensor(reference.losses), rtol=1e-4, atol=1e-6
    )
    assert [p.name for p in sorted((tmp_path / "ckpt").iterdir())] == [
        "checkpoint_00000008",
        "checkpoint_00000012",
    ]


def test_trained_model_learns_to_stop(known_modes_traces, tmp_path):
    """After a short run, greedy generation after every tag ends with the end-of-turn token."""
    cfg = tiny(known_modes_traces, "train.epochs=16", "train.warmup_steps=5")
    train(cfg, TrainContext(final_dir=tmp_path / "final"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    tok = AutoTokenizer.from_pretrained(tmp_path / "final")
    for tag in ("<think1>", "<think2>", "<think3>", "<think4>"):
        prompt = [*format_prompt(tok, "37 + 58 = ?"), tok.convert_tokens_to_ids(tag)]
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=80, do_sample=False,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        assert out[0, -1].item() == tok.eos_token_id, tok.decode(out[0, len(prompt) :])


def test_missing_train_path_is_a_clear_error():
    cfg = load_config("tests/configs/tiny_test.yaml")
    with pytest.raises(ValueError, match=r"data\.train_path is not set"):
        train(cfg)


def test_max_steps_caps_the_epochs(known_modes_traces, tmp_path):
    cfg = tiny(
        known_modes_traces, "train.epochs=3", "train.max_steps=7", "train.lr_schedule=linear"
    )
    result = train(cfg, TrainContext(final_dir=tmp_path / "final"))
    assert result.steps == 7 and len(result.losses) == 7  # 3 epochs would be 18
    uncapped = tiny(known_modes_traces, "train.epochs=1", "train.max_steps=100")
    assert train(uncapped, TrainContext()).steps == 6  # a cap above the epochs changes nothing


def test_the_logged_lr_is_the_one_each_step_trained_at_and_the_last_is_not_zero(
    known_modes_traces,
):
    cfg = tiny(known_modes_traces, "train.warmup_steps=2", "train.lr_schedule=cosine")
    run = setup_run(cfg, TrainContext())
    q0 = run.questions[0]
    dummy = build_sequence(q0.prompt_ids, run.tag_ids[0], q0.trace_ids[0])
    lrs = [train_step(run, step, dummy).lr for step in range(run.total_steps)]
    expected = [cfg.train.lr * lr_factor(s, run.total_steps, 2, "cosine") for s in range(6)]
    assert run.total_steps == 6 and lrs == pytest.approx(expected)
    assert lrs[0] == pytest.approx(cfg.train.lr / 2)  # warmup: the first step at 1/2
    assert lrs[-1] > 0  # the last step still trains


def test_metrics_are_logged_every_log_every_steps_and_every_step_is_accounted(
    known_modes_traces, tmp_path
):
    """The host syncs once per window of train.log_every steps; nothing is lost between."""
    from mlflow.tracking import MlflowClient

    from ssft.tracking import start_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tiny(known_modes_traces, "train.log_every=4")  # 6 steps: windows end at 4 and 6
    with start_run("exp", "windowed", tracking_uri=uri) as tracker:
        result = train(cfg, TrainContext(tracker=tracker))
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "loss")
    assert [m.step for m in history] == [4, 6]  # the window's last step, and the run's last
    assert [m.value for m in history] == pytest.approx([result.losses[3], result.losses[5]])
    assert len(result.losses) == 6 and all(math.isfinite(x) for x in result.losses)
    assert [row[0] for row in result.data_log] == list(range(6))  # every step's data, in order
    lr = MlflowClient(uri).get_metric_history(tracker.run_id, "lr")
    assert [m.value for m in lr] == pytest.approx([cfg.train.lr * f for f in (
        lr_factor(3, 6, 0, "cosine"), lr_factor(5, 6, 0, "cosine"))])  # fmt: skip
