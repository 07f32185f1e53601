"""GFPO: the policy gradient acts on the tag position only.

The loss of one step equals a hand computation (autograd through the renormalised tag
softmax of a plain forward) in both forms; equal rewards give a zero gradient; the loss
never sees a continuation; a resumed run follows the uninterrupted trajectory; a run with
real rollouts trains end to end and logs its rewards. Where a test needs rewards that are
not all zero (a tiny model that has trained for seconds answers nothing right), it sets
them through the loop's rollout hook: those tests check the loss given the rewards.
"""

from __future__ import annotations

import copy
import hashlib
import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ssft.train.loop as loop_module
from ssft.config import gfpo_run, load_config
from ssft.method.gfpo import GFPO
from ssft.method.sequences import IGNORE_INDEX, build_sequence
from ssft.method.table import build_method
from ssft.method.tag_policy import (
    draw_tags,
    exact_advantages,
    regularizer_coefficients,
    sampled_advantages,
    vocab_weights,
)
from ssft.tracking import NullTracker
from ssft.train.checkpointing import LocalCheckpoints
from ssft.train.loop import TrainContext, train, train_step
from ssft.train.setup import setup_run
from tests.conftest import last_wins


@pytest.fixture(scope="module")
def ssft_model(known_modes_traces, tmp_path_factory):
    """A tiny SSFT model (N = 4) trained for a few seconds: where GFPO starts."""
    out = tmp_path_factory.mktemp("ssft") / "final_model"
    cfg = load_config("tests/configs/tiny_test.yaml", [f"data.train_path={known_modes_traces}",
                                                       "train.epochs=2"])  # fmt: skip
    train(cfg, TrainContext(final_dir=out))
    return out


def gfpo_cfg(traces, model_dir, *overrides):
    cfg = load_config(
        "tests/configs/tiny_test.yaml",
        last_wins(
            f"data.train_path={traces}", "gfpo.steps=4", "gfpo.questions_per_step=6",
            "gfpo.rollouts_per_tag=2", "gfpo.max_new_tokens=12", "gfpo.lr=1e-2",
            "gfpo.trainable=all",  # every weight: the hand computations see all gradients
            "train.log_every=1", "train.max_grad_norm=0",  # unclipped: the loss's gradient
            *overrides,
        ),
    )  # fmt: skip
    return gfpo_run(cfg, str(model_dir))


def _fake_reward(request, k: int) -> float:
    """A reward fixed by (question, tag, rollout identity): varied, so advantages are not 0."""
    key = f"{request.question.question_id}|{request.tag_index}|{request.key}|{k}"
    return float(hashlib.sha256(key.encode()).digest()[0] % 3 == 0)


@pytest.fixture
def rewards(monkeypatch):
    """Replace the rollouts' grading by ``rewards.fn(request, k)``; records each call."""

    class Spy:
        fn = staticmethod(_fake_reward)
        calls: ClassVar[list] = []

    def fake_rollouts(run):
        def roll(requests):
            out = [[Spy.fn(r, k) for k in range(r.n)] for r in requests]
            Spy.calls.append((list(requests), out))
            return out

        return roll

    monkeypatch.setattr(loop_module, "rollouts", fake_rollouts)
    return Spy


def _step_gradients(run, step: int = 0) -> list[torch.Tensor]:
    grads: list[torch.Tensor] = []
    run.optimizer.step = lambda: grads.extend(p.grad.detach().clone() for p in run.net.parameters())
    q0 = run.questions[0]
    train_step(run, step, build_sequence(q0.prompt_ids, run.tag_ids[0], q0.trace_ids[0]))
    return grads


def _tag_log_policy(model, q, tag_ids) -> torch.Tensor:
    """log p over the tags after ``q``'s prompt, with gradient: one plain forward."""
    logits = model(input_ids=torch.tensor([q.prompt_ids])).logits[0, -1]
    return torch.log_softmax(logits.float()[list(tag_ids)], dim=-1)


def _hand_gradients(reference, run, calls, objective) -> list[torch.Tensor]:
    """Autograd of ``-mean_q objective(q, log p_q, requests_q, rewards_q)``."""
    (requests, rewards_out), = calls  # fmt: skip
    by_q: dict[str, list] = {}
    for r, rs in zip(requests, rewards_out, strict=True):
        by_q.setdefault(r.question.question_id, []).append((r, rs))
    questions = {r.question.question_id: r.question for r in requests}
    total = sum(
        objective(_tag_log_policy(reference, questions[qid], run.tag_ids), pairs)
        for qid, pairs in by_q.items()
    )
    (-total / len(by_q)).backward()
    return [p.grad for p in reference.parameters()]


