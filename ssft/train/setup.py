"""What one training run holds between steps, and how it is built (``setup_run``).

Model and tags first (forking tokens are added before any wrapping), then the wrapping the
caller asks for (``TrainContext.wrap_model``: DDP, FSDP or none), then the optimizer (after
wrapping: FSDP replaces every parameter with a sharded one), the schedule and, when
resuming, the optimizer, schedule and matching state of the checkpoint. No Ray here.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssft.config import ExperimentConfig
from ssft.data.teacher_attribution import TeacherProfiles
from ssft.data.teachers.base import Question
from ssft.data.tokenize import tokenize_trace_sets
from ssft.data.trace_set import TraceSet, read_trace_sets, trace_set_digest
from ssft.errors import ConfigError, InputError
from ssft.eval.sampling import blocked_forking_tokens
from ssft.eval.tag_selection import held_out_count, validation_split
from ssft.method.base import TrainingMethod
from ssft.method.forking_tokens import ForkingTokens, add_forking_tokens
from ssft.method.logprobs import sequence_nll, token_nll
from ssft.method.sequences import PaddedBatch, TokenizedQuestion
from ssft.method.table import build_method, get_method
from ssft.models import load_model_and_tokenizer, load_tokenizer
from ssft.tracking import NullTracker
from ssft.train.batching import planned_steps
from ssft.train.checkpointing import MODEL_DIR, load_state
from ssft.train.matching_stats import MatchingTracker
from ssft.train.optim import build_optimizer, build_scheduler
from ssft.train.parallel import is_sharded, load_full_optimizer_state


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
    # DDP (ray.train.torch.prepare_model) or FSDP (ssft.train.parallel.wrap_fsdp); None = as is.
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    before_step: Callable[[int], None] | None = None
    # Rank 0 writes the final model here; give it to EVERY rank (FSDP gathers collectively).
    final_dir: Path | None = None
    # Where an RL method's rollouts run: run -> rollouts(requests) (ssft.train.policy_hooks
    # has the signature); None = in this process, on the run's model (policy_hooks.rollouts).
    rollouts: Callable[[Any], Callable] | None = None


class SequenceNLL(torch.nn.Module):
    """The model as DDP/FSDP sees it: ``(input_ids, attention_mask, labels) -> (sums, counts)``.

    ``per_token=True`` returns the NLL of every label position instead, float32 [B, T] (0 where
    nothing is scored): the loop weights it per sequence, which also works on packed rows."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, labels, position_ids=None, per_token=False):
        """Per-row NLL sums and counts; ``position_ids`` (no mask) for packed rows."""
        batch = PaddedBatch(input_ids, attention_mask, labels, position_ids)
        return token_nll(self.lm, batch) if per_token else sequence_nll(self.lm, batch)


def load_training_data(
    cfg: ExperimentConfig, tokenizer: Any, path: str | None = None,
    sets: list[TraceSet] | None = None,
) -> tuple[list[TokenizedQuestion], Any]:  # fmt: skip
    """Tokenized questions for ``cfg.method`` (its ``max_traces``: ``single`` keeps one),
    without the validation questions (``ssft.eval.tag_selection.validation_split``).

    ``sets``: the trace sets already read from ``path`` (the file is then not read again)."""
    path = path or cfg.data.train_path
    if path is None:
        raise ValueError("data.train_path is not set: point it at a trace-set Parquet file.")
    method = get_method(cfg.method)
    data = cfg.data
    sets = read_trace_sets(path) if sets is None else sets
    ts = cfg.tag_selection
    if ts.pass1_rule == "validation" and held_out_count(ts.validation_questions, len(sets)) == 0:
        raise InputError(
            f"trace set file {str(path)!r} has {len(sets)} questions, too few to hold out "
            "validation questions (at most a quarter are), but tag_selection.pass1_rule="
            "validation needs them. Set tag_selection.pass1_rule=coverage_last_epoch."
        )
    sets, _ = validation_split(sets, ts.validation_questions)
    return tokenize_trace_sets(
        sets,
        tokenizer,
        num_tags=cfg.forking.num_tags,
        injective=method.injective,
        max_seq_len=data.max_seq_len,
        max_traces_per_question=method.max_traces or data.max_traces_per_question,
        too_many_traces=data.too_many_traces,
        overlong=data.overlong,
        use_chat_template=data.use_chat_template,
        prompt_template=data.prompt_template,
        end_of_turn_token=data.end_of_turn_token,
        source_name=str(path),
    )


def _load_model(cfg: ExperimentConfig, resume_from: Path | None):
    """The configured model, or the checkpoint's weights and tokenizer when resuming."""
    if resume_from is None:
        return load_model_and_tokenizer(cfg.model, seed=cfg.seed)
    model_cfg = dataclasses.replace(
        cfg.model, init="pretrained", name_or_path=str(resume_from / MODEL_DIR), tokenizer=None
    )
    return load_model_and_tokenizer(model_cfg, seed=cfg.seed)


