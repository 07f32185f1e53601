import itertools

import numpy as np
import pytest
import torch

from ssft.method.logprobs import sequence_nll
from ssft.method.matching import (
    POLICIES,
    assign_tags,
    cost_forward_count,
    cost_matrices,
    get_policy,
    question_rng,
)
from ssft.method.sequences import TokenizedQuestion, build_sequence, pad_batch
from tests.conftest import grad_modes_of_forwards, make_model_and_tags, make_questions


def brute_force(cost: np.ndarray) -> float:
    n_tags, n_traces = cost.shape
    return min(
        sum(cost[tag, j] for j, tag in enumerate(perm))
        for perm in itertools.permutations(range(n_tags), n_traces)
    )


@pytest.mark.parametrize("n_tags,n_traces", [(4, 2), (5, 3), (4, 4), (6, 6), (3, 1), (2, 0)])
def test_hungarian_is_optimal_against_brute_force(n_tags, n_traces):
    rng = np.random.default_rng(n_tags * 10 + n_traces)
    policy = get_policy("hungarian")
    for _ in range(25):
        cost = rng.normal(size=(n_tags, n_traces))
        tags = policy(cost, n_tags, n_traces)
        assert tags.dtype == np.int64 and tags.shape == (n_traces,)
        assert len(set(tags.tolist())) == n_traces  # injective
        total = cost[tags, np.arange(n_traces)].sum()
        assert total == pytest.approx(brute_force(cost) if n_traces else 0.0)


def test_integer_costs_with_ties_are_deterministic_and_optimal():
    rng = np.random.default_rng(0)
    policy = get_policy("hungarian")
    for _ in range(20):
        cost = rng.integers(0, 3, size=(4, 3)).astype(float)
        first = policy(cost, 4, 3)
        assert np.array_equal(first, policy(cost.copy(), 4, 3))
        assert cost[first, np.arange(3)].sum() == brute_force(cost)
    assert policy(np.zeros((4, 3)), 4, 3).tolist() == [0, 1, 2]  # all ties: trace j -> tag j


def test_injective_policies_refuse_more_traces_than_tags():
    for name in ("hungarian", "random"):
        with pytest.raises(ValueError, match="too_many_traces=keep_most_distinct"):
            get_policy(name)(np.zeros((2, 3)), 2, 3, np.random.default_rng(0))
    assert get_policy("shared")(None, 1, 5).tolist() == [0] * 5


def test_unknown_policy_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_policy("hungarain")
    for name in POLICIES:
        assert name in str(err.value)


def test_random_policy_is_distinct_reproducible_and_redrawn_per_epoch():
    questions = [TokenizedQuestion(f"q{k}", (1,), ((2,),) * 3) for k in range(40)]
    policy = get_policy("random")
    a = assign_tags(policy, questions, 6, seed=3, epoch=0)
    assert all(len(set(t.tolist())) == 3 and t.max() < 6 for t in a)
    assert all(
        np.array_equal(x, y)
        for x, y in zip(a, assign_tags(policy, questions, 6, seed=3), strict=True)
    )
    b = assign_tags(policy, questions, 6, seed=3, epoch=1)
    assert sum(not np.array_equal(x, y) for x, y in zip(a, b, strict=True)) > 30
    # Independent of batch composition: a question draws the same tags alone.
    assert np.array_equal(assign_tags(policy, questions[5:6], 6, seed=3)[0], a[5])
    # One stream per (seed, epoch, question): any other seed, epoch or id draws differently.
    draw = question_rng(0, 0, "q").integers(1 << 30, size=4).tolist()
    others = [question_rng(1, 0, "q"), question_rng(0, 1, "q"), question_rng(0, 0, "r")]
    assert all(g.integers(1 << 30, size=4).tolist() != draw for g in others)


def _naive_cost(model, q, tag_ids, pad_id, prefix, kind):
    """One sequence at a time, no padding."""
    model.eval()
    cost = np.zeros((len(tag_ids), q.num_traces))
    with torch.no_grad():
        for i, tag in enumerate(tag_ids):
            for j, trace in enumerate(q.trace_ids):
                batch = pad_batch(
                    [build_sequence(q.prompt_ids, tag, trace, prefix_tokens=prefix)], pad_id
                )
                total, count = sequence_nll(model, batch)
                cost[i, j] = (total / count).item() if kind == "mean_nll" else total.item()
    return cost


@pytest.mark.parametrize("prefix", [None, 3])
@pytest.mark.parametrize("kind", ["mean_nll", "sum_nll"])
def test_batched_cost_equals_one_sequence_at_a_time(prefix, kind):
    model, tok, tags = make_model_and_tags(num_tags=5)
    model.train()
    questions = make_questions(tok)
    costs = cost_matrices(
        model,
        questions,
        tags.tag_ids,
        pad_id=tok.pad_token_id,
        cost=kind,
        prefix_tokens=prefix,
        batch_size=7,
    )
    assert model.training  # mode restored
    assert [c.shape for c in costs] == [(5, 3), (5, 4), (5, 1)]
    for q, c in zip(questions, costs, strict=True):
        np.testing.assert_allclose(
            c, _naive_cost(model, q, tags.tag_ids, tok.pad_token_id, prefix, kind), atol=1e-5
        )


