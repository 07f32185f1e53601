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
    cfg.train.warmup_steps = 10
    # 256 questions x 12 epochs / 32 per step = 96 steps: the main job (three trainings and
    # evaluations) finishes in a few minutes on 2 CPU cores.
    cfg.train.questions_per_step = 32
    cfg.train.epochs = 12
    # Traces come from the four rule-based strategy teachers (the default): no model, seconds.
    cfg.build.questions = "known_modes"
    cfg.build.num_questions = 256
    # Known-modes traces are at most ~45 characters; 64 new tokens leave room to finish.
    cfg.eval.max_new_tokens = 64
    cfg.eval.num_questions = 64
    return cfg.validate()


def known_modes_experiment() -> ExperimentConfig:
    """The mode-collapse experiment on 2 CPU cores: SSFT vs SFT-mixed vs random, 3 seeds."""
    cfg = tiny_cpu()
    cfg.name = cfg.experiment = "known-modes"
    cfg.build.num_questions = 512  # the shipped train split
    cfg.train.questions_per_step = 32
    cfg.train.epochs = 10  # 160 steps
    cfg.eval.num_questions = 128  # the whole shipped test split
    cfg.pipeline.seeds = "0,1,2"
    return cfg.validate()


def known_modes_gpu() -> ExperimentConfig:
    """A larger model and budget for the same experiment on one GPU."""
    cfg = known_modes_experiment()
    cfg.name = "known-modes-gpu"
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads = 256, 6, 8
    cfg.model.intermediate_size = 1024
    cfg.train.use_gpu = True
    cfg.train.epochs = 40
    cfg.train.lr = 1e-3
    cfg.eval.gpus_per_task = 1.0
    cfg.build.num_questions = 4096
    return cfg.validate()


PRESETS: dict[str, Callable[[], ExperimentConfig]] = {
    "base": base,
    "tiny_cpu": tiny_cpu,
    "known_modes_experiment": known_modes_experiment,
    "known_modes_gpu": known_modes_gpu,
}


def get_preset(name: str) -> Callable[[], ExperimentConfig]:
    """The preset function called ``name``; ``ConfigError`` listing the valid names if unknown."""
    if name not in PRESETS:
        raise ConfigError(
            f"preset={name!r}: unknown preset. Valid presets: {', '.join(PRESETS)}. "
            "Add new ones to PRESETS in ssft/presets.py."
        )
    return PRESETS[name]
