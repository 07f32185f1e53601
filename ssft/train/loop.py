"""The one training loop for every method: the methods differ only in the sequences and
loss weights they give each step (``ssft.method.base.TrainingMethod``, one entry of
``ssft.method.table`` each)::

    ssft       cost matrix (no grad) -> Hungarian -> the matched sequences, weight 1
    random     distinct random tags per trace, redrawn each epoch -> sequences, weight 1
    sft_mixed  every trace under the shared <think> tag (single: one trace) -> weight 1

Per optimizer step (see ``ssft.train.batching`` for who gets which questions)::

    plan -> for each chunk: the method's sequences and weights -> micro-batches fwd/bwd
         -> clip -> step (skipped on the device if the norm is not finite) -> schedule
         -> every train.log_every steps (and before a checkpoint): the host syncs, once
            for the window (losses, norms, gathered assignments) -> log -> maybe checkpoint

(The Hungarian matching itself runs on the host, so SSFT reads each step's cost matrices
there: that sync is the method's own; the baselines have none between logs.)

After the last step rank 0 writes the final model, samples every tag on the held-out
validation questions and records the Pass@1 tag and the usable tags
(``ssft.eval.tag_selection``) in its ``ssft_tags.json``: that write is the last, so a folder
with it is a finished model (``ssft.final_model``).

No Ray here: rank, world size, device, reporting, checkpoint reporting and model wrapping
come in a ``TrainContext``, so the same function runs under Ray Train, torchrun or in a
notebook. Non-zero ranks get a no-op tracker. Every rank runs the same number of forwards
and backwards per step (zero-weight padding micro-batches; the count comes from the
method's ``sequences_per_question``), and each micro-batch backpropagates
``sum_k weight_k * NLL_sum_k * world_size / global token count`` (DDP and FSDP average over
ranks), so with unit weights the gradient equals the token mean over the global batch for
any worker count. A chunk's sequences go longest first into micro-batches of
``train.micro_batch_sequences``, each packed into rows without padding between sequences
(``train.packing``, ``ssft.train.packing``; the weights follow each token's sequence) or
right-padded. Clipping and the optimizer step read nothing on the host (a non-finite
gradient norm skips the update inside the fused AdamW kernel; the loop warns when it logs
the norm). Under DDP the cost pass runs on the unwrapped model (no collectives) and rank 0's
own state is the checkpoint; under FSDP (``ssft.train.parallel``) the cost pass goes through
the wrapped module with the same number of forwards on every rank (dummy ones pad), and the
checkpoints and the final model are gathered collectively, then written by rank 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssft.config import ExperimentConfig
from ssft.eval.evaluation import load_eval_model
from ssft.eval.tag_selection import TagSelection, select_tags, validation_accuracy
from ssft.final_model import write_tag_selection
from ssft.method.assignments import AssignmentRecord
from ssft.method.base import MethodContext
from ssft.method.matching import cost_forward_count, cost_matrices
from ssft.method.sequences import TokenizedQuestion, build_sequence, pad_batch
from ssft.train.batching import StepPlan, micro_batch_count, plan_step
from ssft.train.checkpointing import save_checkpoint
from ssft.train.final_model import write_final_model
from ssft.train.matching_stats import MatchingTracker
from ssft.train.packing import pack_batch
from ssft.train.parallel import clip_grad_norm, full_model_state, full_optimizer_state
from ssft.train.policy_hooks import ReferencePolicy, rollouts, tag_logprobs
from ssft.train.setup import Run, SequenceNLL, TrainContext, load_training_data, setup_run

__all__ = [
    "SequenceNLL",
    "StepOutput",
    "TrainContext",
    "TrainResult",
    "load_training_data",
    "train",
    "train_step",
]

log = logging.getLogger("ssft.train")


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    pass1_tag: str
    data_log: list[list]
    matching: MatchingTracker
    final_dir: Path | None = None
    selection: TagSelection | None = None  # rank 0 only


def _gather(obj: Any, world_size: int) -> list[Any]:
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def _cost_pass(run: Run, chunk) -> Callable[[Sequence[TokenizedQuestion]], list[np.ndarray]]:
    """The no-grad cost pass a method may ask for (``MethodContext.cost_matrices``)."""
    mc = run.cfg.matching

    def cost(questions: Sequence[TokenizedQuestion]) -> list[np.ndarray]:
        if not (questions or run.sharded):
            return []
        kwargs: dict[str, Any] = {}
        if run.sharded:  # every forward is a collective: same count on all ranks
            kwargs["forward"] = lambda b: run.wrapped(b.input_ids, b.attention_mask, b.labels)
            n_tags, size = len(run.tag_ids), mc.cost_batch_size
            kwargs["min_forwards"] = cost_forward_count(chunk, run.questions, n_tags, size)
        with run.phase("cost"), run.autocast():
            return cost_matrices(
                run.net if run.sharded else run.model, questions, run.tag_ids,
                pad_id=run.pad_id, cost=mc.cost, prefix_tokens=mc.prefix_tokens,
                batch_size=mc.cost_batch_size, prompt_cache=mc.prompt_cache, **kwargs,
            )  # fmt: skip

    return cost


def _token_weights(values: Sequence[float], batch, segments: torch.Tensor | None) -> torch.Tensor:
    """Each label position's sequence value ([R, W], 0 on padding): per row, or per segment."""
    device = batch.labels.device
    if segments is None:  # one sequence per row
        column = torch.tensor(list(values), dtype=torch.float32, device=device)[:, None]
        return column.expand_as(batch.labels)
    table = torch.tensor([*values, 0.0], dtype=torch.float32, device=device)
    return table[segments]  # segment -1 (padding) reads the trailing 0


