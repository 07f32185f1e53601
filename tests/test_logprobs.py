import math

import pytest
import torch

import ssft.method.logprobs as logprobs
from ssft.method.losses import matched_sequences
from ssft.method.matching import assign_tags, get_policy
from ssft.method.sequences import IGNORE_INDEX, pad_batch
from tests.conftest import make_model_and_tags, make_questions, nll_sum_and_count


def _batch(tok, tags):
    questions = make_questions(tok)
    assignments = assign_tags(get_policy("random"), questions, tags.num_tags, seed=1)
    return pad_batch(matched_sequences(questions, assignments, tags.tag_ids), tok.pad_token_id)


def _naive_nll(model, batch):
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = batch.labels[:, 1:]
    picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    out = torch.zeros(batch.labels.shape)
    out[:, 1:] = torch.where(targets != IGNORE_INDEX, -picked, 0.0)
    return out


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_head_equals_full_log_softmax(chunk):
    model, tok, tags = make_model_and_tags(tie=False)
    batch = _batch(tok, tags)
    expected = _naive_nll(model, batch)
    got = logprobs.token_nll(model, batch, chunk_tokens=chunk)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Gradients agree too (the chunks are recomputed in backward).
    expected.sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logprobs.token_nll(model, batch, chunk_tokens=chunk).sum().backward()
    for a, b in zip(ref, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fallback_through_model_logits_agrees(monkeypatch):
    model, tok, tags = make_model_and_tags()
    batch = _batch(tok, tags)
    fast = logprobs.token_nll(model, batch, chunk_tokens=5)
    monkeypatch.setattr(logprobs, "_has_plain_head", lambda m: False)
    torch.testing.assert_close(logprobs.token_nll(model, batch, chunk_tokens=5), fast)


def test_convention_matches_transformers_loss():
    model, tok, tags = make_model_and_tags()
    batch = _batch(tok, tags)
    total, count = nll_sum_and_count(model, batch)
    hf = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
    torch.testing.assert_close(total / count, hf.loss, atol=1e-5, rtol=1e-5)


def test_analytic_uniform_model():
    """A zero output head predicts uniformly: every supervised token costs exactly log V."""
    model, tok, tags = make_model_and_tags(tie=False)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    batch = _batch(tok, tags)
    total, count = nll_sum_and_count(model, batch)
    assert count.item() == (batch.labels[:, 1:] != IGNORE_INDEX).sum().item()
    assert total.item() == pytest.approx(count.item() * math.log(len(tok)), rel=1e-5)
