"""The sections of the stages around training: ``build`` (with its list of teachers),
``eval``, ``pipeline`` (with its list of variants) and ``sweep``.

Each field's help is written once, in ``metadata["help"]``; per-field rules run in each
section's ``validate()``. ``ExperimentConfig`` (``schema``) holds these next to the training
sections, so the choice types both use are declared here, each derived from its table.
List entries carry an index in their keys: ``build.teachers[2].temperature`` in messages,
``build.teachers.2.temperature`` or ``build.teachers.<name>.temperature`` on the command line.
"""

import re
import shlex
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ssft.config.checks import (
    ConfigError,
    Section,
    distinct_items,
    invalid,
    item_errors,
    key_of,
    non_empty,
    non_negative,
    positive,
)
from ssft.data.teachers.kinds import TEACHER_KIND_NAMES, TEACHER_KINDS, kinds_help
from ssft.method.table import (
    BASELINES,
    COMPARED_BY_DEFAULT,
    COST_KIND_NAMES,
    METHOD_NAMES,
    SHARED_TAG_METHODS,
)
from ssft.plugins import is_callable_spec

# Choices, each derived from its one table (ssft.method.table, ssft.data.teachers.kinds).
Method = Literal[METHOD_NAMES]
Baseline = Literal[BASELINES]  # every method but ssft
MatchingCost = Literal[COST_KIND_NAMES]
TeacherKind = Literal[TEACHER_KIND_NAMES]
DType = Literal["auto", "float32", "bfloat16", "float16"]  # model.dtype and a teacher's
QuestionSource = Literal["known_modes", "jsonl", "reasoning_gym", "champ"]
Split = Literal["train", "test"]
# ssft.data.grading.EXTRACTIONS, checked equal by the tests (loading a config never imports
# math-verify).
AnswerExtraction = Literal["boxed", "final_answer", "last_expression"]

# The known-modes strategies (ssft.data.known_modes.STRATEGIES, checked equal by the tests): copied,
# not imported, so that loading a config never imports task code.
STRATEGIES = ("column", "split", "round", "count_on")
KNOWN_MODES_DIGITS = (2, 6)  # ssft.data.known_modes.MIN_DIGITS, MAX_DIGITS
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- build: questions, teachers, trace sets ----------------------------------------------------


