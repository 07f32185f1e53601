"""The training run's sections (model, data, forking, matching, train, tag_selection) and
``ExperimentConfig``, the whole config: these sections, the stage sections of ``stages``, and
the run's name, method and seed.

Each field's help is written once, in ``metadata["help"]`` (``config_help()`` prints it).
Per-field rules run in each section's ``validate()`` (also on construction); cross-field rules
run in ``ExperimentConfig.validate()``.
"""

from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal, Self

from ssft.config.checks import (
    ConfigError,
    Section,
    check_types,
    formats,
    invalid,
    non_empty,
    non_negative,
    positive,
)
from ssft.config.stages import (
    BuildConfig,
    DType,
    EvalConfig,
    MatchingCost,
    Method,
    PipelineConfig,
    SweepConfig,
)
from ssft.method.table import AFTER_SSFT_METHODS, SHARED_TAG_METHODS, costs_help, methods_help

# ssft.method.forking_tokens.MAX_NUM_TAGS (checked equal by the tests): copied, not imported,
# so that loading a config never imports torch.
MAX_NUM_TAGS = 1024
ModelInit = Literal["pretrained", "random"]
TooManyTraces = Literal["error", "keep_most_distinct"]
Overlong = Literal["error", "drop"]
SpareTags = Literal["unused", "fill"]
Pass1Rule = Literal["coverage", "coverage_last_epoch", "validation"]
Parallelism = Literal["ddp", "fsdp"]
LRSchedule = Literal["cosine", "linear", "constant"]


@dataclass
class ModelConfig(Section):
    """The network: a pretrained checkpoint, or a small random Llama-style model."""

    SECTION: ClassVar[str] = "model"

    # fmt: off
    name_or_path: str | None = field(default=None, metadata={"help": (
        "Hugging Face hub id or local directory of the checkpoint to fine-tune. Required when "
        "model.init is 'pretrained'; ignored when it is 'random'.")})
    init: ModelInit = field(default="pretrained", metadata={"help": (
        "'pretrained' loads model.name_or_path; 'random' builds a small Llama-style model with "
        "random weights, sized by the fields below (tests, CPU demos, from-scratch runs).")})
    tokenizer: str | None = field(default=None, metadata={"help": (
        "Tokenizer hub id or path. null = the same as model.name_or_path; 'char' = the built-in "
        "character tokenizer (printable ASCII, one token per character; init='random' only).")})
    dtype: DType = field(default="auto", metadata={"help": (
        "Parameter dtype. 'auto' keeps the checkpoint's dtype (float32 for random models).")})
    trust_remote_code: bool = field(default=False, metadata={"help": (
        "Allow the checkpoint to run its own modelling/tokenizer code from the hub. Leave false "
        "unless you trust the repository.")})
    hidden_size: int = field(default=64, metadata={"help": (
        "init='random' only: width of the residual stream. Must be divisible by model.num_heads.")})
    num_layers: int = field(default=2, metadata={"help": (
        "init='random' only: number of transformer blocks.")})
    num_heads: int = field(default=4, metadata={"help": (
        "init='random' only: attention heads per block (also key/value heads: no grouping).")})
    intermediate_size: int = field(default=128, metadata={"help": (
        "init='random' only: hidden width of each block's gated MLP.")})
    tie_word_embeddings: bool = field(default=True, metadata={"help": (
        "init='random' only: share the input embedding matrix with the output head.")})
    max_position_embeddings: int = field(default=1024, metadata={"help": (
        "init='random' only: longest sequence the model supports, in tokens. Must be >= "
        "data.max_seq_len.")})
    # fmt: on

    def _check_values(self) -> None:
        non_empty(self, "name_or_path", "tokenizer")
        sizes = ("hidden_size", "num_layers", "num_heads", "intermediate_size")
        positive(self, *sizes, "max_position_embeddings")
        head_dim, rem = divmod(self.hidden_size, self.num_heads)
        if rem or head_dim % 2:
            rule = f"must be model.num_heads={self.num_heads} times an even head size (rotary "
            rule += "embeddings rotate pairs of dimensions)"
            fix = f"Set model.hidden_size={self.num_heads * 2 * max(1, round(head_dim / 2))} "
            fix += "or change model.num_heads."
            raise invalid("model.hidden_size", self.hidden_size, rule, fix)


