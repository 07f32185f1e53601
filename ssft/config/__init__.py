"""The typed experiment config: import everything from here (``from ssft.config import X``).

Where things are, each module importing only those above it:

- ``checks``: the machinery (``Section``, type coercion, value rules, error messages);
- ``stages``: the sections of the stages around training (``build`` and its teachers, ``eval``,
  ``pipeline`` and its variants, ``sweep``) and the choice types, each from its table;
- ``schema``: the training run's sections and ``ExperimentConfig``, the whole config;
- ``presets``: the named starting configs (``preset: <name>`` in a YAML file);
- ``loading``: preset -> YAML -> ``key=value`` overrides, the command line and ``--help``,
  and the way back (``config_to_dict``, ``config_to_yaml``, ``flatten_config``).

Loading a config imports only the standard library, PyYAML and the method and teacher-kind
tables: never torch, transformers, math-verify or Ray.
"""

from ssft.config.loading import (
    apply_overrides,
    config_from_dict,
    config_help,
    config_to_dict,
    config_to_yaml,
    flatten_config,
    load_config,
    parse_cli,
)
from ssft.config.schema import (
    DataConfig,
    ExperimentConfig,
    ForkingConfig,
    GFPOConfig,
    LRSchedule,
    MatchingConfig,
    ModelConfig,
    ModelInit,
    Overlong,
    Pass1Rule,
    SpareTags,
    TagSelectionConfig,
    TooManyTraces,
    TrainConfig,
    gfpo_run,
)
from ssft.config.stages import (
    AnswerExtraction,
    Baseline,
    BuildConfig,
    DType,
    EvalConfig,
    MatchingCost,
    Method,
    PipelineConfig,
    QuestionSource,
    Split,
    SweepConfig,
    TeacherConfig,
    TeacherKind,
    VariantConfig,
)
from ssft.errors import ConfigError, InputError

__all__ = [
    "AnswerExtraction",
    "Baseline",
    "BuildConfig",
    "ConfigError",
    "DType",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ForkingConfig",
    "GFPOConfig",
    "InputError",
    "LRSchedule",
    "MatchingConfig",
    "MatchingCost",
    "Method",
    "ModelConfig",
    "ModelInit",
    "Overlong",
    "Pass1Rule",
    "PipelineConfig",
    "QuestionSource",
    "SpareTags",
    "Split",
    "SweepConfig",
    "TagSelectionConfig",
    "TeacherConfig",
    "TeacherKind",
    "TooManyTraces",
    "TrainConfig",
    "VariantConfig",
    "apply_overrides",
    "config_from_dict",
    "config_help",
    "config_to_dict",
    "config_to_yaml",
    "flatten_config",
    "gfpo_run",
    "load_config",
    "parse_cli",
]
