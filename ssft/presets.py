"""Named starting configs: functions that derive from one another (torchtitan style).

A YAML file picks one with a top-level ``preset: <name>``; the file's values and then the
command line's ``key=value`` overrides apply on top (see ``ssft.config``). To add a preset,
write a function that calls its parent, changes only what differs (say why), returns
``cfg.validate()``, and register it in ``PRESETS``.
"""

from collections.abc import Callable

from ssft.config import ConfigError, ExperimentConfig


def base() -> ExperimentConfig:
    """The dataclass defaults. Names no model: set model.name_or_path (or model.init=random)."""
    return ExperimentConfig()


def tiny_cpu() -> ExperimentConfig:
    """A 2-layer, 64-wide random Llama with the character tokenizer: tests and CPU demos."""
    cfg = base()
    cfg.name = "tiny-cpu"
    cfg.experiment = "tiny-cpu"
    # Random weights and the built-in tokenizer: no download, trains in minutes on a CPU.
    cfg.model.init = "random"
    cfg.model.tokenizer = "char"
    cfg.model.hidden_size = 64
    cfg.model.num_layers = 2
    cfg.model.num_heads = 4
    cfg.model.intermediate_size = 128
    cfg.model.max_position_embeddings = 512
    # Character-level traces of toy problems are short; 256 keeps batches small.
    cfg.data.max_seq_len = 256
    cfg.forking.num_tags = 4
    # A from-scratch model needs a far larger step than fine-tuning a pretrained one.
    cfg.train.lr = 3e-3
    cfg.train.questions_per_step = 8
    # Traces come from the four rule-based strategy teachers (the default): no model, seconds.
    cfg.build.questions = "known_modes"
    cfg.build.num_questions = 64
    return cfg.validate()


PRESETS: dict[str, Callable[[], ExperimentConfig]] = {
    "base": base,
    "tiny_cpu": tiny_cpu,
}


def get_preset(name: str) -> Callable[[], ExperimentConfig]:
    """The preset function called ``name``; ``ConfigError`` listing the valid names if unknown."""
    if name not in PRESETS:
        raise ConfigError(
            f"preset={name!r}: unknown preset. Valid presets: {', '.join(PRESETS)}. "
            "Add new ones to PRESETS in ssft/presets.py."
        )
    return PRESETS[name]