@dataclass
class DataConfig(Section):
    """Trace-set files and how each (prompt, tag, trace) becomes one token sequence."""

    SECTION: ClassVar[str] = "data"

    # fmt: off
    train_path: str | None = field(default=None, metadata={"help": (
        "Trace-set Parquet file to train on (one row per question with its list of traces). "
        "null = none given; training entry points require it.")})
    eval_path: str | None = field(default=None, metadata={"help": (
        "Trace-set Parquet file for held-out evaluation. null = no evaluation set.")})
    max_seq_len: int = field(default=1024, metadata={"help": (
        "Longest training sequence, in tokens: prompt + tag + trace + end-of-turn.")})
    max_traces_per_question: int | None = field(default=None, metadata={"help": (
        "Cap M on the traces kept per question, for every method: above it, the M most mutually "
        "distinct traces are kept and the rest counted as dropped. null = keep all.")})
    too_many_traces: TooManyTraces = field(default="error", metadata={"help": (
        "What to do when a question has more traces than forking tokens (M > N) under methods "
        "that give each trace its own tag: 'error' stops, naming the question; "
        "'keep_most_distinct' keeps the N most mutually distinct traces and counts the rest.")})
    overlong: Overlong = field(default="drop", metadata={"help": (
        "Traces whose sequence exceeds data.max_seq_len: 'error' stops; 'drop' skips them and "
        "reports the count. Never truncated: a truncated trace loses its end-of-turn token.")})
    use_chat_template: bool = field(default=True, metadata={"help": (
        "Format the prompt with the tokenizer's chat template when it has one; false (or no "
        "template) uses data.prompt_template.")})
    prompt_template: str = field(default="Question: {prompt}\nAnswer: ", metadata={"help": (
        "Plain-text prompt format used without a chat template; must contain {prompt}. The "
        "forking tag follows it directly.")})
    end_of_turn_token: str | None = field(default=None, metadata={"help": (
        "Token that ends every trace (it is supervised, so generation learns to stop). "
        "null = tokenizer.eos_token.")})
    # fmt: on

    def _check_values(self) -> None:
        non_empty(self, "train_path", "eval_path", "end_of_turn_token")
        positive(self, "max_seq_len")
        m = self.max_traces_per_question
        if m is not None and not m >= 1:
            rule = "must be a positive number of traces or null (keep all)"
            fix = "Set data.max_traces_per_question=4, or remove it."
            raise invalid("data.max_traces_per_question", m, rule, fix)
        formats(self, "prompt_template", "Question: {prompt}\nAnswer: ", prompt="")


@dataclass
class ForkingConfig(Section):
    """The global forking tokens: how many, how they are spelled, how they are initialised."""

    SECTION: ClassVar[str] = "forking"

    # fmt: off
    num_tags: int = field(default=6, metadata={"help": (
        "N, the number of global forking tokens <think1>..<thinkN> added to the vocabulary. "
        "Methods ssft and random need N >= traces per question.")})
    tag_format: str = field(default="<think{i}>", metadata={"help": (
        "Spelling of forking token i (1-based); must contain {i}.")})
    shared_tag: str = field(default="<think>", metadata={"help": (
        f"The single tag every trace trains under in methods {' and '.join(SHARED_TAG_METHODS)}. "
        "Must differ "
        "from every forking token.")})
    tag_loss: bool = field(default=False, metadata={"help": (
        "Also supervise the tag token itself, so the model learns p(tag | prompt) (for tag "
        "selection and GFPO). Default false: the loss covers the trace and end-of-turn only.")})
    init_noise: float = field(default=0.02, metadata={"help": (
        "New tag embeddings start at the mean of the existing rows plus Gaussian noise with this "
        "std, relative to the per-dimension std of the existing rows. 0 = identical rows.")})
    # fmt: on

    def _check_values(self) -> None:
        positive(self, "num_tags")
        if self.num_tags > MAX_NUM_TAGS:
            rule = f"must be at most {MAX_NUM_TAGS} (each tag costs M prefix forwards per question)"
            raise invalid("forking.num_tags", self.num_tags, rule, "Set e.g. forking.num_tags=6.")
        formats(self, "tag_format", "<think{i}>", i=1)
        non_empty(self, "shared_tag")
        non_negative(self, "init_noise")


