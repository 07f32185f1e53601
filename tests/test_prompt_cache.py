"""The prompt-cache cost pass gives the full-sequence costs and the same assignments."""

import numpy as np
import pytest
import torch

from ssft.method.logprobs import sequence_nll
from ssft.method.matching import assign_tags, cost_matrices, get_policy
from ssft.method.prompt_cache import encode_prompts
from ssft.method.sequences import TokenizedQuestion, build_sequence, pad_batch
from tests.conftest import grad_modes_of_forwards, make_model_and_tags, make_questions


def _both(model, questions, tag_ids, **kwargs):
    full = cost_matrices(model, questions, tag_ids, pad_id=0, prompt_cache=False, **kwargs)
    cached = cost_matrices(model, questions, tag_ids, pad_id=0, prompt_cache=True, **kwargs)
    return full, cached


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("prefix", [None, 1, 3, 10_000])
@pytest.mark.parametrize("kind", ["mean_nll", "sum_nll"])
def test_cached_prompt_costs_equal_full_sequence_costs(kind, prefix, tie):
    model, tok, tags = make_model_and_tags(num_tags=5, tie=tie)
    model.train()
    questions = make_questions(tok)  # prompts of different lengths: right padding is exercised
    assert len({len(q.prompt_ids) for q in questions}) > 1
    with grad_modes_of_forwards(model) as grad_modes:
        full, cached = _both(
            model, questions, tags.tag_ids, cost=kind, prefix_tokens=prefix, batch_size=7
        )
    assert model.training  # mode restored
    assert grad_modes and not any(grad_modes)  # both passes ran without autograd
    assert [c.shape for c in cached] == [(5, 3), (5, 4), (5, 1)]
    for a, b in zip(full, cached, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_grouping_of_prompts_does_not_change_the_costs(batch_size):
    """batch_size bounds both the prompt groups and the continuation micro-batches."""
    model, tok, tags = make_model_and_tags()
    questions = make_questions(tok)
    full, cached = _both(model, questions, tags.tag_ids, batch_size=batch_size, prefix_tokens=4)
    for a, b in zip(full, cached, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_model_with_post_processed_logits_takes_the_logits_path_with_the_cache():
    """A config that forbids the plain-head shortcut still scores from the prompt cache."""
    model, tok, tags = make_model_and_tags()
    model.config.final_logit_softcapping = 30.0  # Llama ignores it; our helper then uses logits
    questions = make_questions(tok)
    full, cached = _both(model, questions, tags.tag_ids, prefix_tokens=5)
    for a, b in zip(full, cached, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_same_hungarian_assignments_as_full_sequences():
    model, tok, tags = make_model_and_tags(num_tags=6)
    rng = np.random.default_rng(0)
    eot = tok.eos_token_id
    questions = [
        TokenizedQuestion(
            f"q{k}",
            tuple(rng.integers(10, 90, size=rng.integers(3, 20)).tolist()),
            tuple(
                (*rng.integers(10, 90, size=rng.integers(2, 30)).tolist(), eot)
                for _ in range(rng.integers(1, 7))
            ),
        )
        for k in range(12)
    ]
    policy = get_policy("hungarian")
    for prefix in (None, 4):
        full, cached = _both(model, questions, tags.tag_ids, prefix_tokens=prefix, batch_size=16)
        a = assign_tags(policy, questions, 6, full)
        b = assign_tags(policy, questions, 6, cached)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_encoded_prompt_continuation_equals_the_whole_sequence_per_token():
    """Token by token, not just per sequence: the cache carries the prompt's exact context."""
    model, tok, tags = make_model_and_tags()
    model.eval()
    q = make_questions(tok)[1]
    tag, trace = tags.tag_ids[2], q.trace_ids[1]
    whole = pad_batch([build_sequence(q.prompt_ids, tag, trace)], 0)
    with torch.no_grad():
        expected, count = sequence_nll(model, whole)
        encoded = encode_prompts(model, [q.prompt_ids, (5, 6)], 0, torch.device("cpu"))
        cont = pad_batch([build_sequence((), tag, trace)], 0)
        got, got_count = sequence_nll(model, cont, cached_prompt=encoded.select(torch.tensor([0])))
    assert got_count.item() == count.item() == len(trace)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
