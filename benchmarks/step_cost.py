"""What SSFT costs over SFT: time the real training step of both on identical data.

    python benchmarks/step_cost.py --model tiny                 # CPU, seconds (CI-size check)
    python benchmarks/step_cost.py --model cpu-small            # CPU, a minute: compute-bound
    python benchmarks/step_cost.py --model smollm2-135m --variants sft,ssft   # CPU, minutes
    python benchmarks/step_cost.py --model qwen2.5-0.5b --device cuda --dtype bfloat16
    python benchmarks/step_cost.py --model qwen2.5-1.5b --device cuda --dtype bfloat16

One run builds, for each variant, a fresh model from the same seed and the same synthetic
questions (Q per step, each a prompt of about P tokens and M traces of about T tokens;
``--length-spread`` s draws every length uniformly from [(1 - s) n, (1 + s) n], default 0.5,
as real traces vary), and times ``ssft.train.loop.train_step`` (the function the training
loop runs: plan, cost pass, assignment, forward/backward, clip, optimizer step) after
warm-up steps, taking the median. Variants: ``sft`` (SFT-mixed, the shared tag, no cost
pass), ``ssft`` (Hungarian, cost on a prefix of L tokens, prompt KV cache),
``ssft-recompute`` (the same, prompt recomputed per pair), ``ssft-full`` (cost on whole
traces, prompt cache), all with right-padded, length-sorted micro-batches (the default);
``sft-packed`` and ``ssft-packed`` (``train.packing``; their ratios are to ``sft-packed``);
``sft-ckpt`` (activation checkpointing) and ``sft-compile`` (``torch.compile`` per layer),
on request only.

Printed per variant: median step time, the ratio to ``sft`` next to the FLOP model's
prediction (``benchmarks/flops.py``), tokens/s (all tokens of the loss sequences), peak
memory and its ratio to ``sft`` (CUDA ``max_memory_allocated``; "n/a" on CPU, where no
allocator statistic exists), the share of the step spent on matching (cost pass +
assignment) and, on CUDA, MFU (model FLOPs / time / the device's dense bf16 peak).

Phases are timed with a device synchronisation at their boundaries (``Run.timer``), which
adds a few microseconds per phase on a GPU. Random-init Qwen2.5-shaped models use random
token ids: step time does not depend on the values.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `ssft` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.flops import ModelShape, closed_form_ratio, cost_flops, train_flops
from ssft.config.presets import tiny_cpu
from ssft.method.forking_tokens import ForkingTokens, add_forking_tokens
from ssft.method.sequences import TokenizedQuestion, build_sequence
from ssft.train.loop import train_step
from ssft.train.setup import TrainContext, build_run


@dataclass(frozen=True)
class Workload:
    """Model and data sizes of one benchmark preset (every field can be overridden)."""

    prompt: int
    trace: int  # trace tokens, end-of-turn included
    prefix: int  # L; 0 = whole trace
    questions: int  # per step
    micro_batch: int
    cost_batch: int


# Qwen2.5 shapes from the released configs (tied embeddings, 2 key/value heads).
QWEN = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2),
}  # fmt: skip
# SmolLM2-135M (Llama: 3 key/value heads, tied embeddings), the CPU pretrained-student preset.
SMOLLM2 = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64),
}  # fmt: skip
CHAR = {"tiny": (64, 2, 4, 128), "cpu-small": (256, 4, 8, 1024)}  # hidden, layers, heads, mlp
WORKLOADS = {
    "tiny": Workload(prompt=32, trace=96, prefix=16, questions=4, micro_batch=8, cost_batch=32),
    "cpu-small": Workload(64, 448, 64, 2, 4, 24),
    # 4k-token sequences (P + 1 + T = 4096) with a 256-token prefix, as in the issue.
    # The smollm2_known_modes preset's step: chat-template prompts of ~40 tokens, ~30-token
    # known-modes traces, 4 questions of 4 traces, whole-trace costs (L = 0).
    "smollm2-135m": Workload(40, 30, 0, 4, 16, 32),
    "qwen2.5-0.5b": Workload(256, 3839, 256, 2, 2, 24),
    "qwen2.5-1.5b": Workload(256, 3839, 256, 2, 2, 24),
}


@dataclass(frozen=True)
class Variant:
    """One benchmarked configuration: the method and the step's speed settings."""

    method: str
    prefix: bool = True  # cost on the L-token prefix (False: whole traces)
    prompt_cache: bool = True  # matching.prompt_cache
    packing: bool = False  # train.packing
    checkpointing: bool = False  # train.activation_checkpointing
    compile: bool = False  # train.compile