@dataclass
class MatchingConfig(Section):
    """The no-grad cost matrix C[tag, trace] that the Hungarian matching minimises (ssft only)."""

    SECTION: ClassVar[str] = "matching"

    # fmt: off
    cost: MatchingCost = field(default="mean_nll", metadata={"help": (
        "Cost of trace j under tag i: " + costs_help())})
    prefix_tokens: int | None = field(default=None, metadata={"help": (
        "L: score only the first L tokens of each trace. null = the whole trace plus its "
        "end-of-turn token. Short prefixes are cheaper but may split modes by their openings.")})
    cost_batch_size: int = field(default=32, metadata={"help": (
        "Sequences per no-grad forward pass when building cost matrices (memory, not results).")})
    spare_tags: SpareTags = field(default="unused", metadata={"help": (
        "Tags a question's matching leaves without a trace (N > M): 'unused' = no loss for "
        "them (the paper); 'fill' = each also trains on the trace it scores best (its "
        "cheapest column of C), so every tag learns to answer every question and no spare "
        "tag becomes a twin that is right only on the questions it was matched to. Costs "
        "N - M extra training sequences per question; the loss is still divided by the "
        "matched traces' tokens (README, 'Spare tags').")})
    prompt_cache: bool = field(default=True, metadata={"help": (
        "Encode each question's prompt once and score the N x M (tag, trace prefix) "
        "continuations from its KV cache; false recomputes the prompt in every pair. Same costs "
        "up to float rounding; the cache is faster (benchmarks/step_cost.py). Multi-worker FSDP "
        "always recomputes (its forwards take whole sequences).")})
    # fmt: on

    def _check_values(self) -> None:
        if self.prefix_tokens is not None and not self.prefix_tokens >= 1:
            rule = "must be a positive number of tokens or null (score the whole trace)"
            fix = "Set matching.prefix_tokens=256, or remove it."
            raise invalid("matching.prefix_tokens", self.prefix_tokens, rule, fix)
        positive(self, "cost_batch_size")


