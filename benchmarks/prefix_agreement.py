"""How often a prefix-L matching cost picks the same tags as the full-trace cost.

    python benchmarks/prefix_agreement.py                        # known-modes, trains 4 epochs
    python benchmarks/prefix_agreement.py --train-epochs 0       # random-init model
    python benchmarks/prefix_agreement.py --traces runs/traces/<key>/trace_sets.parquet \\
        --prefixes 4,8,16,32

Builds a known-modes trace-set file with the four rule-based strategy teachers (unless
``--traces`` names one), optionally trains the tiny_cpu model with SSFT on it (full-trace
cost, ``ssft.train.loop.train``), then computes the cost matrices of every question with
the whole trace and with each prefix L, solves the Hungarian matching for each, and prints
the share of traces (and of whole questions) whose tags agree with the full-trace ones.
Agreement is up to a relabelling only if it is 1.0: the tags are compared as they are, the
way training would use them. Chance level for one trace is 1/N.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `ssft` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssft.config import load_config
from ssft.method.forking_tokens import add_forking_tokens
from ssft.method.matching import assign_tags, cost_matrices, get_policy
from ssft.train.loop import TrainContext, load_training_data, train


def build_known_modes(cfg, num_questions: int, out: Path) -> Path:
    """A trace-set Parquet of ``num_questions`` known-modes questions (seconds, no model)."""
    from ssft.data.question_sources import load_questions
    from ssft.data.trace_building import build_shard
    from ssft.data.trace_set import write_trace_sets

    cfg.build.num_questions = num_questions
    sets, _, _ = build_shard(load_questions(cfg.build), cfg.build, cfg.seed)
    write_trace_sets(out, sets)
    return out


def load_model(cfg, train_epochs: int, workdir: Path):
    """The tiny model after ``train_epochs`` of SSFT, or the random-init one (0 epochs)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ssft.models import load_model_and_tokenizer

    if train_epochs == 0:
        model, tok = load_model_and_tokenizer(cfg.model, seed=cfg.seed)
    else:
        cfg.train.epochs = train_epochs
        train(cfg, TrainContext(final_dir=workdir / "final"))
        model = AutoModelForCausalLM.from_pretrained(workdir / "final")
        tok = AutoTokenizer.from_pretrained(workdir / "final")
    f = cfg.forking
    tags = add_forking_tokens(  # idempotent on a trained model: only missing tags are added
        tok, model, num_tags=f.num_tags, tag_format=f.tag_format, shared_tag=f.shared_tag,
        init_noise=f.init_noise, seed=cfg.seed,
    )  # fmt: skip
    return model.eval(), tok, tags


def agreement(full: list[np.ndarray], other: list[np.ndarray]) -> tuple[float, float]:
    """(share of traces with the same tag, share of questions with the same assignment)."""
    same = sum(int((a == b).sum()) for a, b in zip(full, other, strict=True))
    traces = sum(len(a) for a in full)
    whole = sum(bool(np.array_equal(a, b)) for a, b in zip(full, other, strict=True))
    return same / traces, whole / len(full)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run, print the agreement table, return one dict per prefix."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="workflows/configs/tiny_cpu.yaml")
    parser.add_argument("--traces", help="trace-set Parquet (default: build known-modes)")
    parser.add_argument("--questions", type=int, default=256, help="known-modes questions")
    parser.add_argument("--train-epochs", type=int, default=4, help="SSFT epochs; 0 = random")
    parser.add_argument("--prefixes", default="2,4,8,16,32", help="comma-separated L values")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, ["method=ssft", "train.log_every=1000", *args.overrides])
    with tempfile.TemporaryDirectory(prefix="prefix-agreement-") as tmp:
        workdir = Path(tmp)
        path = args.traces or build_known_modes(cfg, args.questions, workdir / "trace_sets.parquet")
        cfg.data.train_path = str(path)
        model, tok, tags = load_model(cfg, args.train_epochs, workdir)
        questions, _ = load_training_data(cfg, tok)
    lengths = [len(t) for q in questions for t in q.trace_ids]
    kw = dict(pad_id=tok.pad_token_id, cost=cfg.matching.cost, batch_size=64)
    policy, n = get_policy("hungarian"), len(tags.tag_ids)
    # Untimed first pass: the reference, and the warm-up of every kernel the timed ones use.
    full = assign_tags(policy, questions, n, cost_matrices(model, questions, tags.tag_ids, **kw))
    print(
        f"[prefix_agreement] {len(questions)} questions, {len(lengths)} traces of "
        f"{min(lengths)}-{max(lengths)} tokens (median {int(np.median(lengths))}), N={n}, "
        f"model trained {args.train_epochs} epochs (SSFT, full-trace cost); chance = {1 / n:.2f}"
    )
    rows = []
    for prefix in [*(int(v) for v in args.prefixes.split(",")), None]:
        start = time.perf_counter()
        costs = cost_matrices(model, questions, tags.tag_ids, prefix_tokens=prefix, **kw)
        seconds = time.perf_counter() - start
        per_trace, per_question = agreement(full, assign_tags(policy, questions, n, costs))
        rows.append({"prefix": prefix or "full", "trace_agreement": per_trace,
                     "question_agreement": per_question, "cost_s": seconds})  # fmt: skip
    print("| L | traces: same tag | questions: same assignment | cost pass (s) |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['prefix']} | {r['trace_agreement']:.3f} | {r['question_agreement']:.3f} | "
            f"{r['cost_s']:.2f} |"
        )
    return rows


if __name__ == "__main__":
    main()