def policy_hooks(run: Run) -> dict[str, Callable]:
    """``MethodContext``'s policy hooks for a method that asks for them (``needs_policy``)."""
    if not run.method.needs_policy:
        return {}
    model, ids, pad = run.model, run.tag_ids, run.pad_id
    if run.reference is None:
        run.reference = ReferencePolicy(run)

    def current(questions: Sequence[TokenizedQuestion]) -> np.ndarray:
        with run.autocast():
            return tag_logprobs(model, questions, ids, pad_id=pad)

    roll = (run.ctx.rollouts or rollouts)(run)  # the caller's (Ray tasks) or in process
    return {"tag_logprobs": current, "reference_tag_logprobs": run.reference, "rollouts": roll}


def _train_chunk(
    run: Run, plan, chunk, dummy, last_chunk: bool
) -> tuple[torch.Tensor, list, dict[str, tuple[float, float]]]:
    """The method's sequences for one chunk on this rank -> weighted forward/backward."""
    cfg, ctx, mbs = run.cfg, run.ctx, run.cfg.train.micro_batch_sequences
    mine = [run.questions[i] for i in chunk[ctx.rank]]
    with run.phase("sequences"):  # the method's part: cost pass, assignment, sequences
        mctx = MethodContext(
            run.tag_ids, cfg.seed, plan.epoch, _cost_pass(run, chunk), step=plan.step,
            tags=run.tag_names, **policy_hooks(run),
        )  # fmt: skip
        out = run.method.chunk_sequences(mine, mctx)
        # Longest first, so each micro-batch holds similar lengths: little padding (or packing
        # slack) per row. The gradient is a sum over sequences: the order does not change it.
        order = sorted(range(len(out.sequences)), key=lambda k: -len(out.sequences[k][0]))
        seqs = [out.sequences[k] for k in order]
        weights, logged = [out.weights[k] for k in order], [out.logged[k] for k in order]
    n_micro = micro_batch_count(chunk, run.questions, mbs, run.method.sequences_per_question)
    if len(seqs) > n_micro * mbs:
        raise RuntimeError(
            f"method {cfg.method!r} gave {len(seqs)} sequences on rank {ctx.rank}, more than its "
            f"sequences_per_question allows ({n_micro * mbs}): the ranks would disagree on the "
            "number of micro-batches"
        )
    nll = torch.zeros((), device=run.device)
    with run.phase("loss"):
        for m in range(n_micro):
            part = seqs[m * mbs : (m + 1) * mbs]
            # A padding pass (no sequence left): same collectives, zero gradient.
            w = weights[m * mbs : (m + 1) * mbs] if part else [0.0]
            kept = [float(x) for x in logged[m * mbs : (m + 1) * mbs]] if part else [0.0]
            if cfg.train.packing:  # rows of several sequences, attention kept inside each
                packed = pack_batch(part or [dummy], run.pad_id).to(run.device)
                batch, segments = packed.batch, packed.segments
            else:
                batch, segments = pad_batch(part or [dummy], run.pad_id).to(run.device), None
            # DDP all-reduces once per step (only the last backward syncs); FSDP has no no_sync
            # and reduce-scatters every backward (its gradients stay sharded between them).
            syncs = (last_chunk and m == n_micro - 1) or not hasattr(run.wrapped, "no_sync")
            with contextlib.nullcontext() if syncs else run.wrapped.no_sync():
                with run.autocast():
                    token_nll = run.wrapped(
                        batch.input_ids, batch.attention_mask, batch.labels, batch.position_ids,
                        per_token=True,
                    )  # fmt: skip
                loss = (token_nll * _token_weights(w, batch, segments)).sum()
                (loss * (ctx.world_size / plan.global_tokens)).backward()
            nll += (token_nll.detach() * _token_weights(kept, batch, segments)).sum()
    return nll, out.records, out.metrics