@dataclass
class TagSelectionConfig(Section):
    """After training: the Pass@1 tag and the tags worth sampling (ssft.eval.tag_selection)."""

    SECTION: ClassVar[str] = "tag_selection"

    # fmt: off
    pass1_rule: Pass1Rule = field(default="validation", metadata={"help": (
        "How the model folder names its Pass@1 tag: 'coverage' = the paper's heuristic (the "
        "tag matched to the most distinct traces over all of training); "
        "'coverage_last_epoch' = most traces in the last epoch's matching; 'validation' = "
        "best accuracy on tag_selection.validation_questions held-out questions. All three "
        "are recorded; eval.pass1_tag overrides the choice.")})
    validation_questions: int = field(default=64, metadata={"help": (
        "Questions of the training trace set held out of training (the same ones for every "
        "method and seed: lowest hash of the question id; at most a quarter of the file's "
        "questions) and sampled under every tag after training. 0 = none (then pass1_rule "
        "cannot be 'validation').")})
    samples_per_tag: int = field(default=4, metadata={"help": (
        "Samples per tag per validation question (temperature, top_p and max_new_tokens "
        "from the eval section).")})
    min_relative_accuracy: float = field(default=0.0, metadata={"help": (
        "Usable tags: those whose validation accuracy is at least this times the best tag's; "
        "evaluation also reports Cons@N and the minimum tag accuracy over them. 0 = every "
        "tag is usable; 0.95 retires spare-tag twins that answer worse.")})
    # fmt: on

    def _check_values(self) -> None:
        non_negative(self, "validation_questions")
        positive(self, "samples_per_tag")
        if not 0.0 <= self.min_relative_accuracy <= 1.0:
            raise invalid("tag_selection.min_relative_accuracy", self.min_relative_accuracy,
                          "must be in [0, 1]",
                          "Set 0 (every tag usable) or e.g. 0.95.")  # fmt: skip
        if self.pass1_rule == "validation" and self.validation_questions == 0:
            raise invalid("tag_selection.pass1_rule", self.pass1_rule,
                          "needs held-out questions, but tag_selection.validation_questions=0",
                          "Set tag_selection.validation_questions=64, or "
                          "tag_selection.pass1_rule=coverage_last_epoch.")  # fmt: skip
        if self.min_relative_accuracy > 0 and self.validation_questions == 0:
            raise invalid("tag_selection.min_relative_accuracy", self.min_relative_accuracy,
                          "needs held-out questions, but tag_selection.validation_questions=0",
                          "Set tag_selection.validation_questions=64, or "
                          "tag_selection.min_relative_accuracy=0.")  # fmt: skip


