"""The end-to-end pipeline's config: which variants (methods, settings) and seeds to compare."""

import shlex
from dataclasses import dataclass, field
from typing import ClassVar

from ssft.config.checks import ConfigError, Section, invalid, item_errors, key_of, non_empty
from ssft.method.table import COMPARED_BY_DEFAULT
from ssft.method.table import METHOD_NAMES as METHODS


@dataclass
class VariantConfig(Section):
    """One arm of the comparison: a name and the settings that differ from the rest."""

    SECTION: ClassVar[str] = "pipeline.variants[i]"

    # fmt: off
    name: str = field(metadata={"help": (
        "Label of the variant in run names and tables, e.g. 'ssft-n6'; unique.")})
    overrides: str = field(default="", metadata={"help": (
        "Space-separated key=value overrides applied to the whole config for this variant, "
        "e.g. 'method=ssft forking.num_tags=6 matching.spare_tags=fill' (quote values with "
        "spaces as in a shell).")})
    # fmt: on

    def override_list(self) -> list[str]:
        return shlex.split(self.overrides)

    def _check_values(self) -> None:
        non_empty(self, "name")
        key = key_of(self, "name")
        if not all(c.isalnum() or c in "-_." for c in self.name):
            rule = "may hold letters, digits, '-', '_' and '.' only (it names runs and folders)"
            raise invalid(key, self.name, rule, "Rename it, e.g. ssft-n6.")
        try:
            items = self.override_list()
        except ValueError as err:
            raise invalid(key_of(self, "overrides"), self.overrides, f"unparsable ({err})",
                          "Write key=value items separated by spaces.") from None  # fmt: skip
        if bad := [i for i in items if "=" not in i]:
            raise invalid(key_of(self, "overrides"), self.overrides, f"{bad} are not key=value",
                          "Write e.g. 'method=ssft forking.num_tags=6'.")  # fmt: skip


@dataclass
class PipelineConfig(Section):
    """build traces -> train every (variant, seed) -> evaluate each -> compare."""

    SECTION: ClassVar[str] = "pipeline"

    # fmt: off
    methods: str = field(default=",".join(COMPARED_BY_DEFAULT), metadata={"help": (
        f"Comma-separated training methods to compare, from {', '.join(METHODS)}; "
        "each is one variant named after it. Ignored when pipeline.variants is given.")})
    variants: list[VariantConfig] = field(default_factory=list, metadata={"help": (
        "The arms of the comparison, a YAML list of {name, overrides} (e.g. SSFT at N = 4 and "
        "N = 6 side by side). Empty = one variant per entry of pipeline.methods.")})
    seeds: str = field(default="0", metadata={"help": (
        "Comma-separated seeds; every variant trains once per seed (intervals over seeds).")})
    max_concurrent: int | None = field(default=None, metadata={"help": (
        "Trainings (then evaluations) run at once. null = as many as fit: free GPUs (or CPUs) "
        "over train.num_workers. 1 = one after another.")})
    output_dir: str = field(default="runs/pipeline", metadata={"help": (
        "The comparison table and chart go to <output_dir>/<name>/.")})
    # fmt: on

    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def seed_list(self) -> list[int]:
        return [int(s) for s in self.seeds.split(",") if s.strip()]

    def variant_list(self) -> list[VariantConfig]:
        """``pipeline.variants``, or one variant ``method=<m>`` per ``pipeline.methods``."""
        if self.variants:
            return list(self.variants)
        return [VariantConfig(name=m, overrides=f"method={m}") for m in self.method_list()]

    def _check_values(self) -> None:
        methods = self.method_list()
        bad = [m for m in methods if m not in METHODS]
        if not methods or bad:
            raise invalid("pipeline.methods", self.methods, f"unknown or no method {bad}",
                          f"Use a comma-separated list of {', '.join(METHODS)}.")  # fmt: skip
        try:
            seeds = self.seed_list()
        except ValueError:
            seeds = []
        if not seeds or len(set(seeds)) != len(seeds):
            raise invalid("pipeline.seeds", self.seeds, "must be distinct integers",
                          "Use e.g. pipeline.seeds=0,1,2.")  # fmt: skip
        if self.max_concurrent is not None and self.max_concurrent < 1:
            fix = "Set pipeline.max_concurrent=1, or null to derive it."
            raise invalid("pipeline.max_concurrent", self.max_concurrent, "must be >= 1", fix)
        seen: dict[str, int] = {}
        for i, variant in enumerate(self.variants):
            with item_errors("pipeline.variants", i):
                variant.validate()
            if variant.name in seen:
                raise ConfigError(
                    f"pipeline.variants[{i}].name={variant.name!r}: the same name as "
                    f"pipeline.variants[{seen[variant.name]}]; names must be unique. Rename one."
                )
            seen[variant.name] = i