@dataclass
class StepOutput:
    """What one optimizer step leaves for logging; tensors stay on the device (no sync)."""

    plan: StepPlan
    nll: torch.Tensor  # this rank's NLL sum over the step's supervised tokens
    records: list[AssignmentRecord]  # this rank's assignments
    grad_norm: torch.Tensor
    lr: float  # the learning rate this step's update used (read before the schedule moved on)
    # The method's own metrics on this rank: name -> (sum, count) (StepSequences.metrics).
    method_metrics: dict[str, tuple[float, float]] = field(default_factory=dict)


def add_metric_sums(a: dict[str, tuple[float, float]], b: dict[str, tuple[float, float]]):
    """``(sum, count)`` metrics of two parts of a step, added name by name."""
    out = dict(a)
    for k, (s, c) in b.items():
        s0, c0 = out.get(k, (0.0, 0.0))
        out[k] = (s0 + s, c0 + c)
    return out


def train_step(run: Run, step: int, dummy: tuple[list[int], list[int]]) -> StepOutput:
    """One optimizer step: plan -> per chunk (the method's sequences, fwd/bwd) -> clip -> step.

    ``dummy`` is the sequence a padding micro-batch forwards. The training loop and
    ``benchmarks/step_cost.py`` both call this, so the benchmark times the real step.
    """
    cfg, ctx, tc = run.cfg, run.ctx, run.cfg.train
    plan = plan_step(
        step, run.questions, questions_per_step=tc.questions_per_step,
        grad_accum_steps=tc.grad_accum_steps, world_size=ctx.world_size, seed=cfg.seed,
        tokens=run.method.supervised_tokens,
    )  # fmt: skip
    nll, records, metrics = torch.zeros((), device=run.device), [], {}
    for c, chunk in enumerate(plan.chunks):
        chunk_nll, chunk_records, chunk_metrics = _train_chunk(
            run, plan, chunk, dummy, c == len(plan.chunks) - 1
        )
        nll, records = nll + chunk_nll, records + chunk_records
        metrics = add_metric_sums(metrics, chunk_metrics)
    lr = run.optimizer.param_groups[0]["lr"]
    with run.phase("optimizer"):
        max_norm = tc.max_grad_norm if tc.max_grad_norm > 0 else math.inf
        if run.sharded:  # the optimizer's parameters are the shards (DTensor gradients)
            params = [p for group in run.optimizer.param_groups for p in group["params"]]
            grad_norm = clip_grad_norm(params, max_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(run.net.parameters(), max_norm)
        # A non-finite gradient norm skips the update (the loop warns when it logs the norm).
        if run.skips_on_device:  # fused AdamW reads the flag on the device: no host sync
            run.optimizer.found_inf = (~torch.isfinite(grad_norm)).float()
            run.optimizer.step()
        elif torch.isfinite(grad_norm):  # FSDP shards: a host sync per step
            run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    return StepOutput(plan, nll, records, grad_norm, lr, metrics)


def _full_state(run: Run, optimizer: bool = True) -> tuple[dict | None, dict | None]:
    """FSDP: whole weights (and optimizer state), gathered by every rank, kept on rank 0."""
    if not run.sharded:
        return None, None
    weights = full_model_state(run.net, prefix="lm.")
    return weights, full_optimizer_state(run.net, run.optimizer) if optimizer else None


def _checkpoint(run: Run, step: int, metrics: dict) -> None:
    """Rank 0 writes a checkpoint to a temp dir and reports it; other ranks report metrics."""
    model_state, optimizer_state = _full_state(run)  # a collective under FSDP
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
            scheduler=run.scheduler, state=state, model_state=model_state,
            optimizer_state=optimizer_state,
        )  # fmt: skip
        run.ctx.report(metrics, Path(tmp))


