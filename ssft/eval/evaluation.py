"""Evaluating a trained model the way the paper does (Ray-free; ``workflows/evaluate.py``
spreads question shards over Ray tasks).

For each question and each tag the model was trained with, ``samples_per_tag`` samples are
drawn after ``[prompt ; tag]`` (``ssft.eval.sampling``), graded against the gold answer
(math-verify, gold first) and labelled with a reasoning mode by ``eval.mode_classifier``
(``ssft.eval.modes``: on a benchmark with known modes, e.g. known-modes, its own
classifiers; or a user's). On any data,
each sample is also attributed to the teacher whose training traces it reads like
(``ssft.data.teacher_attribution``, from the model folder's ``teacher_profiles.json``), and with
``eval.greedy`` one greedy answer per question and tag is decoded as well.
Shared-tag methods sample ``num_tags x samples_per_tag`` times under their one tag, so every
method is judged on the same number of samples. Metrics come from ``ssft.eval.metrics``
(``summarize``), which computes every vote once.

With ``eval.self_selected`` the model also picks its own tag (``evaluate_questions(
self_selected=True)``, ``sampling.sample_self_selected``): per question, num_tags x
samples_per_tag tags are drawn from p(tag | prompt) renormalised over the tags and each is
continued once, rows ``decoding="self_selected"`` that carry ``p_tag``, the drawn tag's
probability. The whole per-question distribution is ``tag_distribution`` (the rows
``sampling.tag_probabilities`` gives; the draws use exactly these), passed to
``compute_metrics(tag_probs=...)`` for the entropy and mean p(tag) figures: sample rows stay
one kind of row, and the distribution, one row per (question, tag), is its own table. Those
rows never enter the fixed-tag figures, as greedy rows do not; this is how a model trained
on the tag choice (GFPO) is judged beside them.

Cons@N for a shared-tag method: its samples are grouped N at a time (sample j belongs to
group j // N; ``metrics.parallel_groups``), which is what "N parallel samples, then a vote"
means without forking tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ssft.config import DataConfig, EvalConfig, ModelConfig
from ssft.data.grading import grade
from ssft.data.teacher_attribution import read_profiles
from ssft.data.teachers.base import Question
from ssft.eval import metrics as eval_metrics
from ssft.eval.modes import mode_classifier
from ssft.eval.sampling import (
    blocked_forking_tokens,
    sample_self_selected,
    sample_with_tags,
    sample_with_tags_vllm,
    tag_probabilities,
)
from ssft.final_model import read_model_tags
from ssft.method.table import uses_shared_tag
from ssft.models import load_model_and_tokenizer, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def sampling_plan(info: dict[str, Any], samples_per_tag: int) -> tuple[list[str], int]:
    """``(tags to sample under, samples per tag)`` so that every method gets N x S samples."""
    tags = list(info["tags"])
    if uses_shared_tag(info["method"]):
        return [info["shared_tag"]], samples_per_tag * len(tags)
    return tags, samples_per_tag


def _model_dir_cfg(model_dir: str | Path, trust_remote_code: bool) -> ModelConfig:
    """The model config of a saved model directory, for ``ssft.models``' loaders.

    Those loaders pass ``trust_remote_code`` explicitly (so transformers never prompts) and
    turn a refused ``auto_map`` into an ``InputError`` naming the file; ``dtype="auto"``
    keeps the dtype the directory was saved in.
    """
    return ModelConfig(
        name_or_path=str(model_dir), init="pretrained", tokenizer=None, dtype="auto",
        trust_remote_code=trust_remote_code,
    )  # fmt: skip


def load_eval_model(
    model_dir: str | Path, *, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` of a final model directory, in eval mode, on the GPU if any.

    Code shipped in the directory (``auto_map``) is never run unless ``trust_remote_code``.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model_and_tokenizer(_model_dir_cfg(model_dir, trust_remote_code))
    return model.to(device).eval(), tokenizer


def evaluate_questions(
    model_dir: str | Path,
    questions: Sequence[Question],
    eval_cfg: EvalConfig,
    data_cfg: DataConfig,
    seed: int,
    *,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    trust_remote_code: bool = False,
    greedy: bool = False,
    self_selected: bool = False,
    label: str | None = None,
) -> list[dict[str, Any]]:
    """Graded sample rows for ``questions`` (one row per question, tag and sample): the
    sampling rows (``sampling.sample_with_tags``) with the question's text and gold answer,
    ``decoding``, ``parsed_answer``, ``correct``, ``strategy`` (``strategy_strict``) and
    ``teacher``.

    ``greedy``: one greedy (temperature 0) answer per question and tag instead of the
    sampling protocol, rows tagged ``decoding="greedy"`` (else ``"sampled"``). Pass an
    already loaded ``model``/``tokenizer`` (``load_eval_model``) to avoid loading them again;
    the ``vllm`` backend builds its own engine from ``model_dir``. Sampling with transformers
    prints ``[eval] <label> (sampled): 96/256 (question, tag) pairs | 40s elapsed, ETA 67s``
    every ``sampling.PROGRESS_EVERY_S`` seconds while it runs (``label``: the evaluation's
    name; default the model folder's training name).

    ``self_selected``: instead, the model picks each sample's tag (``sampling.
    sample_self_selected``, num_tags x samples_per_tag per question, as many as the sampling
    protocol draws), rows tagged ``decoding="self_selected"`` with ``p_tag``; their
    sample_index numbers a question's samples in draw order. ``hf`` backend only.
    """
    if greedy and self_selected:
        raise ValueError("greedy and self_selected are separate passes: ask for one at a time")
    check_self_selected(eval_cfg, self_selected)
    info = read_model_tags(model_dir)
    tokenizer = tokenizer or load_tokenizer(_model_dir_cfg(model_dir, trust_remote_code))
    tags, per_tag = sampling_plan(info, eval_cfg.samples_per_tag)
    if greedy:
        per_tag = 1
    common = dict(
        samples_per_tag=per_tag, temperature=0.0 if greedy else eval_cfg.temperature,
        top_p=eval_cfg.top_p, max_new_tokens=eval_cfg.max_new_tokens, seed=seed,
        use_chat_template=data_cfg.use_chat_template, prompt_template=data_cfg.prompt_template,
        blocked_tokens=blocked_forking_tokens(eval_cfg.mask_forking_tokens, info["tags"],
                                              info["shared_tag"]),
    )  # fmt: skip
    decoding = "greedy" if greedy else "self_selected" if self_selected else "sampled"
    if self_selected:
        if model is None:
            model = load_eval_model(model_dir, trust_remote_code=trust_remote_code)[0]
        common.pop("samples_per_tag")
        rows, _ = sample_self_selected(
            model, tokenizer, questions, tags, samples=per_tag * len(tags),
            # As many samples per generate call as the sampling protocol's batches hold.
            batch_size=eval_cfg.batch_size * eval_cfg.samples_per_tag,
            progress=f"[eval] {label or _model_name(model_dir)} (self-selected)", **common,
        )  # fmt: skip
    elif eval_cfg.backend == "vllm":
        rows = sample_with_tags_vllm(str(model_dir), tokenizer, questions, tags, **common)
    else:
        if model is None:
            model = load_eval_model(model_dir, trust_remote_code=trust_remote_code)[0]
        label = label or _model_name(model_dir)
        rows = sample_with_tags(
            model, tokenizer, questions, tags, batch_size=eval_cfg.batch_size,
            progress=f"[eval] {label} ({'greedy' if greedy else 'sampled'})", **common,
        )  # fmt: skip
    gold = {q.question_id: q for q in questions}
    classify = mode_classifier(eval_cfg.mode_classifier)
    profiles = read_profiles(model_dir)
    for row in rows:
        q = gold[row["question_id"]]
        row["question"], row["gold_answer"] = q.prompt, q.gold_answer  # readable on its own
        row["decoding"] = decoding
        row["parsed_answer"], row["correct"] = grade(
            q.gold_answer, row["text"], eval_cfg.answer_extraction
        )
        row["strategy"], row["strategy_strict"] = classify(q, row["text"])
        # Any data set: the teacher whose training traces the sample reads like.
        row["teacher"] = profiles.attribute(row["text"]) if profiles is not None else None
    return rows


def check_self_selected(eval_cfg: EvalConfig, wanted: bool | None = None) -> None:
    """Raise, before any work, when self-selected sampling (``wanted``, default
    ``eval.self_selected``) cannot run with this config: vLLM has no ``sample_requests``."""
    wanted = eval_cfg.self_selected if wanted is None else wanted
    if wanted and eval_cfg.backend == "vllm":
        raise ValueError("eval.self_selected needs eval.backend=hf for now")


def tag_distribution(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    tags: Sequence[str],
    data_cfg: DataConfig,
) -> list[dict[str, Any]]:
    """p(tag | prompt) of every question and tag, prompts written as training wrote them
    (``sampling.tag_probabilities`` rows: p_vocab, p_among_tags); the distribution
    self-selected samples draw from and ``compute_metrics(tag_probs=...)`` reads."""
    return tag_probabilities(
        model, tokenizer, questions, tags, use_chat_template=data_cfg.use_chat_template,
        prompt_template=data_cfg.prompt_template,
    )  # fmt: skip


def _model_name(model_dir: str | Path) -> str:
    """``<train.output_dir>/<name>/final_model`` -> ``<name>``; any other folder: its name."""
    path = Path(model_dir)
    return path.parent.name if path.name == "final_model" else path.name


def sample_ks(total: int) -> list[int]:
    """The k of pass@k and Cons@k reported for ``total`` samples per question: powers of two
    up to it, and ``total`` itself (so every method has k = 16 when it draws 16 or more)."""
    return sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= total} | {total})


def compute_metrics(
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    eval_cfg: EvalConfig,
    tag_probs: Sequence[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Pass@1 (chosen tag and every tag), Cons@N, Cons@k, pass@k, lengths, mode purity.

    Rows with ``decoding="greedy"`` (``evaluate_questions(greedy=True)``) add the greedy
    figures: ``greedy_pass1/<tag>``, ``greedy_accuracy_mean`` and greedy distinct modes.
    With usable tags narrower than all tags (``ssft.eval.tag_selection``), ``cons_native_usable``
    and ``tag_accuracy_min_usable`` give the figures over those.

    Rows with ``decoding="self_selected"`` (``evaluate_questions(self_selected=True)``) stay
    out of all of those and add the ``self/`` figures (``metrics.self_selected_metrics``,
    Cons@N voting over N = num_tags samples); ``tag_probs`` (``tag_distribution`` rows) adds
    their tag entropy and mean p(tag).
    """
    greedy = [r for r in rows if r.get("decoding") == "greedy"]
    chosen = [r for r in rows if r.get("decoding") == "self_selected"]
    rows = [r for r in rows if r.get("decoding", "sampled") == "sampled"]
    tags, per_tag = sampling_plan(info, eval_cfg.samples_per_tag)
    n_tags = len(info["tags"])
    total = per_tag * len(tags)
    cons_k = eval_cfg.cons_k or total
    if cons_k > total:
        raise ValueError(
            f"eval.cons_k={cons_k} but only {total} samples per question are drawn; raise "
            "eval.samples_per_tag or lower eval.cons_k."
        )
    pass1_tag = eval_cfg.pass1_tag or info["pass1_tag"]
    # A shared tag's samples vote N = n_tags at a time, as N tags' samples do.
    metrics = eval_metrics.summarize(
        rows, tags, pass1_tag, sample_ks(total), group_size=n_tags, cons_k=cons_k
    )
    metrics["num_tags"] = float(n_tags)
    usable = [t for t in info.get("usable_tags") or tags if t in tags]
    metrics["num_usable_tags"] = float(len(usable))
    if len(tags) > 1 and usable != tags:
        metrics["cons_native_usable"] = eval_metrics.cons_native(rows, usable)
        metrics["tag_accuracy_min_usable"] = min(metrics[f"pass1/{t}"] for t in usable)
    if greedy:
        metrics |= eval_metrics.greedy_metrics(greedy, tags)
    if chosen:
        metrics |= eval_metrics.self_selected_metrics(chosen, tags, tag_probs, cons_k=n_tags)
    return metrics