@dataclass
class Run:
    """Everything one training run holds between steps (built once by ``setup_run``)."""

    cfg: ExperimentConfig
    ctx: TrainContext
    device: torch.device
    model: torch.nn.Module
    tokenizer: Any
    tags: Any
    questions: list
    method: TrainingMethod  # the method's step logic (ssft.method.table)
    tag_ids: tuple[int, ...]
    shared: bool
    net: SequenceNLL
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    total_steps: int
    stats: MatchingTracker
    sharded: bool = False  # FSDP: parameters are shards; forwards and saving are collective
    pad_id: int = 0
    start: int = 0
    losses: list[float] = field(default_factory=list)
    data_log: list[list] = field(default_factory=list)
    # Benchmarks time the step's phases with it (``phase``); None: no timing, no extra syncs.
    timer: Callable[[str], AbstractContextManager] | None = None
    # The optimizer skips a non-finite update on the device (``skip_nonfinite_on_device``).
    skips_on_device: bool = False
    # Held out of training, sampled under every tag at the end (``ssft.eval.tag_selection``).
    validation: list[TraceSet] = field(default_factory=list)
    # Per-teacher n-gram profiles of the training traces (``ssft.data.teacher_attribution``).
    profiles: TeacherProfiles | None = None
    # The training questions' text and gold answers, for rollouts (RL methods).
    sources: dict[str, Question] = field(default_factory=dict)
    reference: Any = None  # the frozen starting model's policy (ssft.train.policy_hooks)

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def phase(self, name: str) -> AbstractContextManager:
        """A named part of the step for ``timer``: "sequences" (the method's part, which holds
        "cost", the no-grad cost pass), "loss" (forwards and backwards), "optimizer"."""
        return self.timer(name) if self.timer is not None else contextlib.nullcontext()

    @property
    def tag_names(self) -> tuple[str, ...]:
        """The names of ``tag_ids``, in order."""
        return (self.tags.shared_tag,) if self.shared else tuple(self.tags.tags)

    @property
    def blocked_tokens(self) -> tuple[str, ...]:
        """Tokens this run's samples (tag selection, rollouts) never write: every forking
        token, when ``eval.mask_forking_tokens`` is on (``ssft.eval.sampling``)."""
        return blocked_forking_tokens(self.cfg.eval.mask_forking_tokens, self.tags.tags,
                                      self.tags.shared_tag)  # fmt: skip

    @property
    def pass1_tag(self) -> str:
        return self.tags.shared_tag if self.shared else self.tags.tags[self.stats.coverage_tag()]


def setup_run(cfg: ExperimentConfig, ctx: TrainContext) -> Run:
    """Model + tags (before any wrapping), data, wrapping, optimizer, schedule, resumed state."""
    torch.manual_seed(cfg.seed)
    device = torch.device(ctx.device)
    model, tokenizer = _load_model(cfg, ctx.resume_from)
    f = cfg.forking
    tags = add_forking_tokens(
        tokenizer, model, num_tags=f.num_tags, tag_format=f.tag_format,
        shared_tag=f.shared_tag, init_noise=f.init_noise, seed=cfg.seed,
    )  # fmt: skip
    model.to(device)
    if cfg.data.train_path is None:
        raise ValueError("data.train_path is not set: point it at a trace-set Parquet file.")
    sets = read_trace_sets(cfg.data.train_path)
    questions, prep = load_training_data(cfg, tokenizer, sets=sets)
    _, held_out = validation_split(sets, cfg.tag_selection.validation_questions)
    if ctx.rank == 0:
        held = f", {len(held_out)} questions held out for validation" if held_out else ""
        print(f"[train] {cfg.method}: {prep.summary()}{held}", flush=True)
    if not questions:
        raise ValueError(f"no trainable question in {cfg.data.train_path}: {prep.summary()}")
    run = build_run(cfg, ctx, model, tokenizer, tags, questions)
    run.validation = held_out
    run.sources = {s.question_id: Question(s.question_id, s.prompt, s.gold_answer, s.source)
                   for s in sets}  # fmt: skip
    trained = {q.question_id for q in questions}
    run.profiles = TeacherProfiles.from_traces(
        (t.teacher, t.text) for s in sets if s.question_id in trained for t in s.traces if t.correct
    )
    if ctx.resume_from is not None:
        state, optim_state = load_state(ctx.resume_from)
        if run.sharded:
            load_full_optimizer_state(run.net, run.optimizer, optim_state["optimizer"])
        else:
            run.optimizer.load_state_dict(optim_state["optimizer"])  # restores param_groups
            run.skips_on_device = skip_nonfinite_on_device(run.optimizer)
        run.scheduler.load_state_dict(optim_state["scheduler"])
        run.stats.load_state_dict(state["matching"])
        run.start, run.data_log, run.losses = state["step"], state["data_log"], state["losses"]
        print(
            f"[train] rank {ctx.rank}: resuming at step {run.start}/{run.total_steps}", flush=True
        )
    return run


