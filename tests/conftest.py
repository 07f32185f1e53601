"""Shared fixtures: a locally built character tokenizer and tiny random-weight models."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

from ssft.method.forking_tokens import add_forking_tokens
from ssft.method.sequences import TokenizedQuestion, end_of_turn_id, format_prompt, tokenize_trace
from ssft.models import build_char_tokenizer, build_random_model

TRACES = {
    "q-add": (
        "12 + 34 = ?",
        ["2+4=6; 1+3=4; \\boxed{46}", "12+30=42; 42+4=46 \\boxed{46}", "34+12=46"],
    ),
    "q-mul": ("7 * 8 = ?", ["7*8=56 \\boxed{56}", "8+8+8+8+8+8+8=56", "70-14=56", "\\boxed{56}"]),
    "q-one": ("9 - 4 = ?", ["9-4=5"]),
}


def last_wins(*overrides: str) -> list[str]:
    """Test helpers' default ``key=value`` overrides, then the test's own: one per key (the
    later one wins), since a key given twice is an error on the command line."""
    by_key: dict[str, str] = {}
    for item in overrides:
        by_key.pop(item.partition("=")[0], None)
        by_key[item.partition("=")[0]] = item
    return list(by_key.values())


@contextlib.contextmanager
def grad_modes_of_forwards(model: torch.nn.Module) -> Iterator[list[bool]]:
    """Whether autograd was on in each forward of ``model`` inside the block (one entry per
    call of its input embedding), to check that a pass builds no graph at all."""
    seen: list[bool] = []
    embed = model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    try:
        yield seen
    finally:
        handle.remove()


def nll_sum_and_count(model: torch.nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's NLL sum over supervised tokens (with grad) and their count: the training
    loss before division by the global count (``SequenceNLL`` rows, summed)."""
    from ssft.method.logprobs import sequence_nll

    sums, counts = sequence_nll(model, batch)
    return sums.sum(), counts.sum()


def tiny_model_config(tie: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        dtype="float32",
    )


@pytest.fixture
def tokenizer():
    return build_char_tokenizer()


def make_model_and_tags(num_tags: int = 4, tie: bool = True, seed: int = 0):
    """A tiny Llama with the forking tokens added; float32 on CPU."""
    tok = build_char_tokenizer()
    model = build_random_model(tiny_model_config(tie), len(tok), tok, seed=seed)
    tags = add_forking_tokens(tok, model, num_tags=num_tags, seed=seed)
    return model, tok, tags


def make_questions(tok, which=("q-add", "q-mul", "q-one")) -> list[TokenizedQuestion]:
    eot = end_of_turn_id(tok)
    out = []
    for qid in which:
        prompt, traces = TRACES[qid]
        out.append(
            TokenizedQuestion(
                question_id=qid,
                prompt_ids=format_prompt(tok, prompt),
                trace_ids=tuple(tokenize_trace(tok, t, eot) for t in traces),
            )
        )
    return out


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One embedded Ray for the session (``address="local"``: never a stray cluster).

    ``SSFT_FAULT_DIR`` is set before Ray starts so every worker inherits it: tests drop a
    ``crash-shard-<i>`` file there to make that shard's worker die once.
    """
    import os

    import ray

    fault_dir = tmp_path_factory.mktemp("faults")
    os.environ["SSFT_FAULT_DIR"] = str(fault_dir)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield fault_dir
    ray.shutdown()


@pytest.fixture(scope="session")
def known_modes_traces(tmp_path_factory):
    """A trace-set Parquet of 48 known-modes questions from the four strategy teachers."""
    from ssft.config.presets import tiny_test
    from ssft.data.question_sources import load_questions
    from ssft.data.trace_building import build_shard
    from ssft.data.trace_set import write_trace_sets

    cfg = tiny_test()
    cfg.build.num_questions = 48
    sets, _, _ = build_shard(load_questions(cfg.build), cfg.build, cfg.seed)
    path = tmp_path_factory.mktemp("traces") / "trace_sets.parquet"
    write_trace_sets(path, sets)
    return path
