"""The numerics that change on a GPU, run on ``SSFT_TEST_DEVICE`` (default: CUDA when there is
one, else the CPU): bf16 autocast against float32, the prompt-cached cost against the
recomputed one, packed rows against padded ones, and the non-finite skip on the device.

``benchmarks/gpu_check.py`` runs these (``-m gpu``) on a GPU machine with
``SSFT_TEST_DEVICE=cuda``; in the suite they run on whatever device there is.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from ssft.method.logprobs import sequence_nll
from ssft.method.losses import matched_sequences
from ssft.method.matching import assign_tags, cost_matrices, get_policy
from ssft.method.sequences import build_sequence, pad_batch
from ssft.train.packing import pack_batch
from tests.conftest import make_model_and_tags, make_questions

pytestmark = pytest.mark.gpu


@pytest.fixture
def device() -> torch.device:
    name = os.environ.get("SSFT_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"SSFT_TEST_DEVICE={name} but torch sees no CUDA device")
    return torch.device(name)


def _model(device: torch.device, num_tags: int = 4):
    model, tok, tags = make_model_and_tags(num_tags=num_tags)
    return model.to(device), tok, tags


def _sequences(tok, tags):
    questions = make_questions(tok)
    assigned = assign_tags(get_policy("random"), questions, tags.num_tags, seed=3)
    return matched_sequences(questions, assigned, tags.tag_ids)


def test_bf16_autocast_loss_equals_float32_within_tolerance(device):
    model, tok, tags = _model(device)
    batch = pad_batch(_sequences(tok, tags), tok.pad_token_id).to(device)
    with torch.no_grad():
        exact, counts = sequence_nll(model, batch)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            mixed, _ = sequence_nll(model, batch)
    assert mixed.dtype == torch.float32  # the loss is reduced in float32 under autocast
    per_token = (mixed - exact).abs() / counts
    assert float(per_token.max()) < 0.05, per_token  # bf16 keeps ~3 significant digits


def test_prompt_cached_cost_equals_the_recomputed_cost(device):
    model, tok, tags = _model(device, num_tags=6)
    questions = make_questions(tok)
    kwargs = dict(pad_id=tok.pad_token_id, prefix_tokens=4, batch_size=8)
    full = cost_matrices(model, questions, tags.tag_ids, prompt_cache=False, **kwargs)
    cached = cost_matrices(model, questions, tags.tag_ids, prompt_cache=True, **kwargs)
    for a, b in zip(full, cached, strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-4)


def test_packed_rows_equal_padded_rows(device):
    model, tok, tags = _model(device)
    seqs = _sequences(tok, tags)
    padded = pad_batch(seqs, tok.pad_token_id).to(device)
    packed = pack_batch(seqs, tok.pad_token_id, capacity=2 * max(len(s[0]) for s in seqs))
    packed = packed.to(device)
    assert packed.batch.input_ids.shape[0] < len(seqs)  # rows really hold several sequences
    with torch.no_grad():
        sums, _ = sequence_nll(model, padded)
        row_sums, _ = sequence_nll(model, packed.batch)
    torch.testing.assert_close(row_sums.sum(), sums.sum(), rtol=1e-4, atol=1e-4)


def test_a_nonfinite_gradient_skips_the_update_on_the_device(device, known_modes_traces):
    from ssft.config import load_config
    from ssft.train.loop import TrainContext, train_step
    from ssft.train.setup import setup_run

    cfg = load_config(
        "tests/configs/tiny_test.yaml",
        [f"data.train_path={known_modes_traces}", "train.questions_per_step=8"],
    )
    run = setup_run(cfg, TrainContext(device=device))
    q0 = run.questions[0]
    dummy = build_sequence(q0.prompt_ids, run.tag_ids[0], q0.trace_ids[0])
    before = [p.detach().clone() for p in run.model.parameters()]
    hook = run.model.get_input_embeddings().weight.register_hook(
        lambda g: torch.full_like(g, math.nan)
    )
    out = train_step(run, 0, dummy)
    hook.remove()
    assert not math.isfinite(float(out.grad_norm))
    after = list(run.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    out = train_step(run, 1, dummy)
    assert math.isfinite(float(out.grad_norm))
    assert not torch.equal(before[0], next(run.model.parameters()))