def build_run(
    cfg: ExperimentConfig,
    ctx: TrainContext,
    model: torch.nn.Module,
    tokenizer: Any,
    tags: ForkingTokens,
    questions: Sequence[TokenizedQuestion],
    *,
    pad_id: int | None = None,
) -> Run:
    """A run from a model (tags added, on ``ctx.device``) and tokenized questions.

    ``setup_run`` calls it after loading; ``benchmarks/step_cost.py`` calls it with
    synthetic questions so it times the very step the training loop runs. ``pad_id``
    defaults to the tokenizer's.
    """
    method = build_method(cfg)
    shared = method.method.shared_tag
    tag_ids = tags.ids_for(shared)
    tc = cfg.train
    method.restrict_training(model, tag_ids)  # before wrapping and the optimizer
    speed_up(model, activation_checkpointing=tc.activation_checkpointing, compile=tc.compile)
    net = SequenceNLL(model)
    wrapped = ctx.wrap_model(net) if ctx.wrap_model else net
    optimizer = build_optimizer(net, tc.lr, tc.weight_decay)  # after wrapping (FSDP shards)
    total = planned_steps(len(questions), tc.questions_per_step, tc.epochs, tc.max_steps)
    sharded = is_sharded(net)
    return Run(
        cfg, ctx, torch.device(ctx.device), model, tokenizer, tags, list(questions),
        method, tag_ids, shared, net, wrapped, optimizer,
        build_scheduler(optimizer, total, tc.warmup_steps, tc.lr_schedule), total,
        MatchingTracker(len(tag_ids)), sharded=sharded,
        pad_id=tokenizer.pad_token_id if pad_id is None else pad_id,
        skips_on_device=not sharded and skip_nonfinite_on_device(optimizer),
    )  # fmt: skip


def speed_up(model: torch.nn.Module, *, activation_checkpointing: bool, compile: bool) -> None:
    """``train.activation_checkpointing`` and ``train.compile``, before any DDP/FSDP wrapping."""
    if activation_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
        model.train()  # transformers checkpoints a layer only in train mode
    if compile:
        layers = getattr(model.base_model, "layers", None)
        if layers is None:
            raise ValueError(
                f"train.compile: {type(model).__name__} has no base_model.layers to compile; "
                "set train.compile=false."
            )
        for layer in layers:  # per layer: small graphs, one compile reused by every layer
            layer.compile(dynamic=True)


def skip_nonfinite_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Switch AdamW to its fused kernel, which skips an update on the device when told to.

    The training step sets ``optimizer.found_inf`` (1.0 = skip) from the gradient norm
    without reading it on the host. Fused kernels exist for float parameters on CPU and
    CUDA; anything else (or another optimizer) keeps the host-side check (returns False).
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) or not all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
    ):
        return False
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
    return True


def check_training_data(cfg: ExperimentConfig, sets: list[TraceSet] | None = None) -> str:
    """Validate and prepare ``cfg``'s training data on the driver; returns its digest.

    A driver runs it before Ray starts, so bad data costs a second and one line naming the
    file, row and field, not a Ray-wrapped traceback from every worker. The trace
    sets are read and validated, then tokenized as every worker will tokenize them: the
    configured tokenizer with the forking tokens added (no model is loaded), the same
    ``load_training_data``. That raises on more usable traces than tags (M > N, with
    ``data.too_many_traces=error``) and on an overlong trace (``data.overlong=error``).
    ``sets``: the file's trace sets when the caller has read them already.
    """
    path = cfg.data.train_path
    if path is None:
        raise ConfigError(
            "data.train_path=null: training needs trace sets. Set data.train_path=<path to the "
            "trace_sets.parquet written by workflows.build_traces>."
        )
    sets = read_trace_sets(path) if sets is None else sets
    digest = trace_set_digest(sets)
    tokenizer = load_tokenizer(cfg.model)
    f = cfg.forking
    add_forking_tokens(tokenizer, num_tags=f.num_tags, tag_format=f.tag_format,
                       shared_tag=f.shared_tag)  # fmt: skip
    questions, prep = load_training_data(cfg, tokenizer, path, sets)
    if not questions:
        raise InputError(
            f"trace set file {path!r}: no trainable question ({prep.summary()}). Every question "
            "lost all its traces to the reasons listed; raise data.max_seq_len if they are "
            "overlong, or rebuild the trace sets if none is correct."
        )
    return digest
