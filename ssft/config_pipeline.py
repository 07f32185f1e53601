"""The end-to-end pipeline's config: which methods and seeds to train, evaluate and compare."""

from dataclasses import dataclass, field
from typing import ClassVar

from ssft.config_checks import Section, invalid

METHODS = ("ssft", "sft_mixed", "random", "single")


@dataclass
class PipelineConfig(Section):
    """build traces -> train every (method, seed) -> evaluate each -> compare."""

    SECTION: ClassVar[str] = "pipeline"

    # fmt: off
    methods: str = field(default="ssft,sft_mixed,random", metadata={"help": (
        "Comma-separated training methods to compare, from ssft, sft_mixed, random, single.")})
    seeds: str = field(default="0", metadata={"help": (
        "Comma-separated seeds; every method trains once per seed (intervals over seeds).")})
    output_dir: str = field(default="runs/pipeline", metadata={"help": (
        "The comparison table and chart go to <output_dir>/<name>/.")})
    # fmt: on

    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def seed_list(self) -> list[int]:
        return [int(s) for s in self.seeds.split(",") if s.strip()]

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