@dataclass
class TrainConfig(Section):
    """Optimisation: batch sizes in questions and sequences, schedule, clipping, cadence."""

    SECTION: ClassVar[str] = "train"

    # fmt: off
    epochs: int = field(default=1, metadata={"help": (
        "Passes over the training questions.")})
    max_steps: int | None = field(default=None, metadata={"help": (
        "Stop after this many optimizer steps even if epochs would train more (the schedule "
        "then spans max_steps): a budget that does not grow with a bigger trace set. null = "
        "epochs decide.")})
    questions_per_step: int = field(default=8, metadata={"help": (
        "Global batch per optimizer step, in questions, summed over all workers. A question's "
        "traces always stay together in one step.")})
    micro_batch_sequences: int = field(default=8, metadata={"help": (
        "Sequences (one trace each) per forward/backward pass on one worker; bounds memory.")})
    grad_accum_steps: int = field(default=1, metadata={"help": (
        "Chunks each step's questions are processed in, one after another (cost pass, then "
        "forward/backward), gradients accumulated; bounds the memory of the cost pass. The "
        "global batch stays train.questions_per_step.")})
    lr: float = field(default=1e-5, metadata={"help": (
        "Peak learning rate (AdamW), reached after warmup.")})
    lr_schedule: LRSchedule = field(default="cosine", metadata={"help": (
        "Decay after warmup: 'cosine' and 'linear' go to 0 at the last step; 'constant' holds.")})
    warmup_steps: int = field(default=0, metadata={"help": (
        "Optimizer steps of linear warmup from 0 to train.lr. 0 = no warmup.")})
    weight_decay: float = field(default=0.0, metadata={"help": (
        "AdamW decoupled weight decay. 0 = none.")})
    max_grad_norm: float = field(default=1.0, metadata={"help": (
        "Clip the global gradient L2 norm to this value before each step. 0 = no clipping.")})
    checkpoint_every: int = field(default=0, metadata={"help": (
        "Save a checkpoint every this many optimizer steps. 0 = only at the end.")})
    log_every: int = field(default=1, metadata={"help": (
        "Log metrics every this many optimizer steps.")})
    num_workers: int = field(default=1, metadata={"help": (
        "Ray Train workers (processes), one GPU each when train.use_gpu is true.")})
    use_gpu: bool = field(default=False, metadata={"help": (
        "Train on GPUs (NCCL, bf16 autocast) instead of CPUs (gloo, float32).")})
    parallelism: Parallelism = field(default="ddp", metadata={"help": (
        "With train.num_workers > 1: 'ddp' = a full replica per worker, gradients all-reduced "
        "once per step; 'fsdp' = parameters, gradients and optimizer state sharded (FSDP2, one "
        "unit per decoder layer): less memory per worker, more communication (weights gathered "
        "at every forward, cost passes included). Same results up to float rounding.")})
    output_dir: str = field(default="runs/train", metadata={"help": (
        "Checkpoints go to <output_dir>/<name>/ (Ray Train storage) and the final model to "
        "<output_dir>/<name>/final_model. Rerunning with the same name resumes.")})
    max_failures: int = field(default=0, metadata={"help": (
        "Times Ray Train restarts the workers from the last checkpoint after a worker dies. "
        "-1 = unlimited.")})
    keep_checkpoints: int = field(default=2, metadata={"help": (
        "Most recent checkpoints kept on disk.")})
    packing: bool = field(default=False, metadata={"help": (
        "Padding-free micro-batches: pack each micro-batch's sequences into rows no wider than "
        "its longest sequence, positions restarting per sequence and attention kept inside "
        "each (ssft.train.packing; needs a transformers model that builds its mask with "
        "create_causal_mask). Same losses and gradients as padding up to float rounding. "
        "false = one right-padded row per sequence; micro-batches are length-sorted either "
        "way, which already removes most padding: on CPU the two measured the same "
        "(benchmarks/README.md).")})
    activation_checkpointing: bool = field(default=False, metadata={"help": (
        "Recompute each decoder layer's activations in backward (non-reentrant checkpointing): "
        "far less activation memory for about one more forward of compute. Puts the model in "
        "train mode (dropout, if the model has any, is then active).")})
    compile: bool = field(default=False, metadata={"help": (
        "torch.compile each decoder layer (dynamic shapes). Pays a compile at the first steps "
        "and on new shapes; on CPU it needs a C++ compiler.")})
    # fmt: on

    def _check_values(self) -> None:
        positive(self, "epochs", "questions_per_step", "micro_batch_sequences")
        if self.max_steps is not None and self.max_steps < 1:
            fix = "Set e.g. train.max_steps=500, or null to train every epoch."
            raise invalid("train.max_steps", self.max_steps, "must be >= 1 or null", fix)
        positive(self, "num_workers", "keep_checkpoints")
        if self.max_failures < -1:
            raise invalid(
                "train.max_failures",
                self.max_failures,
                "must be -1 or more",
                "Set train.max_failures=0 (no restarts) or -1 (unlimited).",
            )
        positive(self, "grad_accum_steps", "log_every")
        if not 0 < self.lr < float("inf"):
            raise invalid("train.lr", self.lr, "must be a finite number > 0", "Set train.lr=1e-5.")
        non_negative(self, "warmup_steps", "weight_decay", "max_grad_norm", "checkpoint_every")


GFPOForm = Literal["exact", "sampled"]
RolloutTags = Literal["every_tag", "policy"]
GFPOBaseline = Literal["expected", "mean", "none"]
GFPOTrainable = Literal["tag_head", "all"]