def _assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.filterwarnings("ignore:Seems like:UserWarning")  # the captured optimizer step
def test_exact_form_loss_equals_the_hand_computation(known_modes_traces, ssft_model, rewards):
    cfg = gfpo_cfg(known_modes_traces, ssft_model, "gfpo.kl_coef=0.3",
                   "gfpo.entropy_floor=0.99", "gfpo.entropy_coef=0.2")  # fmt: skip
    run = setup_run(cfg, TrainContext())
    assert isinstance(run.method, GFPO)
    reference = copy.deepcopy(run.model)  # the model before the step (and the KL's reference)
    got = _step_gradients(run)

    def objective(logp, pairs):
        p = logp.exp()
        pd = p.detach().double().numpy()
        values = {}
        for r, rs in pairs:
            values.setdefault(r.tag_index, []).extend(rs)
        flat = [x for v in values.values() for x in v]
        mean = {i: np.mean(v) for i, v in values.items()}
        b = sum(pd[i] * m for i, m in mean.items())  # the policy's value (held constant)
        std = np.std(flat) + 1e-6
        j = sum(p[i] * float((m - b) / std) for i, m in mean.items())
        ref = logp.detach()  # the reference is the starting model: KL 0, but its gradient not
        kl = (p * (logp - ref)).sum()
        ent = -(p * logp).sum()
        bonus = 0.2 * ent if float(ent.detach()) < 0.99 * math.log(len(pd)) else 0.0
        return j - 0.3 * kl + bonus

    want = _hand_gradients(reference, run, rewards.calls, objective)
    assert any(float(g.abs().max()) > 0 for g in want)  # the rewards do vary
    _assert_same(got, want)


@pytest.mark.filterwarnings("ignore:Seems like:UserWarning")
def test_sampled_form_loss_equals_the_hand_computation(known_modes_traces, ssft_model, rewards):
    cfg = gfpo_cfg(known_modes_traces, ssft_model, "gfpo.form=sampled",
                   "gfpo.rollout_tags=policy", "gfpo.group_size=5")  # fmt: skip
    run = setup_run(cfg, TrainContext())
    reference = copy.deepcopy(run.model)
    got = _step_gradients(run)

    def objective(logp, pairs):
        rs = [x for _, out in pairs for x in out]
        tags = [r.tag_index for r, out in pairs for _ in out]
        assert len(rs) == 5
        adv = (np.array(rs) - np.mean(rs)) / (np.std(rs) + 1e-6)
        if np.std(rs) == 0:
            adv = np.zeros(len(rs))
        return sum(float(a) * logp[t] for a, t in zip(adv, tags, strict=True)) / len(rs)

    want = _hand_gradients(reference, run, rewards.calls, objective)
    assert any(float(g.abs().max()) > 0 for g in want)
    _assert_same(got, want)


@pytest.mark.filterwarnings("ignore:Seems like:UserWarning")
@pytest.mark.parametrize(
    "overrides",
    [(), ("gfpo.baseline=mean",), ("gfpo.baseline=none", "gfpo.normalize_advantages=false"),
     ("gfpo.form=sampled", "gfpo.rollout_tags=policy")],
)  # fmt: skip
def test_equal_rewards_give_a_zero_gradient(known_modes_traces, ssft_model, rewards, overrides):
    rewards.fn = staticmethod(lambda r, k: 1.0)
    run = setup_run(gfpo_cfg(known_modes_traces, ssft_model, *overrides), TrainContext())
    for g in _step_gradients(run):
        assert float(g.abs().max()) < 1e-9


@pytest.mark.filterwarnings("ignore:Seems like:UserWarning")
def test_no_loss_on_continuation_tokens(known_modes_traces, ssft_model, rewards, monkeypatch):
    """Every GFPO sequence is [prompt ; tag] with one label, the tag; and rollouts that read
    differently (other temperature and length) but score alike give the same update."""
    rewards.fn = staticmethod(lambda r, k: float(r.tag_index == 1))
    run = setup_run(gfpo_cfg(known_modes_traces, ssft_model), TrainContext())
    seen = []
    real = run.method.chunk_sequences
    monkeypatch.setattr(run.method, "chunk_sequences", lambda qs, ctx: seen.append(
        real(qs, ctx)) or seen[-1])  # fmt: skip
    first = _step_gradients(run)
    for (ids, labels), in zip(seen[0].sequences):  # fmt: skip
        supervised = [t for t in labels if t != IGNORE_INDEX]
        assert supervised == [ids[-1]] and ids[-1] in run.tag_ids
    other = gfpo_cfg(known_modes_traces, ssft_model, "gfpo.temperature=1.3",
                     "gfpo.max_new_tokens=30")  # fmt: skip
    _assert_same(_step_gradients(setup_run(other, TrainContext())), first)