VARIANTS = {
    "sft": Variant("sft_mixed"),
    "ssft": Variant("ssft"),
    "ssft-recompute": Variant("ssft", prompt_cache=False),
    "ssft-full": Variant("ssft", prefix=False),
    "sft-packed": Variant("sft_mixed", packing=True),
    "ssft-packed": Variant("ssft", packing=True),
    "sft-ckpt": Variant("sft_mixed", checkpointing=True),
    "sft-compile": Variant("sft_mixed", compile=True),
}
DEFAULT_VARIANTS = ["sft", "ssft", "ssft-recompute", "ssft-full", "sft-packed", "ssft-packed"]
# Dense bf16 peak FLOP/s by device name (no sparsity), for MFU.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12}


class PhaseTimer:
    """``Run.timer``: wall time per named phase, synchronising the device at each boundary."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] += time.perf_counter() - start


def build_model(name: str, num_tags: int, device: torch.device, seed: int):
    """``(model, tokenizer or None, tags, pad_id, token id range)`` for a benchmark model."""
    if name in CHAR:
        from ssft.models import build_char_tokenizer, build_random_model

        hidden, layers, heads, mlp = CHAR[name]
        cfg = tiny_cpu().model
        cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size = (
            hidden, layers, heads, mlp,
        )  # fmt: skip
        cfg.max_position_embeddings, cfg.dtype = 8192, "float32"
        tok = build_char_tokenizer()
        vocab = len(tok)
        model = build_random_model(cfg, vocab, tok, seed=seed)
        tags = add_forking_tokens(tok, model, num_tags=num_tags, seed=seed)
        return model.to(device), tok, tags, tok.pad_token_id, (5, vocab)
    if name in SMOLLM2:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=49152, max_position_embeddings=8192, rope_theta=1e5, rms_norm_eps=1e-5,
            tie_word_embeddings=True, attn_implementation="sdpa", **SMOLLM2[name],
        )  # fmt: skip
        torch.manual_seed(seed)
        with torch.device(device):
            model = LlamaForCausalLM(config)
        first = 49152 - num_tags - 1  # random ids stay below: the tags take the top ones
        tags = ForkingTokens(
            tags=tuple(f"<think{i + 1}>" for i in range(num_tags)),
            tag_ids=tuple(range(first + 1, first + 1 + num_tags)),
            shared_tag="<think>",
            shared_tag_id=first,
        )
        return model, None, tags, 2, (3, first)  # <|im_end|> (2) ends every trace
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, attn_implementation="sdpa", **QWEN[name],
    )  # fmt: skip
    torch.manual_seed(seed)
    with torch.device(device):  # initialise in place: a 1.5B model built on the host is slow
        model = Qwen2ForCausalLM(config)
    # Qwen2.5 reserves ids above its last special token: the tags take some of them.
    first = 151700
    tags = ForkingTokens(
        tags=tuple(f"<think{i + 1}>" for i in range(num_tags)),
        tag_ids=tuple(range(first + 1, first + 1 + num_tags)),
        shared_tag="<think>",
        shared_tag_id=first,
    )
    return model, None, tags, 151643, (0, 151643)


def synthetic_questions(
    count: int,
    traces: int,
    w: Workload,
    id_range: tuple[int, int],
    eot: int,
    seed: int,
    spread: float = 0.0,
) -> list[TokenizedQuestion]:
    """Random prompts and traces (the last trace token is the end-of-turn).

    ``spread`` s: every prompt and trace length is drawn uniformly from [(1 - s) n, (1 + s) n]
    around the workload's n (mean n), as real traces vary; 0 = all exactly n.
    """
    rng = np.random.default_rng(seed)
    low, high = id_range

    def length(n: int, least: int) -> int:
        return max(least, round(n * rng.uniform(1 - spread, 1 + spread))) if spread else n

    def ids(n: int) -> tuple[int, ...]:
        return tuple(rng.integers(low, high, size=n).tolist())

    return [
        TokenizedQuestion(
            f"bench-{k}",
            ids(length(w.prompt, 1)),
            tuple((*ids(length(w.trace, 2) - 1), eot) for _ in range(traces)),
            trace_keys=tuple(f"bench-{k}-{j}" for j in range(traces)),
        )
        for k in range(count)
    ]


def _peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


class VariantRun:
    """One variant's model, optimizer and data, stepped by ``train_step``."""

    def __init__(self, variant: str, args, w: Workload, device: torch.device):
        v = VARIANTS[variant]
        model, tok, tags, pad_id, id_range = build_model(args.model, args.tags, device, args.seed)
        eot = tok.eos_token_id if tok is not None else (2 if args.model in SMOLLM2 else 151645)
        questions = synthetic_questions(
            w.questions, args.traces, w, id_range, eot, args.seed, args.length_spread
        )
        cfg = tiny_cpu()
        cfg.method = v.method
        cfg.seed = args.seed
        cfg.forking.num_tags = args.tags
        cfg.matching.prefix_tokens = (w.prefix or None) if v.prefix else None
        cfg.matching.prompt_cache = v.prompt_cache
        cfg.matching.cost_batch_size = w.cost_batch
        cfg.train.questions_per_step = w.questions
        cfg.train.micro_batch_sequences = w.micro_batch
        cfg.train.packing = v.packing
        cfg.train.activation_checkpointing = v.checkpointing
        cfg.train.compile = v.compile
        cfg.train.epochs = args.warmup + args.steps  # one step per epoch: the same questions
        cfg.train.lr, cfg.train.warmup_steps, cfg.train.lr_schedule = 1e-5, 0, "constant"
        longest = max(len(q.prompt_ids) + 1 + max(map(len, q.trace_ids)) for q in questions)
        cfg.data.max_seq_len = longest
        cfg.model.max_position_embeddings = max(cfg.data.max_seq_len, 512)
        self.variant, self.device, self.next_step = variant, device, 0
        self.run = build_run(cfg.validate(), TrainContext(device=device), model, tok, tags,
                             questions, pad_id=pad_id)  # fmt: skip
        q0 = questions[0]
        self.dummy = build_sequence(q0.prompt_ids, self.run.tag_ids[0], q0.trace_ids[0])
        self.timer = PhaseTimer(device)
        self.run.timer = self.timer
        self.steps: list[float] = []
        self.shares: list[float] = []
        shape, prefix = ModelShape.of(model.config), cfg.matching.prefix_tokens
        self.flops, self.tokens = 0.0, 0
        for q in questions:  # the FLOP model of the real lengths (no padding: model FLOPs)
            traces = [len(t) for t in q.trace_ids]
            self.flops += train_flops(shape, len(q.prompt_ids), traces)
            if v.method == "ssft":
                self.flops += cost_flops(
                    shape, len(q.prompt_ids), traces, args.tags, prefix, v.prompt_cache
                )
            self.tokens += sum(len(q.prompt_ids) + 1 + t for t in traces)

    def step(self, timed: bool) -> None:
        self.timer.seconds.clear()
        start = time.perf_counter()
        self.out = train_step(self.run, self.next_step, self.dummy)
        self.timer.sync()
        elapsed = time.perf_counter() - start
        self.next_step += 1
        if timed:
            self.steps.append(elapsed)
            matching = self.timer.seconds["sequences"]  # cost pass + assignment + sequences
            self.shares.append(matching / elapsed)

    def result(self, peak_bytes: int | None) -> dict:
        step_s = statistics.median(self.steps)
        return {
            "variant": self.variant,
            "step_s": step_s,
            "step_tokens": self.tokens,
            "tokens_per_s": self.tokens / step_s,
            "matching_share": statistics.median(self.shares),
            "peak_bytes": peak_bytes,
            "model_flops": self.flops,
            "loss": self.out.nll.item() / self.out.plan.global_tokens,
        }