@dataclass
class TeacherConfig(Section):
    """One source of traces: a local or served model, a replayed file, or a rule-based solver."""

    SECTION: ClassVar[str] = "build.teachers[i]"

    # fmt: off
    name: str = field(metadata={"help": (
        "Label of this teacher, unique among build.teachers; every trace it writes carries it "
        "(Trace.teacher), e.g. 'smollm2' or 'strategy:column'. Overrides can address the teacher "
        "by it: build.teachers.<name>.<field>=...")})
    kind: TeacherKind = field(metadata={"help": "Backend: " + kinds_help()})
    model: str | None = field(default=None, metadata={"help": (
        "hf/vllm: local directory or hub id of the model (required); openai: the served model "
        "name (required).")})
    base_url: str | None = field(default=None, metadata={"help": (
        "openai: URL of the server's API root, e.g. http://127.0.0.1:8000/v1 (required).")})
    api_key_env: str | None = field(default=None, metadata={"help": (
        "openai: NAME of the environment variable that holds the API key, e.g. OPENAI_API_KEY. "
        "The key itself never goes in a config. null = send no key.")})
    samples_per_question: int = field(default=4, metadata={"help": (
        "Answers sampled per question from this teacher, before grading and de-duplication.")})
    temperature: float = field(default=0.7, metadata={"help": (
        "Sampling temperature, > 0.")})
    top_p: float = field(default=0.95, metadata={"help": (
        "Nucleus sampling: keep the smallest token set with this much probability, in (0, 1].")})
    max_new_tokens: int = field(default=256, metadata={"help": (
        "Longest answer, in the teacher's tokens; longer answers are cut and usually fail "
        "grading (no \\boxed{}).")})
    batch_size: int = field(default=8, metadata={"help": (
        "Questions per generate call (hf/vllm) or per batch of concurrent requests (openai).")})
    system_prompt: str | None = field(
        default="Solve the problem step by step. Put the final answer in \\boxed{}.",
        metadata={"help": (
            "System message sent before each question. null = none (and no system turn).")})
    use_chat_template: bool = field(default=True, metadata={"help": (
        "hf/vllm: format the system prompt and question with the tokenizer's chat template "
        "(when it has one).")})
    dtype: DType = field(default="auto", metadata={"help": (
        "hf/vllm: parameter dtype. 'auto' keeps the checkpoint's dtype.")})
    trust_remote_code: bool = field(default=False, metadata={"help": (
        "hf/vllm: allow the checkpoint to run its own code from the hub. Leave false unless you "
        "trust the repository.")})
    request_timeout_s: float = field(default=60.0, metadata={"help": (
        "openai: seconds to wait for one response before it counts as failed.")})
    max_retries: int = field(default=3, metadata={"help": (
        "openai: retries of one request after a connection error, 5xx or 429. 0 = none.")})
    answer_extraction: AnswerExtraction = field(default="boxed", metadata={"help": (
        "Where grading finds this teacher's final answer (ssft/data/grading.py): 'boxed' = the "
        "last \\boxed{} only (strict; for teachers asked to box); 'final_answer' = a box, else the "
        "answer after 'final answer is' / 'answer:'; 'last_expression' = those, else the text's "
        "last expression (loosest). Recorded with every trace (Trace.grading).")})
    replay_path: str | None = field(default=None, metadata={"help": (
        "replay: Parquet or JSONL file with columns question_id, teacher, text (required).")})
    replay_source: Literal["champ"] | None = field(default=None, metadata={"help": (
        "replay: a published set the build writes to replay_path when that file does not "
        "exist yet: 'champ' = CHAMP's transcripts of 4 models plus its reference solutions "
        "(teacher 'human'), with CHAMP's human annotations as verdicts. null = the file must "
        "exist.")})
    strategy: str | None = field(default=None, metadata={"help": (
        "strategy: which known-modes strategy to render: 'column', 'split', 'round' or "
        "'count_on'; or your own rule-based solver as 'package.module:function', called as "
        "function(question, rng) -> trace text (required).")})
    error_rate: float = field(default=0.0, metadata={"help": (
        "strategy: probability, in [0, 1], that a sample contains an arithmetic slip (a wrong "
        "final answer for grading to reject).")})
    # fmt: on

    def _check_values(self) -> None:
        non_empty(self, "name", "model", "base_url", "replay_path", "system_prompt")
        key = key_of(self, "name")
        if self.name.isdigit() or "=" in self.name:
            rule = "must not be a bare number nor contain '=' (overrides address teachers by name)"
            raise invalid(key, self.name, rule, f"Rename it, e.g. {key}='teacher{self.name}'.")
        positive(self, "samples_per_question", "max_new_tokens", "batch_size")
        non_negative(self, "max_retries")
        for name, fix in (("temperature", "Set e.g. 0.7."), ("request_timeout_s", "Set e.g. 60.")):
            if not 0 < getattr(self, name) < float("inf"):
                raise invalid(key_of(self, name), getattr(self, name), "must be > 0", fix)
        if not 0 < self.top_p <= 1:
            raise invalid(key_of(self, "top_p"), self.top_p, "must be in (0, 1]", "Set it to 1.0.")
        if not 0 <= self.error_rate <= 1:
            fix = "Set it to 0.0 (never slip) or e.g. 0.1."
            raise invalid(key_of(self, "error_rate"), self.error_rate, "must be in [0, 1]", fix)
        self._check_api_key_env()
        self._check_kind()

    def _check_api_key_env(self) -> None:
        value, key = self.api_key_env, key_of(self, "api_key_env")
        if value is None or (_ENV_NAME.fullmatch(value) and len(value) <= 64):
            return
        # Never echo the value: if it is not a variable name, it may well be the key itself.
        looks_like_key = value.startswith("sk-") or len(value) > 64
        what = "looks like an API key itself" if looks_like_key else "is not a variable name"
        raise ConfigError(
            f"{key}=<hidden, {len(value)} characters>: {what}; this field holds the NAME of an "
            "environment variable (letters, digits, _). Put the key in the environment (export "
            f"OPENAI_API_KEY=...) and set {key}=OPENAI_API_KEY. If a real key was written in a "
            "config file or command line, revoke it."
        )

    def _check_kind(self) -> None:
        for name in TEACHER_KINDS[self.kind].required:
            if getattr(self, name) is None:
                key = key_of(self, name)
                raise invalid(
                    key, None, f"a teacher of kind {self.kind!r} needs it", _EXAMPLES[name]
                )
        custom = self.strategy is not None and is_callable_spec(self.strategy)
        if self.strategy is not None and self.strategy not in STRATEGIES and not custom:
            rule = f"must be one of {', '.join(map(repr, STRATEGIES))} or 'package.module:function'"
            raise invalid(
                key_of(self, "strategy"), self.strategy, rule, "Set e.g. strategy: column."
            )
        if custom and self.error_rate:
            rule = "must be 0 for your own solver (error_rate is the built-in strategies' slip)"
            raise invalid(key_of(self, "error_rate"), self.error_rate, rule, "Set it to 0.0.")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            rule = "must start with http:// or https://"
            raise invalid(key_of(self, "base_url"), self.base_url, rule, _EXAMPLES["base_url"])


