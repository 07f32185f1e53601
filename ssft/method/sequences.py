"""Token layout of one training sequence, and padding many of them into a batch.

A question's prompt is tokenized once; each trace is tokenized once with the end-of-turn
token appended. A sequence is put together only when its tag is known (after matching)::

    input_ids  [ p0  p1  ...  pP-1 | TAG  | r0  r1  ...  rK-1  EOT ]
    labels     [ -100 ...    -100  | -100 | r0  r1  ...  rK-1  EOT ]
                 prompt (chat template       the trace, then the end-of-turn token:
                 + generation prompt)        these carry the loss

``labels[t]`` is the token at position ``t`` (Hugging Face convention); the loss helpers
shift by one, so position ``t-1`` predicts ``labels[t]``. The end-of-turn token is always
supervised: a model that never sees it in its loss never learns to stop.

The tag carries no loss by default (``tag_loss=False``): it is part of the conditioning
input, appended after the generation prompt at evaluation time exactly as here. With
``tag_loss=True`` the tag position is supervised too, so the model learns p(tag | prompt)
(useful for picking a tag for Pass@1 and for RL on the tag, GFPO). Matching costs never
include the tag token: the cost compares how well each tag explains a trace.

The prompt uses the tokenizer's chat template (one user turn plus the generation prompt)
when it has one, otherwise the plain ``prompt_template`` (default
``"Question: {prompt}\\nAnswer: "``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
DEFAULT_PROMPT_TEMPLATE = "Question: {prompt}\nAnswer: "


@dataclass(frozen=True)
class TokenizedQuestion:
    """One question's prompt and traces as token ids, ready for matching and loss.

    ``trace_ids[j]`` already ends with the end-of-turn id. ``teachers[j]``, ``modes[j]`` and
    ``trace_keys[j]`` (the trace ids of the trace set) describe trace ``j``.
    """

    question_id: str
    prompt_ids: tuple[int, ...]
    trace_ids: tuple[tuple[int, ...], ...]
    trace_keys: tuple[str, ...] = ()
    teachers: tuple[str, ...] = ()
    modes: tuple[str | None, ...] = ()

    @property
    def num_traces(self) -> int:
        return len(self.trace_ids)


@dataclass
class PaddedBatch:
    """Right-padded sequences: ``input_ids``, ``attention_mask``, ``labels``, each [B, T].

    A packed batch (``ssft.train.packing``) has several sequences per row: no ``attention_mask``
    but ``position_ids`` restarting at 0 for each sequence, from which transformers builds
    attention that cannot cross sequences.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    labels: torch.Tensor
    position_ids: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> PaddedBatch:
        return PaddedBatch(
            *(None if t is None else t.to(device, non_blocking=True) for t in self._tensors())
        )

    def _tensors(self) -> tuple[torch.Tensor | None, ...]:
        return self.input_ids, self.attention_mask, self.labels, self.position_ids

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]


def format_prompt(
    tokenizer,
    prompt: str,
    *,
    use_chat_template: bool = True,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
) -> tuple[int, ...]:
    """Token ids of the prompt, ending where the tag goes (after the generation prompt)."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        # The rendered template already holds BOS and every special token it needs.
        return tuple(tokenizer.encode(text, add_special_tokens=False))
    return tuple(tokenizer.encode(prompt_template.format(prompt=prompt), add_special_tokens=True))


def end_of_turn_id(tokenizer, end_of_turn_token: str | None = None) -> int:
    """Id of the token that closes an answer: ``end_of_turn_token`` or the tokenizer's EOS."""
    token = end_of_turn_token or tokenizer.eos_token
    if token is None:
        raise ValueError(
            "the tokenizer has no eos_token, so the end of an answer is undefined; set "
            "data.end_of_turn_token to the token that ends an assistant turn."
        )
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"end-of-turn token {token!r} encodes to {len(ids)} tokens {ids}, not one; set "
            "data.end_of_turn_token to a single special token of this tokenizer."
        )
    return ids[0]


def tokenize_trace(tokenizer, text: str, eot_id: int) -> tuple[int, ...]:
    """The trace's ids followed by the end-of-turn id."""
    return (*tokenizer.encode(text, add_special_tokens=False), eot_id)


def build_sequence(
    prompt_ids: Sequence[int],
    tag_id: int,
    trace_ids: Sequence[int],
    *,
    tag_loss: bool = False,
    prefix_tokens: int | None = None,
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of ``[prompt ; tag ; trace]`` (see the module diagram).

    ``prefix_tokens`` keeps only the first L trace tokens (the matching cost's prefix); the
    loss always uses the whole trace.
    """
    trace = list(trace_ids if prefix_tokens is None else trace_ids[:prefix_tokens])
    input_ids = [*prompt_ids, tag_id, *trace]
    tag_label = tag_id if tag_loss else IGNORE_INDEX
    labels = [IGNORE_INDEX] * len(prompt_ids) + [tag_label, *trace]
    return input_ids, labels


def pad_batch(sequences: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> PaddedBatch:
    """Right-pad ``(input_ids, labels)`` pairs to the longest one.

    Right padding keeps every real token at the same position (and attention context) as in
    the unpadded sequence, so batched log-probs equal one-at-a-time ones.
    """
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    width = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(sequences):
        assert len(ids) == len(labs), f"row {row}: {len(ids)} ids but {len(labs)} labels"
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, : len(labs)] = torch.tensor(labs, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return PaddedBatch(input_ids, attention_mask, labels)