@dataclass
class GFPOConfig(Section):
    """Global Forking Policy Optimization (method=gfpo, ssft.method.gfpo): after SSFT, RL on
    the tag position only. Rollouts continued from each tag only score that tag."""

    SECTION: ClassVar[str] = "gfpo"

    # fmt: off
    init_from: str | None = field(default=None, metadata={"help": (
        "The SSFT final model folder GFPO starts from and keeps close to (the KL's reference). "
        "None = model.name_or_path. The pipeline's GFPO stage sets it to each SSFT model.")})
    form: GFPOForm = field(default="exact", metadata={"help": (
        "'exact' = the gradient of the expectation sum_i p_i (R_i - b) over all N tags, p "
        "scored in one forward (needs gfpo.rollout_tags=every_tag or policy); 'sampled' = "
        "REINFORCE/GRPO on tags drawn from the policy (gfpo.rollout_tags=policy), "
        "group-normalised advantages.")})
    rollout_tags: RolloutTags = field(default="every_tag", metadata={"help": (
        "Which tags are rolled out per question: 'every_tag' = each of the N tags "
        "gfpo.rollouts_per_tag times (every tag's value measured); 'policy' = "
        "gfpo.group_size tags drawn from the model's own tag distribution, one rollout each "
        "(tags the policy avoids get no rollouts; in the exact form they keep zero advantage).")})
    rollouts_per_tag: int = field(default=4, metadata={"help": (
        "K: rollouts per tag per question with rollout_tags=every_tag.")})
    group_size: int = field(default=8, metadata={"help": (
        "G: tags drawn per question with rollout_tags=policy (the GRPO group).")})
    baseline: GFPOBaseline | None = field(default=None, metadata={"help": (
        "b in A_i = R_i - b: 'expected' = the policy's value sum_i p_i R_i (exact form "
        "only); 'mean' = the mean reward of the question's rollouts (GRPO); 'none' = 0. "
        "None = 'expected' for the exact form, 'mean' for the sampled one.")})
    normalize_advantages: bool = field(default=True, metadata={"help": (
        "Divide a question's advantages by the standard deviation of its rollout rewards "
        "(GRPO); a question whose rollouts all score alike has zero advantage either way.")})
    kl_coef: float = field(default=0.0, metadata={"help": (
        "beta of KL(pi || pi_SSFT) over the N tags, per question (the reference is "
        "gfpo.init_from); 0 = off.")})
    entropy_floor: float = field(default=0.0, metadata={"help": (
        "Entropy floor as a fraction of the maximum, ln N: while a question's tag entropy is "
        "below it, gfpo.entropy_coef x the entropy's gradient is added, so the policy does "
        "not collapse onto one tag unless the rewards outweigh it. 0 = off.")})
    entropy_coef: float = field(default=0.1, metadata={"help": (
        "Weight of the entropy bonus below gfpo.entropy_floor.")})
    trainable: GFPOTrainable = field(default="tag_head", metadata={"help": (
        "What the policy gradient may change: 'tag_head' = only the N tags' rows of the "
        "output projection (untied from the input embeddings first), so every continuation "
        "stays exactly the SSFT model's and GFPO only re-weights the tags; 'all' = every "
        "weight (the tag logits depend on the whole prompt's representation, which the "
        "continuations share: measured to cost accuracy, README \"GFPO\").")})
    steps: int = field(default=20, metadata={"help": (
        "Policy-gradient steps (each rolls out afresh: on-policy). The GFPO run's "
        "train.max_steps; train.lr, warmup and schedule come from gfpo.lr.")})
    questions_per_step: int = field(default=32, metadata={"help": (
        "Questions per step (the GFPO run's train.questions_per_step).")})
    lr: float = field(default=1e-3, metadata={"help": (
        "Learning rate of the GFPO run (constant, no warmup).")})
    temperature: float = field(default=0.7, metadata={"help": (
        "Sampling temperature of the rollouts' continuations (the tags themselves are drawn "
        "at temperature 1).")})
    max_new_tokens: int | None = field(default=None, metadata={"help": (
        "Longest rollout in tokens; None = eval.max_new_tokens.")})
    rollout_batch_size: int = field(default=64, metadata={"help": (
        "Prompts per generate call while rolling out.")})
    rollout_tasks: int = field(default=0, metadata={"help": (
        "Where rollouts run: 0 = on each training worker (its own questions, in process); "
        "k > 0 = each worker spreads its rollouts over k Ray tasks that get the current "
        "weights through the object store (workflows.rollout_tasks; the samples are the "
        "same either way: each is seeded from its own identity).")})
    rollout_task_cpus: float = field(default=0.0, metadata={"help": (
        "CPUs each rollout task reserves. 0 = borrow them: the training worker waits idle "
        "while its tasks run, and a reservation could wait forever on CPUs the trainings "
        "hold.")})
    rollout_task_gpus: float = field(default=0.0, metadata={"help": (
        "GPUs each rollout task reserves (the task then samples on its GPU).")})
    # fmt: on

    @property
    def baseline_kind(self) -> GFPOBaseline:
        """``baseline``, its default filled in from ``form``."""
        return self.baseline or ("expected" if self.form == "exact" else "mean")

    def _check_values(self) -> None:
        non_empty(self, "init_from")
        positive(self, "rollouts_per_tag", "group_size", "steps", "questions_per_step")
        positive(self, "rollout_batch_size")
        non_negative(self, "kl_coef", "entropy_coef", "temperature", "rollout_tasks")
        non_negative(self, "rollout_task_cpus", "rollout_task_gpus")
        if not 0 < self.lr < float("inf"):
            raise invalid("gfpo.lr", self.lr, "must be a finite number > 0", "Set gfpo.lr=1e-3.")
        if not 0.0 <= self.entropy_floor < 1.0:
            raise invalid("gfpo.entropy_floor", self.entropy_floor, "must be in [0, 1)",
                          "Set 0 (off) or e.g. 0.3 (30% of ln N).")  # fmt: skip
        if self.max_new_tokens is not None:
            positive(self, "max_new_tokens")
        if self.form == "sampled" and self.rollout_tags != "policy":
            raise invalid("gfpo.form", self.form,
                          "draws its tags from the policy, so it needs gfpo.rollout_tags=policy",
                          "Set gfpo.rollout_tags=policy, or gfpo.form=exact (the expectation "
                          "over every tag's rollouts).")  # fmt: skip
        if self.form == "sampled" and self.baseline == "expected":
            raise invalid("gfpo.baseline", self.baseline,
                          "is the exact form's (sum_i p_i R_i needs every tag's value)",
                          "Set gfpo.baseline=mean (GRPO) or none.")  # fmt: skip