def measure(variants: list[str], args, w: Workload, device: torch.device) -> list[dict]:
    """Sequential on CUDA (one model at a time: peak memory per variant); round-robin on CPU.

    Round-robin (every variant's step k, then every variant's step k + 1) spreads the load
    of other processes on a shared CPU over all variants alike.
    """
    if device.type != "cuda":
        runs = [VariantRun(v, args, w, device) for v in variants]
        for k in range(args.warmup + args.steps):
            for r in runs:
                r.step(timed=k >= args.warmup)
        return [r.result(None) for r in runs]
    results = []
    for v in variants:
        r = VariantRun(v, args, w, device)
        for _ in range(args.warmup):
            r.step(timed=False)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.steps):
            r.step(timed=True)
        results.append(r.result(torch.cuda.max_memory_allocated(device)))
        del r
        torch.cuda.empty_cache()
    return results


def summarise(results: list[dict], peak_flops: float | None) -> list[dict]:
    """Ratios to the SFT row of the same layout (``sft-packed`` for ``*-packed``) and MFU."""
    by = {r["variant"]: r for r in results}
    for r in results:
        packed = r["variant"].endswith("-packed") and "sft-packed" in by
        base = by["sft-packed"] if packed else results[0]
        r["ratio"] = r["step_s"] / base["step_s"]
        r["flop_ratio"] = r["model_flops"] / base["model_flops"]
        r["mem_ratio"] = (
            r["peak_bytes"] / base["peak_bytes"] if r["peak_bytes"] and base["peak_bytes"] else None
        )
        r["mfu"] = r["model_flops"] / r["step_s"] / peak_flops if peak_flops else None
    return results