_EXAMPLES = {
    "model": "Set it, e.g. model: HuggingFaceTB/SmolLM2-135M-Instruct.",
    "base_url": "Set it, e.g. base_url: http://127.0.0.1:8000/v1.",
    "replay_path": "Set it, e.g. replay_path: runs/traces/teacher_samples.parquet.",
    "strategy": f"Set it to one of {', '.join(STRATEGIES)}.",
}


def default_teachers() -> list[TeacherConfig]:
    """The four known-modes strategy solvers, one sample each, slipping 10% of the time."""
    return [
        TeacherConfig(
            name=f"strategy:{s}",
            kind="strategy",
            strategy=s,
            samples_per_question=1,
            error_rate=0.1,
        )
        for s in STRATEGIES
    ]


@dataclass
class BuildConfig(Section):
    """Trace building: which questions, which teachers, and how answers become trace sets."""

    SECTION: ClassVar[str] = "build"

    # fmt: off
    questions: QuestionSource = field(default="known_modes", metadata={"help": (
        "Question source: 'known_modes' = generated additions (build.digits); 'jsonl' = "
        "build.questions_path; 'reasoning_gym' = generated build.reasoning_gym_task problems; "
        "'champ' = the CHAMP competition-math set.")})
    questions_path: str | None = field(default=None, metadata={"help": (
        "questions=jsonl: file with one JSON object per line: question_id, prompt, gold_answer, "
        "source (required then).")})
    split: Split = field(default="train", metadata={"help": (
        "known_modes/reasoning_gym/champ: which split of the questions to build (champ: a "
        "seeded 80/20 split by problem). jsonl files have no split: 'test' is an error.")})
    num_questions: int | None = field(default=64, metadata={"help": (
        "Questions to build. null = all the source has (jsonl, champ); generated sources "
        "(known_modes, reasoning_gym) need a number.")})
    question_seed: int = field(default=0, metadata={"help": (
        "Seed for generating or sub-sampling the questions.")})
    digits: int = field(default=2, metadata={"help": (
        "known_modes: digits of each operand (difficulty), in [2, 6].")})
    reasoning_gym_task: str = field(default="gsm_symbolic", metadata={"help": (
        "questions=reasoning_gym: the reasoning-gym dataset name to generate from.")})
    output_dir: str = field(default="runs/traces", metadata={"help": (
        "Directory for the shards, the final trace-set Parquet and the rejected-questions "
        "table.")})
    max_traces_per_question: int = field(default=4, metadata={"help": (
        "M: distinct correct traces kept per question.")})
    near_duplicate_threshold: float = field(default=0.9, metadata={"help": (
        "Two traces whose similarity (Jaccard of word 3-grams) is >= this count as duplicates "
        "and only one is kept; in (0, 1]. 1.0 = only exact duplicates.")})
    questions_per_shard: int = field(default=32, metadata={"help": (
        "Questions per shard; each shard is one Ray task.")})
    max_task_retries: int = field(default=3, metadata={"help": (
        "Times Ray retries a failed shard task before the build fails. 0 = none.")})
    gpus_per_task: float = field(default=0.0, metadata={"help": (
        "GPUs each shard task reserves from Ray (fractions allowed). Set 1 when hf or vllm "
        "teachers should run on GPU nodes; 0 = CPU only.")})
    min_coverage: float = field(default=0.5, metadata={"help": (
        "Warn when fewer than this share of the questions end with a trace (a build with none "
        "is always an error), in [0, 1]. 0 = never warn.")})
    teachers: list[TeacherConfig] = field(default_factory=default_teachers, metadata={"help": (
        "The teachers, a YAML list of mappings (one per teacher, each needs name and kind); a "
        "list in a YAML file replaces the preset's whole list. Default: the four known-modes "
        "strategy solvers.")})
    # fmt: on

    def _check_values(self) -> None:
        non_empty(self, "questions_path", "reasoning_gym_task", "output_dir")
        positive(self, "max_traces_per_question", "questions_per_shard")
        non_negative(self, "question_seed", "max_task_retries", "gpus_per_task")
        n = self.num_questions
        if n is not None and not n >= 1:
            fix = "Set build.num_questions=64, or null for all (jsonl, champ)."
            raise invalid("build.num_questions", n, "must be a positive integer or null", fix)
        if n is None and self.questions in ("known_modes", "reasoning_gym"):
            rule = f"build.questions={self.questions!r} generates questions, so it needs a number"
            raise invalid("build.num_questions", n, rule, "Set e.g. build.num_questions=64.")
        if self.questions == "jsonl" and self.questions_path is None:
            fix = "Set build.questions_path to a JSONL file of questions."
            raise invalid("build.questions_path", None, "build.questions='jsonl' needs it", fix)
        low, high = KNOWN_MODES_DIGITS
        if not low <= self.digits <= high:
            raise invalid("build.digits", self.digits, f"must be in [{low}, {high}]", "Set 2.")
        if not 0 <= self.min_coverage <= 1:
            fix = "Set e.g. build.min_coverage=0.5, or 0 to never warn."
            raise invalid("build.min_coverage", self.min_coverage, "must be in [0, 1]", fix)
        if not 0 < self.near_duplicate_threshold <= 1:
            rule, fix = "must be in (0, 1]", "Set e.g. 0.9, or 1.0 to drop exact duplicates only."
            raise invalid(
                "build.near_duplicate_threshold", self.near_duplicate_threshold, rule, fix
            )
        self._check_teachers()

    def _check_teachers(self) -> None:
        if not self.teachers:
            raise ConfigError(
                "build.teachers=[]: the build needs at least one teacher. List them in the YAML "
                'file, e.g. \'teachers: [{name: "strategy:column", kind: strategy, strategy: '
                "column}]', or drop the key to keep the default four strategy teachers."
            )
        seen: dict[str, int] = {}
        for i, teacher in enumerate(self.teachers):
            with item_errors("build.teachers", i):
                teacher.validate()
            if teacher.name in seen:
                raise invalid(
                    f"build.teachers[{i}].name",
                    teacher.name,
                    f"the same name as build.teachers[{seen[teacher.name]}]; names must be unique "
                    "(they label the traces)",
                    "Rename one of them.",
                )
            seen[teacher.name] = i


