"""The training methods and the matching cost kinds, each in one table: every list of them
(config choices, pipeline and sweep choices, help text, which methods sample under one shared
tag) is derived from it.

The methods differ only in how a question's traces get their tags (``policy``, a name in
``ssft.method.matching``'s assignment policies); the training loop is the same for all. Importing
this module imports nothing heavy, so the config can use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    policy: str  # assignment policy: "hungarian", "random" or "shared"
    help: str

    @property
    def shared_tag(self) -> bool:
        """Trains (and samples) every trace under the one shared tag, not under N tags."""
        return self.policy == "shared"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ssft", "hungarian", "Hungarian matching of a question's traces to distinct tags"),
        Method("sft_mixed", "shared", "every trace under forking.shared_tag"),
        Method("random", "random", "distinct random tags per trace, re-drawn each epoch"),
        Method("single", "shared", "one trace per question under the shared tag"),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
BASELINES: tuple[str, ...] = tuple(n for n in METHOD_NAMES if n != "ssft")
SHARED_TAG_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.shared_tag)
# What the pipeline compares unless told otherwise (SSFT first, then the two baselines of the
# paper's main table, which the sweep adds as its default baselines).
COMPARED_BY_DEFAULT: tuple[str, ...] = ("ssft", "sft_mixed", "random")


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name lists the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        valid = ", ".join(METHOD_NAMES)
        raise ValueError(f"unknown method {name!r}; valid methods: {valid}") from None


def uses_shared_tag(name: str) -> bool:
    return get_method(name).shared_tag


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
