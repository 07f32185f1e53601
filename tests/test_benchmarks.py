"""The step-cost benchmark runs end to end on the tiny model and its FLOP model adds up."""

import math

import pytest

from benchmarks.flops import ModelShape, closed_form_ratio, cost_flops, train_flops
from benchmarks.step_cost import DEFAULT_VARIANTS, main

TINY = ["--model", "tiny", "--threads", "1", "--warmup", "1", "--steps", "2"]
SIZES = ["--prompt", "8", "--trace", "12", "--prefix", "4", "--questions", "2"]


def test_tiny_benchmark_prints_every_variant_with_sane_figures(capsys):
    results = main([*TINY, *SIZES, "--tags", "3", "--traces", "2", "--length-spread", "0"])
    out = capsys.readouterr().out
    assert [r["variant"] for r in results] == DEFAULT_VARIANTS
    for r in results:
        assert f"| {r['variant']} |" in out
        assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and math.isfinite(r["loss"])
        assert 0.0 <= r["matching_share"] <= 1.0
        assert r["peak_bytes"] is None and r["mem_ratio"] is None and r["mfu"] is None  # CPU
    by = {r["variant"]: r for r in results}
    assert by["sft"]["ratio"] == 1.0 and by["sft"]["flop_ratio"] == 1.0
    # The FLOP model: a cost pass costs extra; the cache saves the prompt; prefixes are cheaper.
    assert 1.0 < by["ssft"]["flop_ratio"] < by["ssft-recompute"]["flop_ratio"]
    assert by["ssft"]["flop_ratio"] < by["ssft-full"]["flop_ratio"]
    # Same data, same initial weights, same tokens: the step tokens are identical.
    assert {r["step_tokens"] for r in results} == {2 * 2 * (8 + 1 + 12)}
    # SFT-mixed and SSFT train different tags, but from the same initial model and data their
    # first losses are both about log(vocab) and close to each other.
    assert by["ssft"]["loss"] == pytest.approx(by["sft"]["loss"], rel=0.05)
    assert "closed form" in out and "| SSFT/SFT | FLOP model |" in out
    # Packing changes the layout, not the model: same loss and FLOPs as padding; the packed
    # rows are compared with the packed SFT row.
    for method in ("sft", "ssft"):
        padded, packed = by[method], by[f"{method}-packed"]
        assert packed["loss"] == pytest.approx(padded["loss"], rel=1e-5)
        assert packed["model_flops"] == padded["model_flops"]
    assert by["sft-packed"]["ratio"] == 1.0


def test_length_spread_varies_lengths_around_the_same_mean(capsys):
    args = [*TINY, *SIZES, "--tags", "3", "--traces", "4", "--questions", "4"]
    fixed = main([*args, "--variants", "sft", "--length-spread", "0"])[0]
    spread = main([*args, "--variants", "sft,sft-ckpt", "--length-spread", "0.5"])
    assert "lengths +-50%" in capsys.readouterr().out
    assert spread[0]["step_tokens"] != fixed["step_tokens"]
    assert spread[0]["step_tokens"] == pytest.approx(fixed["step_tokens"], rel=0.25)
    # Activation checkpointing recomputes activations: the same loss from the same start.
    assert spread[1]["loss"] == pytest.approx(spread[0]["loss"], rel=1e-5)


def test_variants_must_start_with_sft_and_dtype_must_match_the_device():
    with pytest.raises(SystemExit, match="start with 'sft'"):
        main([*TINY, "--variants", "ssft,sft"])
    with pytest.raises(SystemExit, match="bfloat16"):
        main([*TINY, "--dtype", "bfloat16"])


def test_flop_model_reduces_to_the_closed_form_for_uniform_per_token_cost():
    """Without attention and head terms every token costs the same: the issue's formula."""
    shape = ModelShape(layers=2, hidden=8, intermediate=16, heads=0, kv_heads=0, head_dim=0,
                       vocab=0)  # fmt: skip
    n_tags, prompt, trace, prefix, m = 6, 256, 3839, 256, 4
    train = train_flops(shape, prompt, [trace] * m)
    recompute = cost_flops(shape, prompt, [trace] * m, n_tags, prefix, prompt_cache=False)
    cached = cost_flops(shape, prompt, [trace] * m, n_tags, prefix, prompt_cache=True)
    seq = prompt + 1 + trace
    # The closed form leaves out the tag token (1 of P + 1 + L per pair).
    assert 1 + recompute / train == pytest.approx(
        closed_form_ratio(n_tags, prompt, trace, prefix), abs=n_tags / (3 * seq)
    )
    expected_cached = 1 + (prompt + n_tags * m * (1 + prefix)) / (3 * m * seq)
    assert 1 + cached / train == pytest.approx(expected_cached, rel=1e-12)
    one = train_flops(shape, prompt, [trace]) / 3  # a forward of the whole sequence
    assert cost_flops(shape, prompt, [trace], 1, None, False) == one


def test_qwen_shapes_count_the_published_parameter_numbers():
    """Body + embedding parameters of the Qwen2.5 shapes are the published sizes (+-5%)."""
    from transformers import Qwen2Config

    from benchmarks.step_cost import QWEN

    for name, billions in (("qwen2.5-0.5b", 0.49), ("qwen2.5-1.5b", 1.54)):
        shape = ModelShape.of(Qwen2Config(vocab_size=151936, **QWEN[name]))
        total = shape.body_params + shape.vocab * shape.hidden  # tied embeddings
        assert total / 1e9 == pytest.approx(billions, rel=0.05), name


def test_champ_extraction_benchmark_runs_on_a_few_transcripts(capsys):
    from benchmarks.champ_extraction import main

    main(["--limit", "24", "--show", "1"])
    out = capsys.readouterr().out
    assert out.startswith("24 CHAMP transcripts (270 problems")
    for mode in ("boxed", "final_answer", "last_expression"):
        assert f"\n{mode:<16}solution" in out and f"\n{mode:<16}summary" in out
    assert "agreement with CHAMP's human annotations" in out and "wall time" in out