# --- eval: tag-conditioned sampling ---------------------------------------------------------


# Defaults follow the paper's released evaluation code: temperature 0.7, top_p 0.95, the tag
# appended after the chat template's generation prompt. Questions come from the same source as
# the trace build (build.questions and its seed/difficulty), from eval.split.
@dataclass
class EvalConfig(Section):
    """Tag-conditioned sampling and the metrics computed from it."""

    SECTION: ClassVar[str] = "eval"

    # fmt: off
    model_dir: str | None = field(default=None, metadata={"help": (
        "A final model directory written by training (it holds ssft_tags.json). None = this "
        "config's own training output, <train.output_dir>/<name>/final_model.")})
    backend: Literal["hf", "vllm"] = field(default="hf", metadata={"help": (
        "Sampling engine: 'hf' = transformers generate (CPU or GPU); 'vllm' = vLLM offline "
        "batch inference (GPU machines with vLLM installed; much faster for large models).")})
    split: Split = field(default="test", metadata={"help": (
        "Which split of build.questions to evaluate on (unused with eval.questions_path).")})
    questions_path: str | None = field(default=None, metadata={"help": (
        "A JSONL file of held-out questions (question_id, prompt, gold_answer, source per "
        "line) to evaluate on instead of build.questions at eval.split: your own test set.")})
    num_questions: int = field(default=64, metadata={"help": (
        "Questions to evaluate: the first ones of the split or file (evaluation says when "
        "this cuts some off).")})
    samples_per_tag: int = field(default=4, metadata={"help": (
        f"Samples per forking token per question. Shared-tag methods "
        f"({', '.join(SHARED_TAG_METHODS)}) draw "
        "num_tags x samples_per_tag samples under their one tag, so every method gets the same "
        "number of samples.")})
    greedy: bool = field(default=True, metadata={"help": (
        "Also decode one greedy (temperature 0) answer per question and tag: greedy accuracy "
        "per tag and distinct modes among the N greedy answers (rows with decoding=greedy).")})
    self_selected: bool = field(default=False, metadata={"help": (
        "Also let the model pick its own tag: per question, num_tags x samples_per_tag tags are "
        "drawn from p(tag | prompt) renormalised over the run's tags and each is continued once "
        "(rows with decoding=self_selected; what a model trained on the tag choice, e.g. gfpo, "
        "is judged by). Metrics self/pass1, self/cons_k (vote of N), self/cons_all, "
        "self/tag_entropy (nats; max self/tag_entropy_max = ln N), self/p/<tag>, "
        "self/drawn/<tag>, self/pass1/<tag>. Needs eval.backend=hf.")})
    temperature: float = field(default=0.7, metadata={"help": (
        "Sampling temperature (the paper's 0.7). 0 = greedy.")})
    top_p: float = field(default=0.95, metadata={"help": (
        "Nucleus sampling mass (the paper's 0.95).")})
    max_new_tokens: int = field(default=256, metadata={"help": (
        "Longest answer sampled, in tokens; longer answers are cut and count as unfinished.")})
    mask_forking_tokens: bool = field(default=True, metadata={"help": (
        "Never sample a forking token (the N tags, the shared tag) inside an answer: they "
        "belong at the tag position only (training traces never hold one later), and gfpo's "
        "tag-row training raises their logits at every position. Applies to evaluation, "
        "tag_selection's validation samples and gfpo's rollouts. false = sample the full "
        "vocabulary (figures measured before 2026-12-02 did).")})
    batch_size: int = field(default=32, metadata={"help": (
        "Questions per generate call (each expands to samples_per_tag rows).")})
    answer_extraction: AnswerExtraction = field(default="boxed", metadata={"help": (
        "Where grading finds the student's final answer: 'boxed' (strict), 'final_answer' or "
        "'last_expression' (build.teachers[i].answer_extraction says what each means). Keep "
        "'boxed' when the traces box their answers; a student trained on free-form traces "
        "answers free-form. Also used by tag_selection's validation sampling.")})
    mode_classifier: str = field(default="auto", metadata={"help": (
        "What labels each sample's reasoning mode (the strategy columns and purity): 'auto' = "
        "the known-modes classifier on that benchmark's own questions, nothing elsewhere; "
        "'none'; or 'package.module:function', your function(text) -> label or None, "
        "importable on every worker. Teacher attribution runs on any data regardless.")})
    cons_k: int | None = field(default=None, metadata={"help": (
        "k of Cons@k (samples spread round-robin over the tags, majority vote). None = all "
        "samples of a question.")})
    pass1_tag: str | None = field(default=None, metadata={"help": (
        "Tag whose samples give Pass@1. None = the one training chose by "
        "tag_selection.pass1_rule, read from the model's ssft_tags.json.")})
    questions_per_task: int = field(default=16, metadata={"help": (
        "Questions per Ray evaluation task.")})
    gpus_per_task: float = field(default=0.0, metadata={"help": (
        "GPUs each evaluation task reserves from Ray; 0 = CPU.")})
    output_dir: str = field(default="runs/eval", metadata={"help": (
        "Samples and metrics go to <output_dir>/<name>/.")})
    # fmt: on

    def _check_values(self) -> None:
        non_empty(self, "questions_path")
        spec = self.mode_classifier
        if spec not in ("auto", "none") and not is_callable_spec(spec):
            fix = "Set 'auto', 'none' or e.g. eval.mode_classifier=mytask.modes:classify."
            rule = "must be 'auto', 'none' or 'package.module:function'"
            raise invalid("eval.mode_classifier", spec, rule, fix)
        positive(self, "num_questions", "samples_per_tag", "max_new_tokens", "batch_size")
        positive(self, "questions_per_task")
        non_negative(self, "temperature", "gpus_per_task")
        if not 0 < self.top_p <= 1:
            raise invalid("eval.top_p", self.top_p, "must be in (0, 1]", "Set eval.top_p=0.95.")
        if self.cons_k is not None and self.cons_k < 1:
            raise invalid(
                "eval.cons_k",
                self.cons_k,
                "must be >= 1 or null",
                "Set eval.cons_k=32, or null for all samples.",
            )


