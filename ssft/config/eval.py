"""The evaluation stage's config: ``EvalConfig`` (split from ``ssft.config.schema``).

Defaults follow the paper's released evaluation code: temperature 0.7, top_p 0.95, the tag
appended after the chat template's generation prompt. Questions come from the same source
as the trace build (``build.questions`` and its seed/difficulty), from ``eval.split``.
"""

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ssft.config.build import AnswerExtraction, Split
from ssft.config.checks import Section, invalid, non_empty, non_negative, positive
from ssft.method.table import SHARED_TAG_METHODS
from ssft.plugins import is_callable_spec


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
    temperature: float = field(default=0.7, metadata={"help": (
        "Sampling temperature (the paper's 0.7). 0 = greedy.")})
    top_p: float = field(default=0.95, metadata={"help": (
        "Nucleus sampling mass (the paper's 0.95).")})
    max_new_tokens: int = field(default=256, metadata={"help": (
        "Longest answer sampled, in tokens; longer answers are cut and count as unfinished.")})
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
