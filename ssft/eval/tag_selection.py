"""After training: which tag gives Pass@1, and which tags are worth sampling at all.

The paper reports Pass@1 under the tag with the largest coverage in the training matching
graph (the tag matched to the most distinct traces). Counted over all of training, that
coverage is decided by the early epochs, when assignments still reshuffle; on known-modes
it picked the worst or second-worst tag (METHOD.md, pitfalls). So three rules are offered
(``tag_selection.pass1_rule``), all computed and recorded, one of them chosen:

- ``coverage``: the paper's heuristic, distinct traces matched over all of training;
- ``coverage_last_epoch``: traces matched in each question's latest assignment (the last
  epoch's matching, after it has settled);
- ``validation``: the best accuracy on validation questions held out of training
  (``tag_selection.validation_questions``), sampled exactly like evaluation.

Spare tags (N > M) can learn to be a twin of one mode that is right only on the questions it
was matched to (README "Results"); their accuracy drops while Pass@1 on the best tag and
Cons@N hide it. With validation questions, ``usable_tags`` lists the tags whose validation
accuracy is at least ``tag_selection.min_relative_accuracy`` times the best tag's, and
evaluation reports Cons@N and the minimum tag accuracy over those tags too (the full set is
always reported as well). The choice and its evidence go to the model folder
(``ssft_tags.json``, key ``tag_selection``).

Validation questions are chosen by a hash of the question id (``validation_split``), not by
the seed or the method (at most a quarter of the file's questions), so every method and seed
trained on one trace-set file holds out the same questions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ssft.config import DataConfig, EvalConfig
from ssft.data.grading import grade
from ssft.data.teachers.base import Question
from ssft.data.trace_set import TraceSet
from ssft.eval import metrics as eval_metrics
from ssft.eval.sampling import sample_with_tags

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PASS1_RULES = ("coverage", "coverage_last_epoch", "validation")


def held_out_count(num_validation: int, num_questions: int) -> int:
    """Questions actually held out: ``num_validation``, but never more than a quarter of the
    file's questions (a small trace set keeps three quarters to train on)."""
    return min(num_validation, num_questions // 4)


def validation_split(
    sets: Sequence[TraceSet], num_validation: int
) -> tuple[list[TraceSet], list[TraceSet]]:
    """``(train, held_out)``: the ``held_out_count`` questions of lowest sha256(question_id)
    are held out; both lists keep the file's order."""
    count = held_out_count(num_validation, len(sets))
    if count == 0:
        return list(sets), []
    ranked = sorted(sets, key=lambda s: hashlib.sha256(s.question_id.encode()).hexdigest())
    held = {s.question_id for s in ranked[:count]}
    return [s for s in sets if s.question_id not in held], [
        s for s in sets if s.question_id in held
    ]


def validation_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    held_out: Sequence[TraceSet],
    tags: Sequence[str],
    eval_cfg: EvalConfig,
    data_cfg: DataConfig,
    *,
    samples_per_tag: int,
    seed: int,
    blocked_tokens: Sequence[str] = (),
    label: str = "[train] validation",
) -> dict[str, float]:
    """Per tag, the mean over held-out questions of the share of correct samples.

    Samples are drawn as evaluation draws them (``eval.temperature``, ``eval.top_p``,
    ``eval.max_new_tokens``, the training prompt format, the tag appended, never writing
    ``blocked_tokens``) and graded
    against each question's gold answer (math-verify, gold first). While it samples, a
    ``<label>: 96/256 (question, tag) pairs | ... ETA ...`` line every
    ``sampling.PROGRESS_EVERY_S`` seconds says how far it is.
    """
    questions = [Question(s.question_id, s.prompt, s.gold_answer, s.source) for s in held_out]
    rows = sample_with_tags(
        model, tokenizer, questions, tags, samples_per_tag=samples_per_tag,
        temperature=eval_cfg.temperature, top_p=eval_cfg.top_p,
        max_new_tokens=eval_cfg.max_new_tokens, batch_size=eval_cfg.batch_size, seed=seed,
        use_chat_template=data_cfg.use_chat_template, prompt_template=data_cfg.prompt_template,
        blocked_tokens=blocked_tokens, progress=label,
    )  # fmt: skip
    gold = {q.question_id: q.gold_answer for q in questions}
    for row in rows:
        row["correct"] = grade(gold[row["question_id"]], row["text"], eval_cfg.answer_extraction)[1]
    return {tag: eval_metrics.pass1(rows, tag) for tag in tags}


@dataclass
class TagSelection:
    """What ``select_tags`` decided and why; ``to_json`` is the ``tag_selection`` record."""

    pass1_tag: str
    rule: str
    candidates: dict[str, str]  # rule -> the tag it picks
    usable_tags: list[str]
    coverage: dict[str, int]
    coverage_last_epoch: dict[str, int]
    validation_accuracy: dict[str, float] = field(default_factory=dict)
    validation_questions: int = 0
    min_relative_accuracy: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def why(self) -> str:
        """One line for logs and tables: the rule and the evidence behind the pick."""
        tag = self.pass1_tag
        if self.rule == "validation":
            acc = self.validation_accuracy[tag]
            return f"{tag}: best validation accuracy {acc:.3f} on {self.validation_questions} q"
        scores = self.coverage if self.rule == "coverage" else self.coverage_last_epoch
        return f"{tag}: most traces matched ({self.rule}: {scores[tag]})"


def _best(scores: Mapping[str, float], tags: Sequence[str]) -> str:
    return max(tags, key=lambda t: scores[t])  # the first maximum: the lowest tag wins ties


def select_tags(
    tags: Sequence[str],
    coverage: Sequence[int],
    coverage_last_epoch: Sequence[int],
    validation: Mapping[str, float] | None,
    *,
    rule: str,
    min_relative_accuracy: float = 0.0,
    validation_questions: int = 0,
) -> TagSelection:
    """Apply ``rule`` (``PASS1_RULES``); ties go to the lowest tag (``<think1>`` first).

    ``coverage[i]`` / ``coverage_last_epoch[i]`` belong to ``tags[i]``; ``validation`` maps
    each tag to its validation accuracy, or is None when no question was held out.
    """
    if rule not in PASS1_RULES:
        raise ValueError(f"unknown Pass@1 rule {rule!r}; valid rules: {list(PASS1_RULES)}")
    tags = list(tags)
    cov = dict(zip(tags, map(int, coverage), strict=True))
    last = dict(zip(tags, map(int, coverage_last_epoch), strict=True))
    candidates = {"coverage": _best(cov, tags), "coverage_last_epoch": _best(last, tags)}
    usable = list(tags)
    if validation:
        candidates["validation"] = _best(validation, tags)
        best = max(validation.values())
        usable = [t for t in tags if validation[t] >= min_relative_accuracy * best]
    elif rule == "validation":
        raise ValueError(
            "tag_selection.pass1_rule=validation needs held-out questions: set "
            "tag_selection.validation_questions > 0, or choose pass1_rule=coverage_last_epoch."
        )
    return TagSelection(
        candidates[rule], rule, candidates, usable, cov, last, dict(validation or {}),
        validation_questions, min_relative_accuracy,
    )  # fmt: skip