# --- pipeline: the variants and seeds to compare ------------------------------------------


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
    methods: tuple[Method, ...] = field(default=COMPARED_BY_DEFAULT, metadata={"help": (
        f"Training methods to compare, from {', '.join(METHOD_NAMES)} (a YAML list, or "
        "comma-separated on the command line: pipeline.methods=ssft,sft_mixed); each is one "
        "variant named after it. Ignored when pipeline.variants is given.")})
    variants: list[VariantConfig] = field(default_factory=list, metadata={"help": (
        "The arms of the comparison, a YAML list of {name, overrides} (e.g. SSFT at N = 4 and "
        "N = 6 side by side). Empty = one variant per entry of pipeline.methods.")})
    seeds: tuple[int, ...] = field(default=(0,), metadata={"help": (
        "Seeds (a list; pipeline.seeds=0,1,2 on the command line); every variant trains once "
        "per seed (intervals over seeds).")})
    max_concurrent: int | None = field(default=None, metadata={"help": (
        "Trainings (then evaluations) run at once. null = as many as fit: free GPUs (or CPUs) "
        "over train.num_workers. 1 = one after another.")})
    gfpo: bool = field(default=False, metadata={"help": (
        "Add a GFPO stage (the gfpo section, method gfpo) after every arm whose method trains "
        "forking tokens (not a shared tag): it starts from that arm's final model, is "
        "evaluated beside it, and appears in the comparison as '<variant>-gfpo'. Set "
        "eval.self_selected=true to compare the tags the models pick themselves.")})
    output_dir: str = field(default="runs/pipeline", metadata={"help": (
        "The comparison table and chart go to <output_dir>/<name>/.")})
    require_pass1_above: float | None = field(default=0.0, metadata={"help": (
        "The job exits 1, after writing every result, unless some evaluated model's Pass@1 "
        "is above this: models that did not learn their task show nothing about the method. "
        "0.0 = fail when no model answers a single held-out question; set the task's chance "
        "level to fail near it; null = never fail on results (a wiring check).")})
    # fmt: on

    def variant_list(self) -> list[VariantConfig]:
        """``pipeline.variants``, or one variant ``method=<m>`` per ``pipeline.methods``."""
        if self.variants:
            return list(self.variants)
        return [VariantConfig(name=m, overrides=f"method={m}") for m in self.methods]

    def _check_values(self) -> None:
        distinct_items(self, "methods")
        distinct_items(self, "seeds")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            fix = "Set pipeline.max_concurrent=1, or null to derive it."
            raise invalid("pipeline.max_concurrent", self.max_concurrent, "must be >= 1", fix)
        floor = self.require_pass1_above
        if floor is not None and not 0.0 <= floor < 1.0:
            fix = "Set e.g. pipeline.require_pass1_above=0.0, or null to never fail on results."
            raise invalid("pipeline.require_pass1_above", floor, "must be in [0, 1)", fix)
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


