"""The one training loop for every method; the methods differ only in how traces get tags.

    ssft       cost matrix (no grad) -> Hungarian -> loss on the matched sequences
    random     distinct random tags per trace, redrawn each epoch -> loss
    sft_mixed  every trace under the shared <think> tag -> loss
    single     one trace per question under the shared tag -> loss

Per optimizer step (see ``ssft.batching`` for who gets which questions)::

    plan -> for each chunk: cost -> assign -> matched sequences -> micro-batches fwd/bwd
         -> clip -> finite check -> step -> schedule -> log -> maybe checkpoint

No Ray here: rank, world size, device, reporting, checkpoint reporting and model wrapping
come in a ``TrainContext``, so the same function runs under Ray Train, torchrun or in a
notebook. Non-zero ranks get a no-op tracker. Every rank runs the same number of forwards
and backwards per step (zero-weight padding micro-batches), the cost pass runs on the
unwrapped model (no collectives), and each micro-batch backpropagates
``local NLL sum * world_size / global token count`` (DDP averages over ranks), so the
gradient equals the token mean over the global batch for any worker count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssft.batching import method_policy, micro_batch_count, plan_step, steps_per_epoch
from ssft.checkpointing import MODEL_DIR, load_state, save_checkpoint
from ssft.data_prep import tokenize_trace_sets
from ssft.forking_tokens import add_forking_tokens
from ssft.logprobs import sequence_nll
from ssft.losses import matched_sequences
from ssft.matching import assign_tags, cost_matrices, get_policy
from ssft.matching_stats import AssignmentRecord, MatchingTracker, second_best_gap
from ssft.models import load_model_and_tokenizer
from ssft.optim import build_optimizer, build_scheduler
from ssft.sequences import PaddedBatch, build_sequence, pad_batch
from ssft.trace_set import read_trace_sets
from ssft.tracking import NullTracker
from ssft.train_report import write_final_model

log = logging.getLogger("ssft.train")


@dataclass
class TrainContext:
    """What the caller (a Ray Train worker, torchrun, a notebook) provides to the loop."""

    rank: int = 0
    world_size: int = 1
    device: str | torch.device = "cpu"
    tracker: NullTracker = field(default_factory=NullTracker)
    # Called on EVERY rank at checkpoint steps; the directory only on rank 0, else None.
    report: Callable[[dict[str, Any], Path | None], None] = lambda metrics, ckpt: None
    resume_from: Path | None = None
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    before_step: Callable[[int], None] | None = None
    final_dir: Path | None = None


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    pass1_tag: str
    data_log: list[list]
    matching: MatchingTracker
    final_dir: Path | None = None


class SequenceNLL(torch.nn.Module):
    """The model as DDP sees it: ``(input_ids, attention_mask, labels) -> (sums, counts)``."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, labels):
        return sequence_nll(self.lm, PaddedBatch(input_ids, attention_mask, labels))


def load_training_data(cfg, tokenizer, path: str | None = None):
    """Tokenized questions for ``cfg.method`` (``single`` keeps one trace per question)."""
    path = path or cfg.data.train_path
    if path is None:
        raise ValueError("data.train_path is not set: point it at a trace-set Parquet file.")
    _, shared = method_policy(cfg.method)
    data = cfg.data
    return tokenize_trace_sets(
        read_trace_sets(path),
        tokenizer,
        num_tags=cfg.forking.num_tags,
        injective=not shared,
        max_seq_len=data.max_seq_len,
        max_traces_per_question=1 if cfg.method == "single" else data.max_traces_per_question,
        too_many_traces=data.too_many_traces,
        overlong=data.overlong,
        use_chat_template=data.use_chat_template,
        prompt_template=data.prompt_template,
        end_of_turn_token=data.end_of_turn_token,
        source_name=str(path),
    )


def _load_model(cfg, resume_from: Path | None):
    """The configured model, or the checkpoint's weights and tokenizer when resuming."""
    if resume_from is None:
        return load_model_and_tokenizer(cfg.model, seed=cfg.seed)
    model_cfg = dataclasses.replace(
        cfg.model, init="pretrained", name_or_path=str(resume_from / MODEL_DIR), tokenizer=None
    )
    return load_model_and_tokenizer(model_cfg, seed=cfg.seed)


def _gather(obj: Any, world_size: int) -> list[Any]:
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out