def test_prefix_longer_than_every_trace_equals_full_trace_cost():
    model, tok, tags = make_model_and_tags()
    questions = make_questions(tok)
    full = cost_matrices(model, questions, tags.tag_ids, pad_id=tok.pad_token_id)
    long = cost_matrices(
        model, questions, tags.tag_ids, pad_id=tok.pad_token_id, prefix_tokens=10_000
    )
    for a, b in zip(full, long, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cost_is_computed_without_gradient_or_dropout():
    model, tok, tags = make_model_and_tags()
    for module in model.modules():  # heavy attention dropout, active in train mode only
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    questions = make_questions(tok)
    batch = pad_batch([build_sequence(questions[0].prompt_ids, 1, questions[0].trace_ids[0])], 0)
    model.train()
    with torch.no_grad():
        assert not torch.equal(sequence_nll(model, batch)[0], sequence_nll(model, batch)[0])
    with grad_modes_of_forwards(model) as grad_modes:
        a = cost_matrices(model, questions, tags.tag_ids, pad_id=tok.pad_token_id)
        b = cost_matrices(model, questions, tags.tag_ids, pad_id=tok.pad_token_id)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert grad_modes and not any(grad_modes)  # every cost forward ran without autograd


def test_batched_matching_equals_per_question_matching():
    model, tok, tags = make_model_and_tags()
    questions = make_questions(tok)
    policy = get_policy("hungarian")
    together = assign_tags(
        policy, questions, 4, cost_matrices(model, questions, tags.tag_ids, pad_id=0)
    )
    for k, q in enumerate(questions):
        alone = assign_tags(policy, [q], 4, cost_matrices(model, [q], tags.tag_ids, pad_id=0))
        assert np.array_equal(alone[0], together[k])


def test_unknown_cost_kind():
    model, tok, tags = make_model_and_tags()
    with pytest.raises(ValueError, match="mean_nll"):
        cost_matrices(model, make_questions(tok), tags.tag_ids, pad_id=0, cost="nll")


def _counting(model, calls):
    """A ``forward=`` for cost_matrices that records each batch and whether eval mode is on."""

    def forward(batch):
        calls.append((batch.input_ids.shape[0], model.training))
        return sequence_nll(model, batch)

    return forward


@pytest.mark.parametrize("min_forwards", [0, 1, 3, 7])
def test_min_forwards_pads_with_dummy_forwards_and_keeps_the_costs(min_forwards):
    model, tok, tags = make_model_and_tags()
    questions = make_questions(tok)
    # forward= always scores whole sequences (FSDP), so compare with that path bit for bit.
    plain = cost_matrices(
        model, questions, tags.tag_ids, pad_id=0, batch_size=12, prompt_cache=False
    )
    calls = []
    padded = cost_matrices(
        model, questions, tags.tag_ids, pad_id=0, batch_size=12,
        forward=_counting(model, calls), min_forwards=min_forwards,
    )  # fmt: skip
    natural = -(-4 * 8 // 12)  # 4 tags x 8 traces in batches of 12 -> 3 forwards
    assert len(calls) == max(natural, min_forwards)
    assert all(not training for _, training in calls)  # eval mode for padding forwards too
    assert [n for n, _ in calls[natural:]] == [1] * (len(calls) - natural)  # 1-row dummies
    assert model.training
    for a, b in zip(plain, padded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_rank_without_questions_still_runs_min_forwards():
    model, _, tags = make_model_and_tags()
    calls = []
    with grad_modes_of_forwards(model) as grad_modes:
        costs = cost_matrices(
            model, [], tags.tag_ids, pad_id=0, forward=_counting(model, calls), min_forwards=2
        )
    assert costs == [] and len(calls) == 2
    assert grad_modes == [False, False]  # the padding forwards build no graph either


def test_forward_callable_gives_the_costs_of_sequence_nll():
    from ssft.train.setup import SequenceNLL

    model, tok, tags = make_model_and_tags()
    net, questions = SequenceNLL(model), make_questions(tok)
    net.train()
    via_net = cost_matrices(
        net, questions, tags.tag_ids, pad_id=0, prefix_tokens=4,
        forward=lambda b: net(b.input_ids, b.attention_mask, b.labels),
    )  # fmt: skip
    assert net.training and model.training
    direct = cost_matrices(
        model, questions, tags.tag_ids, pad_id=0, prefix_tokens=4, prompt_cache=False
    )
    for a, b in zip(via_net, direct, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cost_forward_count_is_what_the_busiest_rank_needs():
    _, tok, _ = make_model_and_tags()
    questions = make_questions(tok)  # 3, 4 and 1 traces
    # 4 tags: rank sizes 4*(3+1)=16 and 4*4=16 sequences; an idle rank needs 0.
    assert cost_forward_count([(0, 2), (1,)], questions, 4, 5) == 4
    assert cost_forward_count([(0, 2), (1,), ()], questions, 4, 16) == 1
    assert cost_forward_count([(2,), ()], questions, 4, 3) == 2
    assert cost_forward_count([(), ()], questions, 4, 3) == 0
    # The count is what cost_matrices runs without padding.
    model, tok, tags = make_model_and_tags()
    for rank in ((0, 2), (1,)):
        calls = []
        mine = [questions[i] for i in rank]
        cost_matrices(
            model, mine, tags.tag_ids, pad_id=0, batch_size=5, forward=_counting(model, calls)
        )
        assert len(calls) == cost_forward_count([rank], questions, 4, 5)