def _account(run: Run, window: list[StepOutput], seconds: float) -> dict[str, float]:
    """The host side of the steps since the last log: losses, statistics, the data log.

    This is where the loop syncs with the device (``nll``, the gradient norm) and gathers
    every rank's assignments, once per window of ``train.log_every`` steps (and before each
    checkpoint), not once per step. Returns the metrics of the window's last step.
    """
    world = run.ctx.world_size
    nll = torch.stack([out.nll for out in window])
    if world > 1:
        torch.distributed.all_reduce(nll)
    nll_host = nll.tolist()
    norms = torch.stack([out.grad_norm.float() for out in window]).tolist()
    # One collective per window: every rank's assignments and method metrics.
    gathered = _gather([(out.records, out.method_metrics) for out in window], world)
    metrics: dict[str, float] = {}
    for k, out in enumerate(window):
        plan = out.plan
        all_records = [r for rank in gathered for r in rank[k][0]]
        sums: dict[str, tuple[float, float]] = {}
        for rank in gathered:
            sums = add_metric_sums(sums, rank[k][1])
        method_metrics = {name: s / c for name, (s, c) in sorted(sums.items()) if c}
        matching_metrics = run.stats.update(plan.step, plan.epoch, all_records)
        loss = nll_host[k] / plan.global_tokens
        run.losses.append(loss)
        digest = hashlib.sha256("\n".join(plan.question_ids(run.questions)).encode())
        run.data_log.append([plan.step, plan.epoch, len(all_records), digest.hexdigest()[:16]])
        if not math.isfinite(norms[k]):  # train_step skipped this update
            log.warning("step %d: gradient norm is %s; the update was skipped", plan.step, norms[k])
        metrics = {
            "step": plan.step + 1, "epoch": plan.epoch, "loss": loss, "lr": out.lr,
            "grad_norm": norms[k], **matching_metrics, **method_metrics,
        }  # fmt: skip
    tokens = sum(out.plan.global_tokens for out in window)
    return {**metrics, "tokens_per_s": tokens / max(seconds, 1e-9)}