@dataclass
class _Run:
    """Everything one training run holds between steps (built once by ``_setup``)."""

    cfg: Any
    ctx: TrainContext
    device: torch.device
    model: torch.nn.Module
    tokenizer: Any
    tags: Any
    questions: list
    policy: Any
    tag_ids: tuple[int, ...]
    shared: bool
    net: SequenceNLL
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    total_steps: int
    stats: MatchingTracker
    start: int = 0
    losses: list[float] = field(default_factory=list)
    data_log: list[list] = field(default_factory=list)

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def pass1_tag(self) -> str:
        return self.tags.shared_tag if self.shared else self.tags.tags[self.stats.pass1_tag()]


def _setup(cfg, ctx: TrainContext) -> _Run:
    """Model + tags (before any DDP wrapping), data, optimizer, schedule, resumed state."""
    torch.manual_seed(cfg.seed)
    device = torch.device(ctx.device)
    model, tokenizer = _load_model(cfg, ctx.resume_from)
    f = cfg.forking
    tags = add_forking_tokens(
        tokenizer, model, num_tags=f.num_tags, tag_format=f.tag_format,
        shared_tag=f.shared_tag, init_noise=f.init_noise, seed=cfg.seed,
    )  # fmt: skip
    model.to(device)
    questions, prep = load_training_data(cfg, tokenizer)
    if ctx.rank == 0:
        print(f"[train] {cfg.method}: {prep.summary()}", flush=True)
    if not questions:
        raise ValueError(f"no trainable question in {cfg.data.train_path}: {prep.summary()}")
    policy_name, shared = method_policy(cfg.method)
    tag_ids = tags.ids_for(shared)
    net = SequenceNLL(model)
    tc = cfg.train
    optimizer = build_optimizer(net, tc.lr, tc.weight_decay)
    total = tc.epochs * steps_per_epoch(len(questions), tc.questions_per_step)
    run = _Run(
        cfg, ctx, device, model, tokenizer, tags, questions, get_policy(policy_name), tag_ids,
        shared, net, ctx.wrap_model(net) if ctx.wrap_model else net, optimizer,
        build_scheduler(optimizer, total, tc.warmup_steps, tc.lr_schedule), total,
        MatchingTracker(len(tag_ids)),
    )  # fmt: skip
    if ctx.resume_from is not None:
        state, optim_state = load_state(ctx.resume_from)
        optimizer.load_state_dict(optim_state["optimizer"])
        run.scheduler.load_state_dict(optim_state["scheduler"])
        run.stats.load_state_dict(state["matching"])
        run.start, run.data_log, run.losses = state["step"], state["data_log"], state["losses"]
        print(f"[train] rank {ctx.rank}: resuming at step {run.start}/{total}", flush=True)
    return run


def _train_chunk(run: _Run, plan, chunk, dummy, last_chunk: bool) -> tuple[torch.Tensor, list]:
    """Cost -> assign -> matched sequences -> forward/backward for one chunk on this rank."""
    cfg, ctx, mbs = run.cfg, run.ctx, run.cfg.train.micro_batch_sequences
    mine = [run.questions[i] for i in chunk[ctx.rank]]
    costs = None
    if run.policy.needs_cost and mine:
        with run.autocast():
            costs = cost_matrices(
                run.model, mine, run.tag_ids, pad_id=run.tokenizer.pad_token_id,
                cost=cfg.matching.cost, prefix_tokens=cfg.matching.prefix_tokens,
                batch_size=cfg.matching.cost_batch_size,
            )  # fmt: skip
    assigned = assign_tags(
        run.policy, mine, len(run.tag_ids), costs, seed=cfg.seed, epoch=plan.epoch
    )
    records = [
        AssignmentRecord(q.question_id, a, q.trace_keys, q.teachers, q.modes,
                         second_best_gap(costs[b], a) if costs is not None else None)
        for b, (q, a) in enumerate(zip(mine, assigned, strict=True))
    ]  # fmt: skip
    seqs = matched_sequences(mine, assigned, run.tag_ids, tag_loss=cfg.forking.tag_loss)
    n_micro = micro_batch_count(chunk, run.questions, mbs)
    nll = torch.zeros((), device=run.device)
    for m in range(n_micro):
        part = seqs[m * mbs : (m + 1) * mbs]
        weight = 1.0 if part else 0.0  # a padding pass: same collectives, zero gradient
        batch = pad_batch(part or [dummy], run.tokenizer.pad_token_id).to(run.device)
        # Gradients are all-reduced once per step: only the step's last backward syncs.
        syncs = (last_chunk and m == n_micro - 1) or not hasattr(run.wrapped, "no_sync")
        with contextlib.nullcontext() if syncs else run.wrapped.no_sync():
            with run.autocast():
                sums, _ = run.wrapped(batch.input_ids, batch.attention_mask, batch.labels)
            (sums.sum() * (weight * ctx.world_size / plan.global_tokens)).backward()
        nll += sums.sum().detach() * weight
    return nll, records