def format_table(results: list[dict]) -> str:
    """A markdown table: measured ratio beside the FLOP model's, per variant."""

    def opt(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    lines = [
        "| variant | step (ms) | SSFT/SFT | FLOP model | tokens/s | peak mem (GiB) | "
        "mem ratio | matching share | MFU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        peak = None if r["peak_bytes"] is None else r["peak_bytes"] / 2**30
        lines.append(
            f"| {r['variant']} | {r['step_s'] * 1e3:.1f} | {r['ratio']:.3f} | "
            f"{r['flop_ratio']:.3f} | {r['tokens_per_s']:,.0f} | {opt(peak, '.2f')} | "
            f"{opt(r['mem_ratio'], '.3f')} | {r['matching_share']:.1%} | {opt(r['mfu'], '.1%')} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*CHAR, *SMOLLM2, *QWEN], default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help=("float32 on CPU; bfloat16 on CUDA (the training loop's autocast, float32 weights)"),
    )
    parser.add_argument("--tags", type=int, default=6, help="N forking tokens")
    parser.add_argument("--traces", type=int, default=4, help="M traces per question")
    parser.add_argument("--prompt", type=int, help="P prompt tokens (default: per model)")
    parser.add_argument("--trace", type=int, help="T trace tokens incl. end-of-turn")
    parser.add_argument("--prefix", type=int, help="L cost prefix tokens; 0 = whole trace")
    parser.add_argument("--questions", type=int, help="questions per step")
    parser.add_argument("--micro-batch", type=int, help="sequences per forward/backward")
    parser.add_argument("--cost-batch", type=int, help="sequences per no-grad cost forward")
    parser.add_argument(
        "--length-spread",
        type=float,
        default=0.5,
        help="prompt and trace lengths uniform in [(1-s)n, (1+s)n] (mean n); 0 = fixed lengths",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, 'sft' first; from {list(VARIANTS)}",
    )
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark, print the table, return one dict per variant."""
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    if (device.type == "cuda") != (dtype == "bfloat16"):
        raise SystemExit(
            f"--dtype {dtype} on {device.type}: the training loop computes in bfloat16 autocast "
            "on CUDA and in float32 on CPU; pass the matching --dtype (or none)."
        )
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or variants[0] != "sft":
        raise SystemExit(f"--variants {args.variants}: start with 'sft', choose from {VARIANTS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    w = WORKLOADS[args.model]
    overrides = {
        "prompt": args.prompt, "trace": args.trace, "prefix": args.prefix,
        "questions": args.questions, "micro_batch": args.micro_batch,
        "cost_batch": args.cost_batch,
    }  # fmt: skip
    w = Workload(**{**w.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    if not 0 <= args.length_spread < 1:
        raise SystemExit(f"--length-spread {args.length_spread}: choose 0 <= s < 1")
    seq = w.prompt + 1 + w.trace
    print(
        f"[step_cost] model={args.model} device={device} dtype={dtype} "
        f"threads={torch.get_num_threads()} | N={args.tags} M={args.traces} P={w.prompt} "
        f"T={w.trace} S={seq} (lengths +-{args.length_spread:.0%}) L={w.prefix or 'full'} | "
        f"{w.questions} questions/step, "
        f"micro-batch {w.micro_batch}, cost batch {w.cost_batch} | warm-up {args.warmup}, "
        f"median of {args.steps} steps",
        flush=True,
    )
    results = measure(variants, args, w, device)
    results = summarise(results, _peak_flops(device, args.peak_tflops))
    print(format_table(results))
    rule = closed_form_ratio(args.tags, w.prompt, w.trace, w.prefix or None)
    print(
        f"closed form, prompt recomputed per pair: 1 + N(L+P)/(3S) = {rule:.3f}; "
        "MFU needs a CUDA device (or --peak-tflops)",
        flush=True,
    )
    return results


if __name__ == "__main__":
    main()
