"""The sweep's config: the Ray Tune grid over N and the matching cost, plus the baselines."""

from dataclasses import dataclass, field
from typing import ClassVar

from ssft.config.checks import Section, invalid
from ssft.method.table import BASELINES, COMPARED_BY_DEFAULT, COST_KIND_NAMES


@dataclass
class SweepConfig(Section):
    """What ``workflows.sweep`` varies; everything else comes from the rest of the config."""

    SECTION: ClassVar[str] = "sweep"

    # fmt: off
    num_tags: str = field(default="2,4,6,8", metadata={"help": (
        "Comma-separated N values; SSFT runs once per (N, cost, prefix).")})
    costs: str = field(default=",".join(COST_KIND_NAMES), metadata={"help": (
        f"Comma-separated matching cost kinds to sweep ({', '.join(COST_KIND_NAMES)}).")})
    prefixes: str = field(default="none,16", metadata={"help": (
        "Comma-separated prefix lengths L; none = the whole trace.")})
    baselines: str = field(default=",".join(COMPARED_BY_DEFAULT[1:]), metadata={"help": (
        f"Extra trials from {', '.join(BASELINES)}, run once at forking.num_tags; "
        "empty = none.")})
    asha: bool = field(default=False, metadata={"help": (
        "Stop weak trials early with ASHA on the loss, deciding at each checkpoint.")})
    max_concurrent_trials: int | None = field(default=None, metadata={"help": (
        "Trials at once; null = free GPUs (or CPUs) / train.num_workers.")})
    output_dir: str = field(default="runs/sweeps", metadata={"help": (
        "Tune and Train storage, as <output_dir>/<name>/{tune,train,summary}; use shared "
        "storage on clusters.")})
    # fmt: on

    def _check_values(self) -> None:
        n = self.max_concurrent_trials
        if n is not None and n < 1:
            raise invalid("sweep.max_concurrent_trials", n, "must be 1 or more, or null",
                          "Set sweep.max_concurrent_trials=2, or null to derive it.")  # fmt: skip
