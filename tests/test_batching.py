import dataclasses
import math
import typing

import pytest

from ssft.method.sequences import TokenizedQuestion
from ssft.train.batching import (
    epoch_order,
    micro_batch_count,
    plan_step,
    supervised_tokens,
)
from ssft.train.optim import lr_factor


def questions(n=10):
    # question k has k % 3 + 1 traces of k + 2 tokens each
    return [
        TokenizedQuestion(f"q{k}", (1, 2), tuple((5,) * (k + 2) for _ in range(k % 3 + 1)))
        for k in range(n)
    ]


def test_plan_covers_each_question_once_per_epoch_whatever_the_world_size():
    qs = questions()
    for world in (1, 2, 3):
        seen = []
        for step in range(4):  # ceil(10 / 3) = 4 steps per epoch
            plan = plan_step(
                step, qs, questions_per_step=3, grad_accum_steps=2, world_size=world, seed=0
            )
            assert plan.epoch == 0 and len(plan.chunks) == 2
            assert all(len(chunk) == world for chunk in plan.chunks)
            seen += [i for chunk in plan.chunks for rank in chunk for i in rank]
            assert plan.global_tokens == sum(
                supervised_tokens(qs[i]) for c in plan.chunks for r in c for i in r
            )
        assert sorted(seen) == list(range(10))
    assert (
        plan_step(4, qs, questions_per_step=3, grad_accum_steps=1, world_size=1, seed=0).epoch == 1
    )


def test_plan_is_deterministic_and_reshuffles_each_epoch():
    assert epoch_order(10, 0, 0).tolist() == epoch_order(10, 0, 0).tolist()
    assert epoch_order(10, 0, 0).tolist() != epoch_order(10, 0, 1).tolist()
    assert epoch_order(10, 0, 0).tolist() != epoch_order(10, 1, 0).tolist()


def test_ranks_are_balanced_by_tokens_and_micro_batches_padded_to_the_max():
    qs = questions(8)
    plan = plan_step(0, qs, questions_per_step=8, grad_accum_steps=1, world_size=2, seed=0)
    (chunk,) = plan.chunks
    loads = [sum(supervised_tokens(qs[i]) for i in rank) for rank in chunk]
    assert abs(loads[0] - loads[1]) <= max(supervised_tokens(q) for q in qs)
    traces = [sum(qs[i].num_traces for i in rank) for rank in chunk]
    assert micro_batch_count(chunk, qs, 2) == max(-(-t // 2) for t in traces)
    assert micro_batch_count(((), ()), qs, 2) == 1  # an empty chunk still runs one pass


def test_tag_loss_adds_one_token_per_trace():
    q = questions(3)[2]
    assert supervised_tokens(q, tag_loss=True) == supervised_tokens(q) + q.num_traces


def test_methods_map_to_policies():
    from ssft.method.table import get_method

    assert (get_method("ssft").policy, get_method("ssft").shared_tag) == ("hungarian", False)
    assert (get_method("sft_mixed").policy, get_method("sft_mixed").shared_tag) == ("shared", True)
    assert get_method("single").max_traces == 1 and get_method("ssft").needs_cost
    with pytest.raises(ValueError, match="valid methods"):
        get_method("dpo")


def test_lr_schedule_shapes():
    assert [lr_factor(s, 10, 2, "constant") for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(2, 10, 2, "cosine") == 1.0
    # The last step (9) still trains: the decay would reach 0 at step 10, one past it.
    assert lr_factor(9, 10, 2, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_factor(9, 10, 2, "cosine") > 0 and lr_factor(10, 10, 2, "cosine") == 0.0
    assert lr_factor(9, 10, 0, "linear") == pytest.approx(0.1)
    assert lr_factor(0, 10, 0, "linear") == 1.0
    linear = [lr_factor(s, 10, 0, "linear") for s in range(10)]
    assert linear == sorted(linear, reverse=True) and min(linear) > 0
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(5, 10, 0, "step")


def test_every_method_list_is_derived_from_the_one_table():
    from ssft.config import EvalConfig, Method, PipelineConfig
    from ssft.method.table import BASELINES, METHOD_NAMES, SHARED_TAG_METHODS, get_method

    assert typing.get_args(Method) == METHOD_NAMES
    # A method that trains an SSFT model further (GFPO) is a stage, never a baseline.
    assert BASELINES == tuple(m for m in METHOD_NAMES if m not in ("ssft", "gfpo"))
    assert get_method("gfpo").after_ssft and not get_method("random").after_ssft
    assert SHARED_TAG_METHODS == ("sft_mixed", "single")
    help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(EvalConfig)}
    assert "(sft_mixed, single)" in help_text["samples_per_tag"]
    assert PipelineConfig().methods == ("ssft", "sft_mixed", "random")
    with pytest.raises(ValueError, match="valid methods: ssft, sft_mixed, random, single"):
        get_method("sft-mixed")


def test_planned_steps_are_the_epochs_cut_at_max_steps():
    from ssft.train.batching import planned_steps

    assert planned_steps(50, 8, 3, None) == 21  # ceil(50 / 8) = 7 steps per epoch
    assert planned_steps(50, 8, 3, 10) == 10
    assert planned_steps(50, 8, 3, 100) == 21
