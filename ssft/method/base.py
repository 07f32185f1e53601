"""What a training method gives the one training loop (``ssft.train.loop``).

For each chunk of a step, the loop hands the method this rank's questions and a
``MethodContext`` and gets back a ``StepSequences``: the ``(input_ids, labels)`` sequences to
train on, one loss weight per sequence, which of them make up the logged loss, and the
assignment records the matching statistics keep. The loop then runs every rank's
micro-batches and backpropagates, per micro-batch::

    sum_k  weight_k * NLL_sum_k * world_size / global_tokens

where ``NLL_sum_k`` sums sequence k's supervised tokens and ``global_tokens`` is the step's
sum of ``supervised_tokens(q)`` over all ranks' questions (known before any forward). With
every weight 1 this is the token mean over the global batch (SFT, SSFT); a weight may be any
float (e.g. an advantage, for a policy-gradient method on the tag token).

Two numbers must be known from the plan alone, identically on every rank, before any
forward: ``supervised_tokens(q)`` (the loss denominator) and ``sequences_per_question(q)``
(so every rank runs the same number of micro-batches; DDP hangs otherwise).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ssft.method.assignments import AssignmentRecord
from ssft.method.losses import supervised_tokens
from ssft.method.sequences import TokenizedQuestion
from ssft.method.table import Method

TokenSequence = tuple[list[int], list[int]]  # (input_ids, labels)


@dataclass
class StepSequences:
    """One chunk's training sequences on this rank, with a loss weight per sequence."""

    sequences: list[TokenSequence]
    weights: list[float]  # multiplies the sequence's NLL sum in the loss
    logged: list[bool]  # counts towards the logged loss (the method's own loss)
    records: list[AssignmentRecord] = field(default_factory=list)  # for matching statistics
    # What the method logs: name -> (sum, count) over this chunk; the loop sums every chunk
    # and rank of a step and logs sum / count (e.g. a mean reward over rollouts).
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.sequences)
        if len(self.weights) != n or len(self.logged) != n:
            raise ValueError(
                f"{n} sequences but {len(self.weights)} weights and {len(self.logged)} logged "
                "flags: a method gives one of each per sequence"
            )


@dataclass(frozen=True)
class RolloutRequest:
    """``n`` rollouts of ``question`` continued after tag ``tag_index`` (of ``tag_ids``);
    ``key`` joins each rollout's identity (so two draws of one tag sample differently)."""

    question: TokenizedQuestion
    tag_index: int
    n: int
    key: str = ""


def _not_lent(name: str) -> Callable[..., Any]:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"this training loop does not lend MethodContext.{name}")

    return missing


@dataclass
class MethodContext:
    """What the loop lends a method for one chunk of one step."""

    tag_ids: tuple[int, ...]  # the run's tag token ids (one shared tag for shared-tag methods)
    seed: int
    epoch: int
    # The no-grad cost pass on the loop's model ([N, M_b] per question, ssft.method.matching).
    # Under FSDP each forward is a collective: call it on every rank or on none.
    cost_matrices: Callable[[Sequence[TokenizedQuestion]], list[np.ndarray]]
    step: int = 0
    tags: tuple[str, ...] = ()  # the tags' names, in tag_ids order (for metric names)
    # The policy hooks of RL methods (GFPO), on the loop's current model, no gradient:
    # [B, N] vocabulary log-probs of each tag at the tag position (current, and the frozen
    # reference model the run started from), and rollouts graded 1.0 (correct) or 0.0.
    tag_logprobs: Callable[[Sequence[TokenizedQuestion]], np.ndarray] = field(
        default_factory=lambda: _not_lent("tag_logprobs")
    )
    reference_tag_logprobs: Callable[[Sequence[TokenizedQuestion]], np.ndarray] = field(
        default_factory=lambda: _not_lent("reference_tag_logprobs")
    )
    rollouts: Callable[[Sequence[RolloutRequest]], list[list[float]]] = field(
        default_factory=lambda: _not_lent("rollouts")
    )


class TrainingMethod(ABC):
    """A method's step logic; built by ``ssft.method.table.build_method`` from its entry."""

    # Metrics of ``StepSequences.metrics`` the loop prints on its step line too.
    console_metrics: tuple[str, ...] = ()
    # Asks for MethodContext's policy hooks (tag log-probs, reference, rollouts): RL methods.
    needs_policy: bool = False
    # Its logged sequences make a meaningful NLL (the console's loss and tokens/s).
    logs_nll: bool = True

    def __init__(self, method: Method, cfg: Any) -> None:
        self.method = method
        self.cfg = cfg

    def restrict_training(self, model: Any, tag_ids: Sequence[int]) -> None:
        """Before the optimizer is built: freeze what this method must not change (none)."""
        return None

    def supervised_tokens(self, q: TokenizedQuestion) -> int:
        """This question's share of the loss denominator: its traces' supervised tokens."""
        return supervised_tokens(q, self.cfg.forking.tag_loss)

    def sequences_per_question(self, q: TokenizedQuestion) -> int:
        """How many sequences ``chunk_sequences`` gives for ``q`` (default: one per trace)."""
        return q.num_traces

    @abstractmethod
    def chunk_sequences(
        self, questions: Sequence[TokenizedQuestion], ctx: MethodContext
    ) -> StepSequences:
        """This rank's sequences for one chunk (``questions`` may be empty on some ranks)."""