@dataclass
class ExperimentConfig(Section):
    """One run: method, model, data, tags, matching, training, and how its traces are built."""

    # fmt: off
    name: str = field(default="ssft", metadata={"help": (
        "Run name; keep it stable across retries, since Ray and MLflow runs are named after it "
        "and rerunning the same name resumes.")})
    experiment: str = field(default="ssft", metadata={"help": (
        "MLflow experiment that groups the runs to compare (trace builds, trainings, "
        "evaluations).")})
    method: Method = field(default="ssft", metadata={"help": methods_help()})
    seed: int = field(default=0, metadata={"help": (
        "Seed for model init, data order and random tag draws; in [0, 2**32).")})
    # Sections: their help is the class docstring.
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    forking: ForkingConfig = field(default_factory=ForkingConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tag_selection: TagSelectionConfig = field(default_factory=TagSelectionConfig)
    gfpo: GFPOConfig = field(default_factory=GFPOConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    # fmt: on

    def __post_init__(self) -> None:
        self.validate(require_model=False)

    def validate(self, *, require_model: bool = True) -> Self:
        """Re-check every section (fields may have been assigned since), then cross-field rules.

        ``require_model=False`` skips only "init='pretrained' needs model.name_or_path", so that
        the bare defaults (``presets.base()``) can be built and then completed.
        """
        check_types(self)
        sections = (self.model, self.data, self.forking, self.matching, self.train,
                    self.tag_selection, self.gfpo, self.build, self.eval, self.pipeline,
                    self.sweep)  # fmt: skip
        for section in sections:
            section.validate()
        non_empty(self, "name")
        if not 0 <= self.seed < 2**32:
            raise invalid("seed", self.seed, "must be in [0, 2**32)", "Set seed=0.")
        _check_cross_fields(self, require_model)
        return self


def _check_cross_fields(cfg: ExperimentConfig, require_model: bool) -> None:
    model, data, forking = cfg.model, cfg.data, cfg.forking
    if require_model and model.init == "pretrained" and model.name_or_path is None:
        raise ConfigError(
            "model.name_or_path=null with model.init='pretrained': a pretrained model needs a "
            "hub id or local directory. Set model.name_or_path (e.g. Qwen/Qwen2.5-0.5B-Instruct), "
            "or use a random model: model.init=random model.tokenizer=char."
        )
    if model.tokenizer == "char" and model.init != "random":
        raise ConfigError(
            f"model.tokenizer='char' with model.init={model.init!r}: the built-in character "
            "tokenizer only fits a randomly initialised model (a checkpoint has its own "
            "vocabulary). Set model.tokenizer=null to use the checkpoint's, or model.init=random."
        )
    if model.init == "random" and model.tokenizer is None:
        raise ConfigError(
            "model.tokenizer=null with model.init='random': a random model has no checkpoint to "
            "take a tokenizer from. Set model.tokenizer (e.g. model.tokenizer=char for the "
            "built-in character tokenizer, or a tokenizer's hub id or path)."
        )
    if model.init == "random" and model.max_position_embeddings < data.max_seq_len:
        raise ConfigError(
            f"model.max_position_embeddings={model.max_position_embeddings} but "
            f"data.max_seq_len={data.max_seq_len}: the random model cannot place tokens past its "
            f"last position. Raise model.max_position_embeddings to {data.max_seq_len} or lower "
            "data.max_seq_len."
        )
    if cfg.method in AFTER_SSFT_METHODS and cfg.train.parallelism == "fsdp":
        raise ConfigError(
            f"method={cfg.method!r} with train.parallelism=fsdp: its rollouts sample from each "
            "worker's whole model, which FSDP shards. Set train.parallelism=ddp."
        )
    if stages := [m for m in cfg.pipeline.methods if m in AFTER_SSFT_METHODS]:
        raise ConfigError(
            f"pipeline.methods={list(cfg.pipeline.methods)} holds {stages}, which train an SSFT "
            "model further: not an arm of their own. Remove it and set pipeline.gfpo=true (a "
            "GFPO stage after every SSFT arm)."
        )
    m, n = data.max_traces_per_question, forking.num_tags
    if cfg.method in ("ssft", "random") and data.too_many_traces == "error" and m and m > n:
        raise ConfigError(
            f"data.max_traces_per_question={m} but forking.num_tags={n}: method {cfg.method!r} "
            f"gives each trace a distinct tag. Raise forking.num_tags to {m}, lower "
            "data.max_traces_per_question, or set data.too_many_traces=keep_most_distinct."
        )
    for i in range(1, n + 1):
        if forking.tag_format.format(i=i) == forking.shared_tag:
            raise ConfigError(
                f"forking.tag_format={forking.tag_format!r} gives {forking.shared_tag!r} for "
                f"i={i}, the same as forking.shared_tag: the shared tag must differ from every "
                "forking token. Change forking.shared_tag (e.g. '<think>') or forking.tag_format."
            )


def gfpo_run(cfg: ExperimentConfig, init_from: str | None = None) -> ExperimentConfig:
    """The GFPO stage's run: ``cfg`` (the SSFT run's config) with method=gfpo, starting from
    the SSFT model at ``init_from`` (default ``gfpo.init_from``), and the gfpo section's steps,
    questions per step and constant learning rate."""
    g = cfg.gfpo
    path = init_from or g.init_from
    if path is None:
        raise ConfigError(
            "gfpo.init_from=null: GFPO trains an SSFT model further. Set gfpo.init_from="
            "<train.output_dir>/<ssft run name>/final_model (or run the pipeline with "
            "pipeline.gfpo=true, which sets it per SSFT arm)."
        )
    run = replace(cfg, method="gfpo", gfpo=replace(g, init_from=str(path)))
    run.model = replace(cfg.model, init="pretrained", name_or_path=str(path), tokenizer=None)
    run.train = replace(
        cfg.train, max_steps=g.steps, epochs=max(cfg.train.epochs, g.steps),
        questions_per_step=g.questions_per_step, lr=g.lr, warmup_steps=0,
        lr_schedule="constant",
    )  # fmt: skip
    return run.validate()
