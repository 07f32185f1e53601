"""The method table: every built-in method builds from its entry, and a new method is one
entry plus its module (here, this file), trained by the unchanged loop with the sequences and
per-sequence loss weights it chooses."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import pytest
import torch

from ssft.config import load_config
from ssft.method.assigned_tags import AssignedTags
from ssft.method.base import MethodContext, StepSequences, TrainingMethod
from ssft.method.logprobs import sequence_nll
from ssft.method.sequences import TokenizedQuestion, build_sequence, pad_batch
from ssft.method.table import METHODS, Method, build_method
from ssft.train.loop import TrainContext, train, train_step
from ssft.train.setup import setup_run
from tests.conftest import last_wins


class FirstTraceTwice(TrainingMethod):
    """A toy method: every trace under the shared tag, the first trace of each question
    weighted 2 and the rest 0.5; only the first makes the logged loss."""

    def chunk_sequences(
        self, questions: Sequence[TokenizedQuestion], ctx: MethodContext
    ) -> StepSequences:
        seqs, weights, logged = [], [], []
        for q in questions:
            for j, trace in enumerate(q.trace_ids):
                seqs.append(build_sequence(q.prompt_ids, ctx.tag_ids[0], trace))
                weights.append(2.0 if j == 0 else 0.5)
                logged.append(j == 0)
        return StepSequences(seqs, weights, logged)


TOY = Method(
    "toy",
    "first trace of each question weighted 2, the others 0.5",
    shared_tag=True,
    implementation="tests.test_method_table:FirstTraceTwice",
)


def tiny(path, *overrides):
    return load_config(
        "tests/configs/tiny_test.yaml",
        last_wins(
            f"data.train_path={path}", "train.log_every=100", "train.questions_per_step=8",
            "train.epochs=1", "train.warmup_steps=0",
            *overrides,
        ),
    )  # fmt: skip


@pytest.mark.parametrize("name", list(METHODS))
def test_every_entry_builds_its_method(name, known_modes_traces):
    cfg = tiny(known_modes_traces, f"method={name}")
    method = build_method(cfg)
    assert method.method is METHODS[name]
    module, _, cls = METHODS[name].implementation.partition(":")
    assert type(method).__module__ == module and type(method).__name__ == cls
    if isinstance(method, AssignedTags):
        assert method.policy.name == METHODS[name].policy
        assert method.policy.needs_cost == METHODS[name].needs_cost


def test_an_entry_whose_policy_disagrees_is_refused(known_modes_traces):
    cfg = tiny(known_modes_traces)
    wrong = Method("wrong", "needs a cost it never computes", policy="hungarian")
    with pytest.raises(ValueError, match="needs_cost=False but policy 'hungarian'"):
        AssignedTags(wrong, cfg)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", TOY)
    return TOY


def _captured_step_gradients(run, step: int) -> list[torch.Tensor]:
    """The gradients the optimizer sees at ``step`` (captured in place of its update)."""
    grads: list[torch.Tensor] = []
    run.optimizer.step = lambda: grads.extend(p.grad.detach().clone() for p in run.net.parameters())
    q0 = run.questions[0]
    train_step(run, step, build_sequence(q0.prompt_ids, run.tag_ids[0], q0.trace_ids[0]))
    return grads


@pytest.mark.filterwarnings("ignore:Seems like:UserWarning")  # the captured optimizer step
@pytest.mark.parametrize("packing", ["true", "false"])
def test_the_loop_backpropagates_the_methods_weighted_loss(toy, known_modes_traces, packing):
    cfg = tiny(
        known_modes_traces, f"train.packing={packing}", "train.micro_batch_sequences=3",
        "train.max_grad_norm=0",  # unclipped: the gradients as the loss gives them
    )  # fmt: skip
    cfg.method = "toy"  # not in the config's choices: the table was extended at run time
    run = setup_run(cfg, TrainContext())
    assert isinstance(run.method, FirstTraceTwice) and run.shared
    reference = copy.deepcopy(run.model)
    out_grads = _captured_step_gradients(run, 0)
    # By hand: sum_k w_k * NLL_sum_k / (the step's supervised tokens), on a copy of the model.
    questions = [run.questions[i] for i in sorted(i for c in _plan(run, 0) for i in c)]
    seqs = run.method.chunk_sequences(questions, _ctx(run))
    tokens = sum(run.method.supervised_tokens(q) for q in questions)
    sums, _ = sequence_nll(reference, pad_batch(seqs.sequences, run.pad_id))  # per sequence
    loss = (sums * torch.tensor(seqs.weights)).sum() / tokens
    loss.backward()
    expected = [p.grad for p in reference.parameters()]
    assert len(expected) == len(out_grads)
    for got, want in zip(out_grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def _plan(run, step):
    from ssft.train.batching import plan_step

    tc = run.cfg.train
    plan = plan_step(
        step, run.questions, questions_per_step=tc.questions_per_step,
        grad_accum_steps=tc.grad_accum_steps, world_size=1, seed=run.cfg.seed,
        tokens=run.method.supervised_tokens,
    )  # fmt: skip
    return [rank for chunk in plan.chunks for rank in chunk]


def _ctx(run) -> MethodContext:
    def no_cost(_):
        raise AssertionError("the toy method never asks for a cost pass")

    return MethodContext(run.tag_ids, run.cfg.seed, 0, no_cost)


def test_a_new_method_trains_end_to_end_with_the_unchanged_loop(toy, known_modes_traces, tmp_path):
    cfg = tiny(known_modes_traces, "train.epochs=2")
    cfg.method = "toy"
    result = train(cfg, TrainContext(final_dir=tmp_path / "final"))
    assert result.steps == 12 and all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] < result.losses[0]
    assert result.pass1_tag == cfg.forking.shared_tag  # a shared-tag method samples under it
    assert (tmp_path / "final" / "ssft_tags.json").exists()


def test_a_method_giving_more_sequences_than_it_announced_is_stopped(
    toy, known_modes_traces, monkeypatch
):
    cfg = tiny(known_modes_traces, "train.micro_batch_sequences=2")
    cfg.method = "toy"
    run = setup_run(cfg, TrainContext())
    monkeypatch.setattr(run.method, "sequences_per_question", lambda q: 0)
    with pytest.raises(RuntimeError, match="more than its sequences_per_question allows"):
        _captured_step_gradients(run, 0)