@pytest.mark.parametrize("trainable", ["all", "tag_head"])
def test_resume_follows_the_uninterrupted_trajectory(
    known_modes_traces, ssft_model, tmp_path, trainable
):
    """Real rollouts (sampled and graded) on every step; crash after step 2, resume."""
    cfg = gfpo_cfg(known_modes_traces, ssft_model, "train.checkpoint_every=2",
                   f"gfpo.trainable={trainable}", "gfpo.entropy_floor=0.999",
                   "gfpo.form=sampled", "gfpo.rollout_tags=policy", "gfpo.group_size=4",
                   "gfpo.kl_coef=0.1")  # fmt: skip
    logged: list[dict] = []

    class Recording(NullTracker):
        def log_metrics(self, metrics, step=None):
            logged.append(dict(metrics))

    reference = train(cfg, TrainContext(tracker=Recording(), final_dir=tmp_path / "a"))
    uninterrupted, logged[:] = list(logged), []
    checkpoints = LocalCheckpoints(tmp_path / "ckpt", keep=2)

    def crash(step):
        if step == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, TrainContext(report=checkpoints.report, before_step=crash,
                                tracker=Recording()))  # fmt: skip
    logged[:] = []
    train(cfg, TrainContext(report=checkpoints.report, resume_from=checkpoints.latest(),
                            tracker=Recording(), final_dir=tmp_path / "b"))  # fmt: skip
    assert reference.steps == 4 and len(logged) == 2
    for a, b in zip(uninterrupted[2:], logged, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if k != "tokens_per_s":
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_a_gfpo_run_rolls_out_grades_and_logs(known_modes_traces, ssft_model, tmp_path, capsys):
    cfg = gfpo_cfg(known_modes_traces, ssft_model, "gfpo.kl_coef=0.05")
    assert build_method(cfg).__class__ is GFPO
    logged: list[dict] = []

    class Recording(NullTracker):
        def log_metrics(self, metrics, step=None):
            logged.append(dict(metrics))

    result = train(cfg, TrainContext(tracker=Recording(), final_dir=tmp_path / "final"))
    assert result.steps == 4 and len(logged) == 4
    tags = [f"think{i}" for i in range(1, 5)]
    for m in logged:
        assert 0.0 <= m["gfpo/reward"] <= 1.0
        assert sum(m[f"gfpo/p/{t}"] for t in tags) == pytest.approx(1.0)
        assert all(0.0 <= m[f"gfpo/reward/{t}"] <= 1.0 for t in tags)  # every tag rolled out
        assert 0.0 <= m["gfpo/tag_entropy"] <= math.log(4) + 1e-9 and m["gfpo/kl"] >= 0
    assert (tmp_path / "final" / "ssft_tags.json").exists()
    # The step line shows the rewards, not an NLL of zero rows.
    steps = [line for line in capsys.readouterr().out.splitlines() if "] step " in line]
    assert len(steps) == 4 and all("| reward " in s and "| loss " not in s for s in steps)


# --- the per-tag coefficients, by hand ---------------------------------------------------


def test_vocab_weights_turn_coefficients_into_the_renormalised_gradient():
    """d/dz of sum_j w_j (-log softmax(z)_j) equals d/dz of -sum_i c_i log p_i(z)."""
    torch.manual_seed(0)
    z = torch.randn(10, dtype=torch.float64, requires_grad=True)
    tags = [2, 5, 7]
    c = np.array([0.3, -0.5, 0.1])
    p = torch.softmax(z[tags], 0).detach().numpy()
    w = torch.tensor(vocab_weights(c, p))
    (g1,) = torch.autograd.grad((w * -torch.log_softmax(z, 0)[tags]).sum(), z)
    (g2,) = torch.autograd.grad(-(torch.tensor(c) * torch.log_softmax(z[tags], 0)).sum(), z)
    torch.testing.assert_close(g1, g2)


def test_advantages_by_hand():
    p = np.array([0.5, 0.3, 0.2])
    exact = exact_advantages(p, [[1, 1], [0, 1], []], baseline="expected", normalize=False)
    b = (0.5 * 1 + 0.3 * 0.5) / 0.8  # tag 2 has no rollouts: out of the baseline, zero advantage
    np.testing.assert_allclose(exact.coefficients, [0.5 * (1 - b), 0.3 * (0.5 - b), 0.0])
    sampled = sampled_advantages(3, [0, 0, 1, 2], [1, 0, 1, 0], baseline="mean", normalize=True)
    np.testing.assert_allclose(
        sampled.coefficients, np.array([1 - 1, 1, -1]) / (0.5 + 1e-6) * 0.5 / 4
    )
    assert sampled_advantages(3, [0, 1], [1, 1], baseline="mean", normalize=True).flat
    # the entropy bonus applies below the floor only
    sharp = np.array([0.98, 0.01, 0.01])
    assert not regularizer_coefficients(p, entropy_floor=0.5, entropy_coef=1).any()
    assert regularizer_coefficients(sharp, entropy_floor=0.5, entropy_coef=1)[0] > 0


def test_tag_draws_are_seeded_per_question():
    p = np.array([0.7, 0.0, 0.3])
    a = draw_tags(p, 2000, 0, "q1")
    assert a == draw_tags(p, 2000, 0, "q1") and a != draw_tags(p, 2000, 0, "q2")
    assert 1 not in a and abs(a.count(0) / 2000 - 0.7) < 0.04


def test_gfpo_config_rules():
    from ssft.config import ConfigError

    base = load_config("tests/configs/tiny_test.yaml", [])
    with pytest.raises(ConfigError, match=r"gfpo\.init_from=null"):
        gfpo_run(base)
    with pytest.raises(ConfigError, match=r"needs gfpo\.rollout_tags=policy"):
        load_config("tests/configs/tiny_test.yaml", ["gfpo.form=sampled"])
    with pytest.raises(ConfigError, match=r"pipeline\.gfpo=true"):
        load_config("tests/configs/tiny_test.yaml", ["pipeline.methods=ssft,gfpo"])


@pytest.mark.filterwarnings("ignore:Seems like:UserWarning")
def test_the_tag_head_changes_nothing_but_the_tags_output_rows(
    known_modes_traces, ssft_model, rewards, tmp_path
):
    cfg = gfpo_cfg(known_modes_traces, ssft_model, "gfpo.trainable=tag_head")
    run = setup_run(cfg, TrainContext())
    before = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    q0 = run.questions[0]
    train_step(run, 0, build_sequence(q0.prompt_ids, run.tag_ids[0], q0.trace_ids[0]))
    after = run.model.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed == {"lm_head.weight"}  # untied: the input embeddings stay the SSFT model's
    rows = (after["lm_head.weight"] != before["lm_head.weight"]).any(dim=1).nonzero().flatten()
    assert set(rows.tolist()) <= set(run.tag_ids) and len(rows) > 0
    # The saved model is untied and loads as trained.
    run.model.save_pretrained(tmp_path / "m")
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert not loaded.config.tie_word_embeddings
    torch.testing.assert_close(loaded.lm_head.weight, after["lm_head.weight"])
    torch.testing.assert_close(loaded.get_input_embeddings().weight,
                               before["model.embed_tokens.weight"])  # fmt: skip


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_masked_continuations_of_a_tag_head_model_are_the_ssft_models(
    known_modes_traces, ssft_model, temperature
):
    """Training the tags' output rows (gfpo.trainable=tag_head) raises the tags' logits at
    every position; with the forking tokens masked (eval.mask_forking_tokens, the default)
    the model's continuations are exactly its SSFT model's, however large those rows grow.
    Unmasked, the grown rows leak tags into the answers."""
    from transformers import AutoModelForCausalLM

    from ssft.eval.sampling import sample_with_tags

    cfg = gfpo_cfg(known_modes_traces, ssft_model, "gfpo.trainable=tag_head")
    run = setup_run(cfg, TrainContext())  # untied: the tag rows are the output's own
    ssft = AutoModelForCausalLM.from_pretrained(ssft_model).eval()
    head = run.model.get_output_embeddings().weight
    questions = list(run.sources.values())[:4]
    q0 = run.questions[0]
    with torch.no_grad():  # each tag row: 3 x the row of the token an answer starts with
        first = ssft(input_ids=torch.tensor([[*q0.prompt_ids, run.tag_ids[0]]])).logits[0, -1]
        common = first.argmax()
        for t in run.tag_ids:
            head[t] = 3.0 * head[common]
    blocked = run.blocked_tokens
    assert set(run.tag_names) < set(blocked) and cfg.forking.shared_tag in blocked

    def sample(model, blocked_tokens):
        return [(r["tag"], r["text"], r["num_tokens"]) for r in sample_with_tags(
            model.eval(), run.tokenizer, questions, list(run.tag_names), samples_per_tag=2,
            temperature=temperature, max_new_tokens=12, seed=3, blocked_tokens=blocked_tokens,
        )]  # fmt: skip

    assert sample(run.model, blocked) == sample(ssft, blocked)
    assert sample(run.model, ()) != sample(ssft, ())
