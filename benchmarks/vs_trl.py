"""Our SFT-mixed step against TRL's SFTTrainer: same model, data, batch and optimizer.

    pip install -e ".[bench]"                                   # TRL (and datasets)
    python benchmarks/vs_trl.py --model cpu-small --steps 6     # CPU

Both start from the same random-init model (same seed, forking tokens added) and train on
the same synthetic sequences ``[prompt ; <think> ; trace]`` (loss on the trace and its
end-of-turn token only), their lengths varying by ``--length-spread`` (as in
``step_cost.py``). The dataset is exactly one step's batch (Q questions x M traces), so
every step of both trainers sees the same batch in one forward/backward, and the loss
curves are directly comparable. The optimizers are made equal: AdamW betas (0.9, 0.95),
no weight decay, constant learning rate, gradient clipping at 1.0. TRL's activation
checkpointing (its default) is turned off, as ours is off. Each side runs in its two
batch layouts: ours right-padded (the default) and packed (``train.packing``); TRL padded
and ``padding_free=True`` (the whole batch flattened into one row; transformers makes the
attention block-diagonal from the restarting position ids). Printed: median step time and
tokens/s of each, each round's median (with a warning when one trainer's rounds differ by
more than ``ROUND_SPREAD``: the machine's load changed), our faster layout over TRL's faster
one, and the per-step losses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `ssft` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.step_cost import CHAR, WORKLOADS, VariantRun, Workload, build_model
from ssft.method.losses import matched_sequences

ROUND_SPREAD = 0.10  # per-round medians of one trainer further apart than this: a noisy run


def trl_steps(
    args, w: Workload, run: VariantRun, lr: float, padding_free: bool
) -> tuple[list[float], list[float]]:
    """(step seconds, losses) of TRL's SFTTrainer on the run's one-step dataset."""
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from datasets import Dataset

    model, tok, tags, _, _ = build_model(args.model, args.tags, torch.device("cpu"), args.seed)
    questions = run.run.questions
    shared = [[0] * q.num_traces for q in questions]  # the shared tag, as SFT-mixed
    seqs = matched_sequences(questions, shared, (tags.shared_tag_id,))
    data = Dataset.from_list([{"input_ids": ids, "labels": labels} for ids, labels in seqs])

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds.append(time.perf_counter() - self.start)

    times = StepTimes()
    config = SFTConfig(
        output_dir=str(Path(args.workdir) / "trl"), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=len(seqs), gradient_accumulation_steps=1,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
        gradient_checkpointing=False, max_length=None, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, bf16=False, seed=args.seed, dataloader_num_workers=0,
        disable_tqdm=True, padding_free=padding_free,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=data, processing_class=tok, callbacks=[times]
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return times.seconds[args.warmup :], losses


def main(argv: list[str] | None = None) -> dict:
    """Run both, print the comparison, return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(CHAR), default="cpu-small")
    parser.add_argument("--tags", type=int, default=6)
    parser.add_argument("--traces", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the four trainers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--length-spread", type=float, default=0.5,
        help="prompt and trace lengths uniform in [(1-s)n, (1+s)n] (mean n); 0 = fixed lengths",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--workdir", default="runs/bench", help="TRL's output_dir parent")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = WORKLOADS[args.model]
    # One forward/backward per step for both: the micro-batch is the whole step.
    w = Workload(**{**base.__dict__, "micro_batch": base.questions * args.traces})
    args.variants, args.prompt = "sft", None
    # The four trainers run one after another, ``--repeats`` times in turn, so a change in
    # the load of a shared machine falls on all of them alike; the median is over all rounds.
    times: dict[str, list[float]] = defaultdict(list)
    rounds: dict[str, list[float]] = defaultdict(list)  # each round's median, per trainer
    losses: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, variant in (("ssft padded", "sft"), ("ssft packed", "sft-packed")):
            ours = VariantRun(variant, args, w, torch.device("cpu"))
            curve = []
            for k in range(args.warmup + args.steps):
                ours.step(timed=k >= args.warmup)
                curve.append(ours.out.nll.item() / ours.out.plan.global_tokens)
            times[name] += ours.steps
            rounds[name].append(statistics.median(ours.steps))
            losses.setdefault(name, curve)
        lr, tokens = ours.run.cfg.train.lr, ours.tokens
        for name, padding_free in (("TRL padded", False), ("TRL padding_free", True)):
            step_times, curve = trl_steps(args, w, ours, lr, padding_free)
            times[name] += step_times
            rounds[name].append(statistics.median(step_times))
            losses.setdefault(name, curve)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    lengths = [len(q.prompt_ids) + 1 + len(t) for q in ours.run.questions for t in q.trace_ids]
    print(
        f"[vs_trl] model={args.model} threads={torch.get_num_threads()} | "
        f"{len(ours.run.questions)} questions x {args.traces} traces, "
        f"{min(lengths)}-{max(lengths)} tokens (mean {tokens / len(lengths):.0f}), one batch "
        f"per step | warm-up {args.warmup}, median of {args.repeats} x {args.steps} steps"
    )
    # Each round's median too: the trainers run one after another, so a load that came and
    # went on a shared machine shows as one round far from the others (rerun, or use
    # --threads 1 and more --repeats) instead of passing silently into the ratio.
    print("| trainer | step (ms) | tokens/s | per round (ms) |")
    print("|---|---|---|---|")
    for name, step_s in seconds.items():
        per_round = " / ".join(f"{r * 1e3:.0f}" for r in rounds[name])
        print(f"| {name} | {step_s * 1e3:.1f} | {tokens / step_s:,.0f} | {per_round} |")
    spread = {name: max(r) / min(r) - 1 for name, r in rounds.items()}
    noisy = [f"{name} {s:.0%}" for name, s in spread.items() if s > ROUND_SPREAD]
    if noisy:
        print(f"warning: rounds differ by more than {ROUND_SPREAD:.0%} ({', '.join(noisy)}): "
              "the machine's load changed during the run; the ratio is not reliable")  # fmt: skip
    trl_best = min(("TRL padded", "TRL padding_free"), key=seconds.get)
    ours_best = min(("ssft padded", "ssft packed"), key=seconds.get)
    ratio = seconds[trl_best] / seconds[ours_best]
    print(f"tokens/s ratio {ours_best} / {trl_best} = {ratio:.3f} (each side's faster layout)")
    for name, values in losses.items():
        print(f"losses {name}: " + " ".join(f"{v:.4f}" for v in values), flush=True)
    return {"seconds": seconds, "losses": losses, "ratio": ratio, "rounds": dict(rounds)}


if __name__ == "__main__":
    main()