def _checkpoint(run: _Run, step: int, metrics: dict) -> None:
    """Rank 0 writes a checkpoint to a temp dir and reports it; other ranks report metrics."""
    if run.ctx.rank != 0:
        run.ctx.report(metrics, None)
        return
    state = {
        "step": step + 1, "total_steps": run.total_steps, "matching": run.stats.state_dict(),
        "data_log": run.data_log, "losses": run.losses, "pass1_tag": run.pass1_tag,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ssft-ckpt-") as tmp:
        save_checkpoint(
            tmp, model=run.model, tokenizer=run.tokenizer, optimizer=run.optimizer,
            scheduler=run.scheduler, state=state,
        )  # fmt: skip
        run.ctx.report(metrics, Path(tmp))


def train(cfg, ctx: TrainContext | None = None) -> TrainResult:
    """Train ``cfg.method`` on ``cfg.data.train_path``; resumes from ``ctx.resume_from``."""
    ctx = ctx or TrainContext()
    run = _setup(cfg, ctx)
    tc, q0 = cfg.train, run.questions[0]
    dummy = build_sequence(q0.prompt_ids, run.tag_ids[0], q0.trace_ids[0])
    began = time.perf_counter()
    for step in range(run.start, run.total_steps):
        if ctx.before_step:
            ctx.before_step(step)
        t0 = time.perf_counter()
        plan = plan_step(
            step, run.questions, questions_per_step=tc.questions_per_step,
            grad_accum_steps=tc.grad_accum_steps, world_size=ctx.world_size, seed=cfg.seed,
            tag_loss=cfg.forking.tag_loss,
        )  # fmt: skip
        nll, records = torch.zeros((), device=run.device), []
        for c, chunk in enumerate(plan.chunks):
            chunk_nll, chunk_records = _train_chunk(
                run, plan, chunk, dummy, c == len(plan.chunks) - 1
            )
            nll, records = nll + chunk_nll, records + chunk_records
        max_norm = tc.max_grad_norm if tc.max_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(run.net.parameters(), max_norm)
        if torch.isfinite(grad_norm):  # one host sync per step, on purpose: skip bad updates
            run.optimizer.step()
        else:
            log.warning("step %d: gradient norm is %s; skipping this update", step, grad_norm)
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        # Every rank gathers (the same collectives everywhere); the statistics agree on all.
        all_records = [r for part in _gather(records, ctx.world_size) for r in part]
        matching_metrics = run.stats.update(step, plan.epoch, all_records)
        if ctx.world_size > 1:
            torch.distributed.all_reduce(nll)
        loss = nll.item() / plan.global_tokens
        run.losses.append(loss)
        digest = hashlib.sha256("\n".join(plan.question_ids(run.questions)).encode())
        run.data_log.append([step, plan.epoch, len(all_records), digest.hexdigest()[:16]])
        metrics = {
            "step": step + 1, "epoch": plan.epoch, "loss": loss,
            "lr": run.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
            "tokens_per_s": plan.global_tokens / (time.perf_counter() - t0), **matching_metrics,
        }  # fmt: skip
        if ctx.rank == 0 and ((step + 1) % tc.log_every == 0 or step + 1 == run.total_steps):
            ctx.tracker.log_metrics(metrics, step=step + 1)
            done = step + 1 - run.start
            eta = (time.perf_counter() - began) / done * (run.total_steps - step - 1)
            print(
                f"[train] step {step + 1}/{run.total_steps} | epoch {plan.epoch} | "
                f"loss {loss:.4f} | lr {metrics['lr']:.2e} | "
                f"{metrics['tokens_per_s']:,.0f} tok/s | ETA {eta:.0f}s",
                flush=True,
            )
        every = tc.checkpoint_every
        if (every and (step + 1) % every == 0) or step + 1 == run.total_steps:
            _checkpoint(run, step, metrics)
    final_dir = None
    if ctx.rank == 0 and ctx.final_dir is not None:
        log_ = {"steps": run.total_steps, "losses": run.losses, "data_log": run.data_log}
        final_dir = write_final_model(
            ctx.final_dir, run.model, run.tokenizer, run.stats, run.tags, run.pass1_tag, cfg, log_
        )
    return TrainResult(
        run.total_steps, run.losses, run.pass1_tag, run.data_log, run.stats, final_dir
    )