def train(cfg: ExperimentConfig, ctx: TrainContext | None = None) -> TrainResult:
    """Train ``cfg.method`` on ``cfg.data.train_path``; resumes from ``ctx.resume_from``."""
    ctx = ctx or TrainContext()
    run = setup_run(cfg, ctx)
    tc, q0 = cfg.train, run.questions[0]
    dummy = build_sequence(q0.prompt_ids, run.tag_ids[0], q0.trace_ids[0])
    began = window_began = time.perf_counter()
    window: list[StepOutput] = []  # steps not yet accounted on the host
    for step in range(run.start, run.total_steps):
        if ctx.before_step:
            ctx.before_step(step)
        window.append(train_step(run, step, dummy))
        last = step + 1 == run.total_steps
        log_now = (step + 1) % tc.log_every == 0 or last
        every = tc.checkpoint_every
        checkpoint = (every and (step + 1) % every == 0) or last
        if not (log_now or checkpoint):
            continue  # no host sync: the device runs ahead
        metrics = _account(run, window, time.perf_counter() - window_began)
        window, window_began = [], time.perf_counter()
        if ctx.rank == 0 and log_now:
            ctx.tracker.log_metrics(metrics, step=step + 1)
            done = step + 1 - run.start
            eta = (time.perf_counter() - began) / done * (run.total_steps - step - 1)
            extra = "".join(f" | {name.rsplit('/', 1)[-1]} {metrics[name]:.4f}"
                            for name in run.method.console_metrics if name in metrics)  # fmt: skip
            # A method whose loss is no NLL (GFPO: all its rows are weights) shows its own.
            nll = f" | loss {metrics['loss']:.4f}" if run.method.logs_nll else ""
            speed = f" | {metrics['tokens_per_s']:,.0f} tok/s" if run.method.logs_nll else ""
            print(
                f"[train {cfg.name}] step {step + 1}/{run.total_steps} | "
                f"epoch {metrics['epoch']}{nll}{extra} | lr {metrics['lr']:.2e}{speed} | "
                f"ETA {eta:.0f}s",
                flush=True,
            )
        if checkpoint:
            _checkpoint(run, step, metrics)
    final_dir = None
    if ctx.final_dir is not None:
        weights, _ = _full_state(run, optimizer=False)  # a collective under FSDP
        if ctx.rank == 0:
            log_ = {"steps": run.total_steps, "losses": run.losses, "data_log": run.data_log}
            final_dir = write_final_model(
                ctx.final_dir, run.model, run.tokenizer, run.stats, run.tags, cfg, log_,
                state_dict=weights, profiles=run.profiles,
            )  # fmt: skip
    selection = select_final_tags(run, final_dir) if ctx.rank == 0 else None
    if final_dir is not None:
        write_tag_selection(final_dir, selection)  # last: its presence = a finished model
    pass1 = selection.pass1_tag if selection else run.pass1_tag
    return TrainResult(
        run.total_steps, run.losses, pass1, run.data_log, run.stats, final_dir, selection
    )


def select_final_tags(run: Run, final_dir: Path | None) -> TagSelection:
    """Validation accuracy of every tag on the held-out questions, then the Pass@1 rule.

    The trained model samples in eval mode (as evaluation does). A sharded (FSDP) model
    cannot sample on one rank: then the final model just written is loaded instead.
    """
    cfg, ts = run.cfg, run.cfg.tag_selection
    tags = list(run.tags.tags) if not run.shared else [run.tags.shared_tag]
    accuracy = None
    if run.validation:
        t0 = time.perf_counter()
        if run.sharded:
            if final_dir is None:
                raise ValueError("a sharded run validates its tags from the final model: "
                                 "give TrainContext.final_dir")  # fmt: skip
            model = load_eval_model(final_dir)[0]
        else:
            model = run.model.eval()
        accuracy = validation_accuracy(
            model, run.tokenizer, run.validation, tags, cfg.eval, cfg.data,
            samples_per_tag=ts.samples_per_tag, seed=cfg.seed, blocked_tokens=run.blocked_tokens,
            label=f"[train {cfg.name}] validation",
        )  # fmt: skip
        shown = " ".join(f"{t} {a:.3f}" for t, a in accuracy.items())
        print(f"[train] validation accuracy on {len(run.validation)} held-out questions "
              f"({time.perf_counter() - t0:.0f}s): {shown}", flush=True)  # fmt: skip
    selection = select_tags(  # the tracker counts the tags of tag_ids: [<think>] when shared
        tags, run.stats.coverage(), run.stats.latest_coverage(), accuracy, rule=ts.pass1_rule,
        min_relative_accuracy=ts.min_relative_accuracy,
        validation_questions=len(run.validation),
    )  # fmt: skip
    usable = "" if selection.usable_tags == tags else f"; usable tags {selection.usable_tags}"
    print(f"[train] Pass@1 tag {selection.why()}{usable}", flush=True)
    return selection
