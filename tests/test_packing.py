"""Packed micro-batches give the padded batch's per-sequence losses and gradients."""

import pytest
import torch

from ssft.method.logprobs import sequence_nll, token_nll
from ssft.method.losses import matched_sequences
from ssft.method.matching import assign_tags, get_policy
from ssft.method.sequences import IGNORE_INDEX, pad_batch
from ssft.train.packing import PackedBatch, pack_batch, pack_rows
from ssft.train.setup import SequenceNLL
from tests.conftest import make_model_and_tags, make_questions


def packed_sequence_nll(model: torch.nn.Module, packed: PackedBatch, chunk_tokens: int = 4096):
    """Per input sequence of a packed batch, NLL sum and supervised-token count [S]: what
    ``sequence_nll`` gives per row of the padded batch, if packing keeps sequences apart."""
    nll = token_nll(model, packed.batch, chunk_tokens)
    scored = packed.batch.labels != IGNORE_INDEX
    owner = packed.segments[scored]
    sums = torch.zeros(packed.num_sequences, dtype=torch.float32, device=nll.device)
    counts = torch.zeros_like(sums)
    sums = sums.index_add(0, owner, nll[scored])
    counts = counts.index_add(0, owner, torch.ones_like(nll[scored]))
    return sums, counts


def _sequences(tok, tags, policy: str, tag_loss: bool = False):
    questions = make_questions(tok)
    if policy == "shared":  # SFT: every trace under one tag
        assignments = assign_tags(get_policy("shared"), questions, 1)
        tag_ids = (tags.shared_tag_id,)
    else:  # SSFT-like: distinct tags per trace
        assignments = assign_tags(get_policy("random"), questions, tags.num_tags, seed=3)
        tag_ids = tags.tag_ids
    return matched_sequences(questions, assignments, tag_ids, tag_loss=tag_loss)


def test_rows_are_first_fit_decreasing_and_never_wider_than_the_longest():
    assert pack_rows([9, 3, 5, 4]) == [[0], [2, 3], [1]]
    assert pack_rows([9, 3, 5, 4], capacity=12) == [[0, 1], [2, 3]]
    assert pack_rows([2, 2, 2]) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([5], capacity=4)


def test_packed_tensors_exact():
    seqs = [([1, 2, 3], [IGNORE_INDEX, 2, 3]), ([4, 5], [4, 5]), ([6, 7, 8, 9], [-100, -100, 8, 9])]
    packed = pack_batch(seqs, pad_id=0)
    b = packed.batch
    assert b.attention_mask is None and packed.num_sequences == 3
    assert b.input_ids.tolist() == [[6, 7, 8, 9], [1, 2, 3, 0], [4, 5, 0, 0]]
    # the first label of every sequence is never scored (nothing of it precedes it)
    assert b.labels.tolist() == [[-100, -100, 8, 9], [-100, 2, 3, -100], [-100, 5, -100, -100]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 1]]
    assert packed.segments.tolist() == [[2, 2, 2, 2], [0, 0, 0, -1], [1, 1, -1, -1]]
    wide = pack_batch(seqs, pad_id=0, capacity=9).batch
    assert wide.input_ids.tolist() == [[6, 7, 8, 9, 1, 2, 3, 4, 5]]
    assert wide.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1]]


@pytest.mark.parametrize("policy", ["hungarian", "shared"])  # SSFT tags, SFT shared tag
@pytest.mark.parametrize("capacity", [None, 64, 512])  # longest, a few rows, one row
@pytest.mark.parametrize("tag_loss", [False, True])
def test_packed_losses_and_gradients_equal_the_padded_ones(policy, capacity, tag_loss):
    model, tok, tags = make_model_and_tags(tie=False)
    seqs = _sequences(tok, tags, policy, tag_loss)
    assert len({len(ids) for ids, _ in seqs}) > 3  # the lengths vary
    padded = pad_batch(seqs, tok.pad_token_id)
    packed = pack_batch(seqs, tok.pad_token_id, capacity)
    if capacity is None:  # fewer rows than sequences, none wider than the longest
        assert packed.batch.input_ids.shape[0] < len(seqs)
        assert packed.batch.input_ids.shape[1] == padded.input_ids.shape[1]
    want_sums, want_counts = sequence_nll(model, padded, chunk_tokens=7)
    want_sums.sum().backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    sums, counts = packed_sequence_nll(model, packed, chunk_tokens=7)
    torch.testing.assert_close(counts, want_counts)
    torch.testing.assert_close(sums, want_sums, atol=1e-4, rtol=1e-5)
    sums.sum().backward()
    for want, p in zip(want_grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, want, atol=1e-5, rtol=1e-4)


def test_the_training_module_takes_packed_positions():
    """``SequenceNLL`` (what DDP wraps) returns the same total from a packed batch."""
    model, tok, tags = make_model_and_tags()
    seqs = _sequences(tok, tags, "hungarian")
    net = SequenceNLL(model)
    padded = pad_batch(seqs, tok.pad_token_id)
    packed = pack_batch(seqs, tok.pad_token_id).batch
    want, _ = net(padded.input_ids, padded.attention_mask, padded.labels)
    got, _ = net(packed.input_ids, packed.attention_mask, packed.labels, packed.position_ids)
    torch.testing.assert_close(got.sum(), want.sum(), atol=1e-4, rtol=1e-5)


def test_ignoring_the_positions_would_mix_sequences():
    """Guard: the same packed row scored as ONE sequence gives different losses."""
    model, tok, tags = make_model_and_tags()
    seqs = _sequences(tok, tags, "hungarian")
    packed = pack_batch(seqs, tok.pad_token_id, capacity=512)
    right, _ = packed_sequence_nll(model, packed)
    packed.batch.position_ids = None
    packed.batch.attention_mask = torch.ones_like(packed.batch.input_ids)
    wrong, _ = packed_sequence_nll(model, packed)
    assert not torch.allclose(right, wrong, atol=1e-3)


def test_per_sequence_weights_follow_each_token_into_its_packed_row():
    """The loop's weighted loss, ``sum_k w_k * NLL_sum_k``, is the same packed or padded, also
    when a row holds several sequences with different weights."""
    from ssft.train.loop import _token_weights

    model, tok, tags = make_model_and_tags()
    seqs = _sequences(tok, tags, "random")
    weights = torch.linspace(-1.0, 2.0, len(seqs)).tolist()  # any float, negative included
    padded = pad_batch(seqs, tok.pad_token_id)
    sums, _ = sequence_nll(model, padded)
    expected = (sums * torch.tensor(weights)).sum()
    packed = pack_batch(seqs, tok.pad_token_id, capacity=2 * max(len(s[0]) for s in seqs))
    assert packed.batch.input_ids.shape[0] < len(seqs)  # rows really hold several sequences
    got = token_nll(model, packed.batch) * _token_weights(weights, packed.batch, packed.segments)
    torch.testing.assert_close(got.sum(), expected, rtol=1e-5, atol=1e-5)
    per_row = token_nll(model, padded) * _token_weights(weights, padded, None)
    torch.testing.assert_close(per_row.sum(), expected, rtol=1e-5, atol=1e-5)
