"""The training methods and the matching cost kinds, each in one table: every list of them
(config choices, pipeline and sweep choices, help text, evaluation and reports, which methods
sample under one shared tag) is derived from it.

A method is one ``Method`` entry: what it is called, how its traces get tags (``policy``, an
assignment policy of ``ssft.method.matching``), whether it trains and samples under the one
shared tag, whether it runs the no-grad cost pass, its cap on traces per question, and its
implementation (a ``ssft.method.base.TrainingMethod`` named ``"module:Class"``, imported by
``build_method`` on first use), which gives the training loop each step's sequences and
per-sequence loss weights. The loop is the same for all: a new method is one entry here and
its module. Importing this module imports nothing heavy, so the config can use it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for the annotation only: the implementations import this module
    from ssft.method.base import TrainingMethod

_ASSIGNED_TAGS = "ssft.method.assigned_tags:AssignedTags"


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    policy: str | None = None  # assignment policy: "hungarian", "random", "shared" (or None)
    shared_tag: bool = False  # trains (and samples) every trace under the one shared tag
    needs_cost: bool = False  # runs the no-grad cost pass (matching.cost) every step
    max_traces: int | None = None  # traces kept per question; None: data.max_traces_per_question
    implementation: str = _ASSIGNED_TAGS  # "module:Class", a ssft.method.base.TrainingMethod
    # Trains an SSFT model further (GFPO): never a baseline, a pipeline stage after SSFT.
    after_ssft: bool = False

    @property
    def injective(self) -> bool:
        """Distinct traces of a question get distinct tags (so M <= N is required)."""
        return not self.shared_tag


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ssft", "Hungarian matching of a question's traces to distinct tags",
               policy="hungarian", needs_cost=True),
        Method("sft_mixed", "every trace under forking.shared_tag", policy="shared",
               shared_tag=True),
        Method("random", "distinct random tags per trace, re-drawn each epoch", policy="random"),
        Method("single", "one trace per question under the shared tag", policy="shared",
               shared_tag=True, max_traces=1),
        Method("gfpo", "after SSFT, RL on the tag position only (Global Forking Policy "
               "Optimization; the gfpo section)", implementation="ssft.method.gfpo:GFPO",
               after_ssft=True),
    )
}  # fmt: skip
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
BASELINES: tuple[str, ...] = tuple(
    n for n, m in METHODS.items() if n != "ssft" and not m.after_ssft
)
AFTER_SSFT_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.after_ssft)
SHARED_TAG_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.shared_tag)
# What the pipeline compares unless told otherwise (SSFT first, then the two baselines of the
# paper's main table, which the sweep adds as its default baselines).
COMPARED_BY_DEFAULT: tuple[str, ...] = ("ssft", "sft_mixed", "random")


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name lists the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        valid = ", ".join(METHODS)
        raise ValueError(f"unknown method {name!r}; valid methods: {valid}") from None


def uses_shared_tag(name: str) -> bool:
    return get_method(name).shared_tag


def build_method(cfg: Any) -> TrainingMethod:
    """The ``TrainingMethod`` of ``cfg.method``, built from the run's config (an
    ``ExperimentConfig``; this module sits below the config package, so it is not named)."""
    method = get_method(cfg.method)
    module, _, cls = method.implementation.partition(":")
    return getattr(importlib.import_module(module), cls)(method, cfg)


def methods_help() -> str:
    """``'ssft' = ...; 'sft_mixed' = ...`` for config help text."""
    return "; ".join(f"'{m.name}' = {m.help}" for m in METHODS.values()) + "."


@dataclass(frozen=True)
class CostKind:
    """How a (tag, trace) pair's scored tokens become one matching cost C[i, j]."""

    name: str
    per_token: bool  # divide the NLL sum by the number of scored tokens
    help: str


COST_KINDS: dict[str, CostKind] = {
    c.name: c
    for c in (
        CostKind("mean_nll", True, "per-token mean negative log-likelihood (the paper's "
                 "length-normalised cost)"),
        CostKind("sum_nll", False, "summed over the scored tokens (weights long traces more)"),
    )
}  # fmt: skip
COST_KIND_NAMES: tuple[str, ...] = tuple(COST_KINDS)


def costs_help() -> str:
    """``'mean_nll' = ...; 'sum_nll' = ...`` for config help text."""
    return "; ".join(f"'{c.name}' = {c.help}" for c in COST_KINDS.values()) + "."