# --- sweep: the Ray Tune grid -----------------------------------------------------------------


@dataclass
class SweepConfig(Section):
    """What ``workflows.sweep`` varies; everything else comes from the rest of the config."""

    SECTION: ClassVar[str] = "sweep"
    # What the summary can rank by: the evaluation's figures (ssft.report.sweep.EVAL_COLUMNS
    # says which metric of workflows.evaluate each one is), then the training loss.
    RANK_METRICS: ClassVar[tuple[str, ...]] = (
        "pass1", "cons_native", "mode_purity", "per_question_purity", "tag_accuracy_min",
        "final_loss",
    )  # fmt: skip

    # fmt: off
    num_tags: tuple[int, ...] = field(default=(2, 4, 6, 8), metadata={"help": (
        "The N values (a YAML list, or comma-separated on the command line: "
        "sweep.num_tags=2,4); SSFT runs once per (N, cost, prefix).")})
    costs: tuple[MatchingCost, ...] = field(default=COST_KIND_NAMES, metadata={"help": (
        f"Matching cost kinds to sweep ({', '.join(COST_KIND_NAMES)}).")})
    prefixes: tuple[int | None, ...] = field(default=(None, 16), metadata={"help": (
        "Prefix lengths L; none = the whole trace (sweep.prefixes=none,16).")})
    baselines: tuple[Baseline, ...] = field(default=COMPARED_BY_DEFAULT[1:], metadata={"help": (
        f"Extra trials from {', '.join(BASELINES)}, run once at forking.num_tags; "
        "empty ([] in YAML, sweep.baselines= on the command line) = none.")})
    asha: bool = field(default=False, metadata={"help": (
        "Stop weak trials early with ASHA on the loss, deciding at each checkpoint.")})
    max_concurrent_trials: int | None = field(default=None, metadata={"help": (
        "Trials at once; null = free GPUs (or CPUs) / train.num_workers.")})
    evaluate: bool = field(default=False, metadata={"help": (
        "After its training, each trial evaluates its final model on the held-out questions "
        "with the eval section, as workflows.evaluate does (eval.num_questions keeps it "
        "short): Pass@1, Cons@N, purity in its summary row and its MLflow run (eval/pass1, "
        "...). A failed evaluation marks the row eval_error; the training result stays.")})
    rank_by: Literal[RANK_METRICS] | None = field(default=None, metadata={"help": (
        f"What the summary ranks by: {', '.join(RANK_METRICS)} (final_loss lowest first, "
        "the others highest first; all but final_loss need sweep.evaluate=true). null = "
        "pass1 with sweep.evaluate, else final_loss.")})
    output_dir: str = field(default="runs/sweeps", metadata={"help": (
        "Tune and Train storage, as <output_dir>/<name>/{tune,train,eval,summary}; use shared "
        "storage on clusters.")})
    # fmt: on

    def _check_values(self) -> None:
        distinct_items(self, "num_tags")
        distinct_items(self, "costs")
        distinct_items(self, "prefixes")
        distinct_items(self, "baselines", allow_empty=True)
        for name in ("num_tags", "prefixes"):
            if bad := [v for v in getattr(self, name) if v is not None and v < 1]:
                key = f"sweep.{name}"
                raise invalid(key, getattr(self, name), f"each item must be >= 1 ({bad[0]} is not)",
                              f"Write e.g. {key}=2,4,6,8." if name == "num_tags"
                              else f"Write e.g. {key}=none,16.")  # fmt: skip
        n = self.max_concurrent_trials
        if n is not None and n < 1:
            raise invalid("sweep.max_concurrent_trials", n, "must be 1 or more, or null",
                          "Set sweep.max_concurrent_trials=2, or null to derive it.")  # fmt: skip
        if self.rank_by not in (None, "final_loss") and not self.evaluate:
            raise invalid("sweep.rank_by", self.rank_by,
                          "needs an evaluation, and sweep.evaluate=false runs none",
                          "Set sweep.evaluate=true, or sweep.rank_by=final_loss.")  # fmt: skip

    @property
    def ranked_by(self) -> str:
        """The metric the summary ranks by: ``rank_by``, else pass1 when evaluating, else the
        final training loss."""
        return self.rank_by or ("pass1" if self.evaluate else "final_loss")
