"""FSDP2 helpers (``ssft.train.parallel``) in one process: a 1-rank gloo group, real DTensors.

Multi-rank behaviour (sharded gradients, padded cost passes, gathered checkpoints) is
covered by the 2-worker runs in ``tests/test_train_ray.py``.
"""

import copy

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from ssft.method.sequences import build_sequence, pad_batch
from ssft.train.checkpointing import save_model
from ssft.train.optim import build_optimizer
from ssft.train.parallel import (
    clip_grad_norm,
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_full_optimizer_state,
    wrap_fsdp,
)
from ssft.train.setup import SequenceNLL
from tests.conftest import make_model_and_tags, make_questions


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _batch(tok, tags):
    q = make_questions(tok)[1]
    return pad_batch([build_sequence(q.prompt_ids, tags.tag_ids[1], t) for t in q.trace_ids], 0)


def _step(net, optimizer, batch, max_norm, clip):
    sums, _ = net(batch.input_ids, batch.attention_mask, batch.labels)
    sums.sum().backward()
    norm = clip(max_norm)
    optimizer.step()
    optimizer.zero_grad()
    return sums.detach(), norm


@pytest.mark.parametrize("tie", [True, False])
def test_sharded_training_matches_the_plain_model(process_group, tie, tmp_path):
    model, tok, tags = make_model_and_tags(tie=tie)
    plain = SequenceNLL(copy.deepcopy(model))
    net = wrap_fsdp(SequenceNLL(model))
    assert is_sharded(net) and not is_sharded(plain)
    assert all(isinstance(p, DTensor) for p in net.parameters())
    opt, plain_opt = build_optimizer(net, 1e-2, 0.1), build_optimizer(plain, 1e-2, 0.1)
    batch = _batch(tok, tags)
    for _ in range(2):
        params = [p for g in opt.param_groups for p in g["params"]]
        sums, norm = _step(net, opt, batch, 0.5, lambda m, ps=params: clip_grad_norm(ps, m))
        ref_sums, ref_norm = _step(
            plain, plain_opt, batch, 0.5,
            lambda m: torch.nn.utils.clip_grad_norm_(plain.parameters(), m),
        )  # fmt: skip
        torch.testing.assert_close(sums, ref_sums)
        assert not isinstance(norm, DTensor) and norm > 0.5  # clipping was active
        torch.testing.assert_close(norm, ref_norm)
    weights = full_model_state(net, prefix="lm.")
    assert set(weights) == set(plain.lm.state_dict())
    for name, value in plain.lm.state_dict().items():
        assert weights[name].device.type == "cpu" and not isinstance(weights[name], DTensor)
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6)
    # Saved like an ordinary save_pretrained (tied weights once) and loadable.
    save_model(model, tmp_path / "sharded", weights)
    plain.lm.save_pretrained(tmp_path / "plain")
    saved = load_file(tmp_path / "sharded" / "model.safetensors")
    assert set(saved) == set(load_file(tmp_path / "plain" / "model.safetensors"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, weights[name])


def test_optimizer_state_has_the_plain_layout_and_loads_back(process_group):
    model, tok, tags = make_model_and_tags()
    plain = SequenceNLL(copy.deepcopy(model))
    net = wrap_fsdp(SequenceNLL(model))
    opt, plain_opt = build_optimizer(net, 1e-2, 0.1), build_optimizer(plain, 1e-2, 0.1)
    batch = _batch(tok, tags)
    _step(net, opt, batch, 1.0, lambda m: None)
    _step(plain, plain_opt, batch, 1.0, lambda m: None)
    full, ref = full_optimizer_state(net, opt), plain_opt.state_dict()
    assert full["param_groups"] == ref["param_groups"]  # index-keyed, like Optimizer.state_dict
    assert set(full["state"]) == set(ref["state"])
    for k, entry in ref["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(full["state"][k][key], value, rtol=1e-4, atol=1e-6)
    # A plain (DDP) checkpoint's optimizer state loads into a fresh sharded optimizer.
    fresh_net = wrap_fsdp(SequenceNLL(copy.deepcopy(plain.lm)))
    fresh = build_optimizer(fresh_net, 1e-2, 0.1)
    load_full_optimizer_state(fresh_net, fresh, ref)
    again = full_optimizer_state(fresh_net, fresh)
    as_lists = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
        for g in ref["param_groups"]
    ]
    assert again["param_groups"] == as_lists  # (betas come back as a list)
    for k, entry in ref["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(again["state"][k][key], value)


def test_wrapping_needs_a_process_group_and_decoder_layers(process_group):
    with pytest.raises(ValueError, match="no decoder layers"):
        wrap_fsdp(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    dist.destroy_process_group()
    try:
        model, _, _ = make_model_and_tags()
        with pytest.raises(RuntimeError, match="process group"):
            wrap_fsdp(SequenceNLL(model))
    finally:
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
