"""Trace sets -> tokenized questions, with every dropped trace counted and explained.

Runs once per dataset (not per step). For each question, in this order:

1. Traces graded incorrect are dropped (``incorrect``): SSFT learns from correct traces.
   A trace whose text equals an earlier one of the same question after collapsing
   whitespace (``duplicate``) is dropped too: two copies of one trace would take two tags
   and teach them the same mode. Case is kept (``x`` and ``X`` may be different variables);
   near-duplicates are the build stage's to judge (``build.near_duplicate_threshold``).
2. A trace whose sequence ``prompt + tag + trace + end-of-turn`` exceeds ``max_seq_len`` is
   an error (``overlong="error"``) or dropped (``overlong="drop"``, counted as
   ``overlong``). It is never truncated: a cut trace loses its end-of-turn token and
   teaches the model not to stop.
3. ``max_traces_per_question`` caps M (``over_cap``), keeping the most distinct traces.
4. Policy for M > N, the one case the paper leaves open, applies only to injective
   methods (ssft, random), where each trace needs its own tag:
   ``too_many_traces="error"`` (default) stops with the question's file, row and the
   fix; ``"keep_most_distinct"`` keeps N traces and counts the rest (``too_many_traces``).
5. A question left with no trace (none correct, or all dropped above) is dropped and
   counted (``questions_without_traces``); the build stage lists such questions in
   ``rejected_questions.json``. Training with none left at all is an error (``setup_run``).

Errors (``overlong="error"``, M > N under ``"error"``) are ``InputError``s naming the file,
row, question_id, field and the setting that fixes them.

"Most distinct" is ``ssft.data.trace_selection.most_distinct`` over the traces' token ids:
greedy farthest-point selection under the Jaccard distance of token trigram sets, from the
first stored trace (ties: lowest index), in stored order. Exact duplicates are judged as in
the build (``trace_selection.normalized``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ssft.data.trace_selection import most_distinct, normalized
from ssft.data.trace_set import TraceSet
from ssft.errors import ConfigError, InputError
from ssft.method.sequences import (
    DEFAULT_PROMPT_TEMPLATE,
    TokenizedQuestion,
    end_of_turn_id,
    format_prompt,
    tokenize_trace,
)


@dataclass
class PrepStats:
    """What tokenization kept and dropped, by reason (logged to MLflow, printed)."""

    questions_in: int = 0
    questions_kept: int = 0
    traces_in: int = 0
    traces_kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        return (
            f"kept {self.traces_kept}/{self.traces_in} traces of "
            f"{self.questions_kept}/{self.questions_in} questions; dropped: {reasons}"
        )


def tokenize_trace_sets(
    sets: Sequence[TraceSet],
    tokenizer,
    *,
    num_tags: int,
    injective: bool = True,
    max_seq_len: int = 1024,
    max_traces_per_question: int | None = None,
    too_many_traces: str = "error",
    overlong: str = "drop",
    use_chat_template: bool = True,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    end_of_turn_token: str | None = None,
    source_name: str = "<memory>",
) -> tuple[list[TokenizedQuestion], PrepStats]:
    """Tokenize and filter trace sets (see module doc). ``injective``: ssft/random methods."""
    if too_many_traces not in ("error", "keep_most_distinct"):
        raise ConfigError(
            f"data.too_many_traces={too_many_traces!r}: use 'error' or 'keep_most_distinct'"
        )
    if overlong not in ("error", "drop"):
        raise ConfigError(f"data.overlong={overlong!r}: use 'error' or 'drop'")
    eot = end_of_turn_id(tokenizer, end_of_turn_token)
    stats, out = PrepStats(), []
    for row, ts in enumerate(sets):
        where = f"trace set {source_name!r}, row {row} (question_id={ts.question_id!r})"
        stats.questions_in += 1
        stats.traces_in += len(ts.traces)
        prompt_ids = format_prompt(
            tokenizer,
            ts.prompt,
            use_chat_template=use_chat_template,
            prompt_template=prompt_template,
        )
        kept, texts = [], set()
        for j, trace in enumerate(ts.traces):
            if not trace.correct:
                stats.dropped["incorrect"] += 1
                continue
            text = normalized(trace.text)
            if text in texts:
                stats.dropped["duplicate"] += 1
                continue
            texts.add(text)
            ids = tokenize_trace(tokenizer, trace.text, eot)
            length = len(prompt_ids) + 1 + len(ids)
            if length > max_seq_len:
                if overlong == "error":
                    raise InputError(
                        f"{where}: field 'traces[{j}].text' makes a {length}-token sequence "
                        "(prompt + tag + trace + end-of-turn), over "
                        f"data.max_seq_len={max_seq_len}. Raise data.max_seq_len, or set "
                        "data.overlong=drop to drop and count such traces."
                    )
                stats.dropped["overlong"] += 1
                continue
            kept.append((trace, ids))
        if max_traces_per_question is not None and len(kept) > max_traces_per_question:
            stats.dropped["over_cap"] += len(kept) - max_traces_per_question
            kept = [kept[k] for k in most_distinct([i for _, i in kept], max_traces_per_question)]
        if injective and len(kept) > num_tags:
            if too_many_traces == "error":
                raise InputError(
                    f"{where}: field 'traces' has {len(kept)} usable traces but forking.num_tags="
                    f"{num_tags}; each trace needs a distinct tag. Raise forking.num_tags to "
                    f"{len(kept)}, set data.max_traces_per_question={num_tags}, or set "
                    "data.too_many_traces=keep_most_distinct (drops are counted)."
                )
            stats.dropped["too_many_traces"] += len(kept) - num_tags
            kept = [kept[k] for k in most_distinct([i for _, i in kept], num_tags)]
        if not kept:
            stats.dropped["questions_without_traces"] += 1
            continue
        stats.questions_kept += 1
        stats.traces_kept += len(kept)
        out.append(
            TokenizedQuestion(
                question_id=ts.question_id,
                prompt_ids=prompt_ids,
                trace_ids=tuple(ids for _, ids in kept),
                trace_keys=tuple(t.trace_id for t, _ in kept),
                teachers=tuple(t.teacher for t, _ in kept),
                modes=tuple(t.mode for t, _ in kept),
            )
        )
    return out, stats
