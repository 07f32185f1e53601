"""Tag-conditioned sampling from a trained model, as the paper evaluates it.

The prompt is built exactly as in training (``ssft.method.sequences.format_prompt``: the chat
template's generation prompt, or the plain template), then the tag token is appended, so
the model continues after ``<think i>``. Sampling reuses the ``hf`` teacher's batched,
per-row-seeded generation (``ssft.data.teachers.hf``): a sample depends on (seed, question, tag,
sample index) only, not on batch composition.

Shared-tag methods (SFT-mixed, single-trace SFT) get the same number of samples as the
forking-token methods, all under their one tag: ``num_tags x samples_per_tag``.

``blocked_tokens``: tokens never sampled inside a continuation (``blocked_forking_tokens``:
the model's N tags and its shared tag, when ``eval.mask_forking_tokens`` is on). Training traces
never hold a forking token after the first position, so a sampled one is an error of the
sampler, and GFPO's tag-row training raises those tokens' logits at every position.

``tag_probabilities`` reports p(tag | prompt) at the position where the tag goes: the full
softmax probability of each tag token, and the distribution renormalised over the tags
(what a model trained with ``forking.tag_loss`` would pick from).

``sample_self_selected`` lets the model pick its own tag (how a model trained on the tag
choice, e.g. by GFPO, is judged): per question, tags are drawn from that renormalised
distribution (``draw_tags``: a generator seeded from (seed, question) alone, so the draws do
not depend on sharding) and each drawn tag is continued once (``sample_requests``).

``sample_with_tags(progress="[eval] <name>")`` prints how far it is, at most every
``PROGRESS_EVERY_S`` seconds, for a run that takes minutes on a CPU (silent when it is quick).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ssft.data.teachers.base import Question
from ssft.data.teachers.hf import HFTeacher
from ssft.method.sequences import DEFAULT_PROMPT_TEMPLATE, format_prompt
from ssft.method.tag_policy import draw_tags as policy_draw

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class _SamplerSettings:
    """What ``HFTeacher`` reads from its config, for sampling an in-memory student.

    Not a ``TeacherConfig`` (``build.teachers[i]``): that section requires a model name for
    kind ``hf`` and a temperature > 0, while the student is already loaded and greedy
    evaluation samples at temperature 0 (which ``HFTeacher`` itself accepts).
    """

    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int
    use_chat_template: bool
    name: str = "eval"
    kind: Literal["hf"] = "hf"
    model: str | None = None  # the model is passed in built
    system_prompt: str | None = None  # unused: ``_TagPrompt.prompt_ids`` builds the prompt
    dtype: Literal["auto"] = "auto"
    trust_remote_code: bool = False


PROGRESS_EVERY_S = 15.0  # or $SSFT_PROGRESS_EVERY_S


class Progress:
    """``<label>: 96/256 (question, tag) pairs | 40s elapsed, ETA 67s``, printed (stdout,
    flushed: a Ray task's or training worker's line reaches the driver's console) when
    ``every_s`` seconds (default ``$SSFT_PROGRESS_EVERY_S``, else ``PROGRESS_EVERY_S``) have
    passed since the last line; never a line at 100%, the caller says when it is done."""

    def __init__(self, label: str | None, total: int, every_s: float | None = None) -> None:
        if every_s is None:
            every_s = float(os.environ.get("SSFT_PROGRESS_EVERY_S") or PROGRESS_EVERY_S)
        self.label, self.total, self.every_s, self.done = label, total, every_s, 0
        self.start = self.last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.label is None or self.done >= self.total or now - self.last < self.every_s:
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / self.done * (self.total - self.done)
        print(f"{self.label}: {self.done}/{self.total} (question, tag) pairs | "
              f"{elapsed:.0f}s elapsed, ETA {eta:.0f}s", flush=True)  # fmt: skip


class _TagPrompt(HFTeacher):
    """The ``hf`` teacher with training's prompt format and one tag appended."""

    def __init__(
        self,
        cfg: _SamplerSettings,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        tag_id: int,
        use_chat_template: bool,
        prompt_template: str,
        blocked_ids: tuple[int, ...] = (),
    ) -> None:
        super().__init__(cfg, model=model, tokenizer=tokenizer)
        self.tag_id, self.use_chat, self.template = tag_id, use_chat_template, prompt_template
        self.blocked_ids = blocked_ids

    def prompt_ids(self, prompt: str) -> list[int]:
        ids = format_prompt(
            self.tokenizer, prompt, use_chat_template=self.use_chat, prompt_template=self.template
        )
        return [*ids, self.tag_id]


def blocked_forking_tokens(
    mask_forking_tokens: bool, tags: Sequence[str], shared_tag: str
) -> tuple[str, ...]:
    """What a model's samples never write: all its forking tokens (the N ``tags`` and the
    ``shared_tag``) when ``eval.mask_forking_tokens`` is on, else nothing."""
    return (*tags, shared_tag) if mask_forking_tokens else ()


def _token_id(tokenizer, token: str) -> int:
    """The id of ``token``, which must be one token of ``tokenizer`` (a forking token)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if tokenizer.encode(token, add_special_tokens=False) != [token_id]:
        raise ValueError(f"{token!r} is not a single token of this tokenizer: not an SSFT model?")
    return token_id


def _token_ids(tokenizer, tokens: Sequence[str]) -> tuple[int, ...]:
    """The ids of ``tokens`` (each one token, ``_token_id``), sorted, once each."""
    return tuple(sorted({_token_id(tokenizer, t) for t in tokens}))


def _tag_sampler(
    cfg: _SamplerSettings, model, tokenizer, tag: str, use_chat_template: bool,
    prompt_template: str, blocked_ids: tuple[int, ...] = (),
) -> _TagPrompt:  # fmt: skip
    """The sampler that continues after ``tag`` and never writes ``blocked_ids``; a tag that
    is not one token is refused."""
    return _TagPrompt(cfg, model, tokenizer, _token_id(tokenizer, tag), use_chat_template,
                      prompt_template, blocked_ids)  # fmt: skip


def sample_with_tags(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    tags: Sequence[str],
    *,
    samples_per_tag: int,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    use_chat_template: bool = True,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    blocked_tokens: Sequence[str] = (),
    progress: str | None = None,
) -> list[dict[str, Any]]:
    """One row per (question, tag, sample): question_id, tag, sample_index, text, num_tokens.

    Rows are ordered by question, then tag (in ``tags`` order), then sample index.
    ``blocked_tokens``: never sampled (module docstring). ``progress``: the label of a
    ``Progress`` line (e.g. ``"[eval] my-ssft"``); None = silent.
    """
    cfg = _SamplerSettings(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        batch_size=batch_size, use_chat_template=use_chat_template,
    )  # fmt: skip
    blocked = _token_ids(tokenizer, blocked_tokens)
    samplers = {tag: _tag_sampler(cfg, model, tokenizer, tag, use_chat_template,
                                  prompt_template, blocked) for tag in tags}  # fmt: skip
    by_key: dict[tuple[str, str], list] = {}
    meter = Progress(progress, len(questions) * len(tags))
    # One batch of questions under every tag, then the next batch: the very batches
    # ``HFTeacher.generate`` would make per tag (so the same samples), in an order where
    # progress is questions finished.
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        for tag, sampler in samplers.items():
            # The tag is part of the sample's identity: each tag draws its own random streams.
            keyed = [Question(f"{q.question_id}\t{tag}", q.prompt, q.gold_answer, q.source)
                     for q in chunk]  # fmt: skip
            for s in sampler.generate(keyed, samples_per_tag, seed):
                qid = s.question_id.rsplit("\t", 1)[0]
                by_key.setdefault((qid, tag), []).append(s)
            meter.advance(len(chunk))
    rows = []
    for q in questions:
        for tag in tags:
            for k, s in enumerate(by_key[(q.question_id, tag)]):
                rows.append({"question_id": q.question_id, "tag": tag, "sample_index": k,
                             "text": s.text, "num_tokens": s.num_tokens})  # fmt: skip
    return rows


@dataclass(frozen=True)
class SampleRequest:
    """``n`` continuations of ``question`` after ``[prompt ; tag]``.

    ``key`` joins the sample's identity, ``(seed, question_id, tag, key, sample index)``:
    two requests with the same question and tag but different keys draw different samples
    (a GFPO rollout under draw g, a self-selected evaluation sample k)."""

    question: Question
    tag: str
    n: int
    key: str = ""


def sample_requests(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[SampleRequest],
    *,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    use_chat_template: bool = True,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    blocked_tokens: Sequence[str] = (),
) -> list[list[dict[str, Any]]]:
    """For each request, its ``n`` samples as ``{"text", "num_tokens"}``, in request order.

    Requests are batched by (tag, n): each sample is seeded from its identity alone (the
    ``hf`` teacher's per-row streams), so what a request gets does not depend on the other
    requests. A request with ``key=""`` draws what ``sample_with_tags`` draws for that
    question and tag (given the same ``blocked_tokens``)."""
    cfg = _SamplerSettings(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        batch_size=batch_size, use_chat_template=use_chat_template,
    )  # fmt: skip
    blocked = _token_ids(tokenizer, blocked_tokens)
    samplers: dict[str, _TagPrompt] = {}
    groups: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(requests):
        if r.tag not in samplers:
            samplers[r.tag] = _tag_sampler(cfg, model, tokenizer, r.tag, use_chat_template,
                                           prompt_template, blocked)  # fmt: skip
        groups.setdefault((r.tag, r.n), []).append(i)
    out: list[list[dict[str, Any]]] = [[] for _ in requests]
    for (tag, n), idx in groups.items():
        keyed = [Question("\t".join(filter(None, (requests[i].question.question_id, tag,
                                                    requests[i].key))),
                          requests[i].question.prompt, requests[i].question.gold_answer,
                          requests[i].question.source) for i in idx]  # fmt: skip
        by_id: dict[str, list[dict[str, Any]]] = {}
        for s in samplers[tag].generate(keyed, n, seed):
            by_id.setdefault(s.question_id, []).append({"text": s.text, "num_tokens": s.num_tokens})
        for q, i in zip(keyed, idx, strict=True):  # the same identity: the same samples
            out[i] = by_id[q.question_id][:n]
    return out


def draw_tags(p: Sequence[float], n: int, seed: int, question_id: str) -> list[int]:
    """``n`` tag indices drawn with replacement from ``p`` (temperature 1): the one seeded draw
    of ``ssft.method.tag_policy`` (GFPO's rollouts use it too), keyed by the question, so a
    question's draws are the same whatever other questions share its shard or batch."""
    return policy_draw(p, n, seed, "self_selected", question_id)


def sample_self_selected(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    tags: Sequence[str],
    *,
    samples: int,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    use_chat_template: bool = True,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    blocked_tokens: Sequence[str] = (),
    progress: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model picks its tag: ``(sample rows, tag-probability rows)``.

    Per question, ``samples`` tags are drawn from its p(tag | prompt) renormalised over
    ``tags`` (``draw_tags``) and each drawn tag is continued once (request
    ``SampleRequest(q, tag, 1, key=f"self{k}")``). Sample rows, by question then sample
    index k: question_id, tag (the drawn one), sample_index (k, numbered per question, not
    per tag), text, num_tokens, p_tag (the drawn tag's renormalised probability). The
    tag-probability rows are ``tag_probabilities``' for ``questions`` and ``tags``. One tag
    (a shared-tag method's) is drawn every time. ``batch_size``: samples per generate call
    (each request is one sample). ``blocked_tokens``, ``progress``: as in
    ``sample_with_tags``.
    """
    fmt = dict(use_chat_template=use_chat_template, prompt_template=prompt_template)
    prob_rows = tag_probabilities(model, tokenizer, questions, tags, **fmt)
    p = {(r["question_id"], r["tag"]): r["p_among_tags"] for r in prob_rows}
    drawn = {q.question_id: draw_tags([p[(q.question_id, t)] for t in tags], samples, seed,
                                      q.question_id) for q in questions}  # fmt: skip
    settings = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                    batch_size=batch_size, seed=seed, blocked_tokens=blocked_tokens,
                    **fmt)  # fmt: skip
    # Chunks of about ``batch_size`` samples per tag, for the progress line; each sample is
    # seeded from its identity, so chunking changes nothing but the batches.
    per_chunk = max(1, batch_size * len(tags) // max(1, samples))
    meter = Progress(progress, len(questions) * samples)
    rows = []
    for start in range(0, len(questions), per_chunk):
        chunk = questions[start : start + per_chunk]
        requests = [SampleRequest(q, tags[i], 1, key=f"self{k}")
                    for q in chunk for k, i in enumerate(drawn[q.question_id])]  # fmt: skip
        outs = sample_requests(model, tokenizer, requests, **settings)
        for r, [s] in zip(requests, outs, strict=True):
            k = int(r.key.removeprefix("self"))
            rows.append({"question_id": r.question.question_id, "tag": r.tag, "sample_index": k,
                         "text": s["text"], "num_tokens": s["num_tokens"],
                         "p_tag": p[(r.question.question_id, r.tag)]})  # fmt: skip
        meter.advance(len(requests))
    return rows, prob_rows


def sample_with_tags_vllm(
    model_dir: str,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    tags: Sequence[str],
    *,
    samples_per_tag: int,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    seed: int = 0,
    use_chat_template: bool = True,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    blocked_tokens: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """``sample_with_tags`` on vLLM: the same prompts (token ids, tag appended), same rows.

    One request per (question, tag) with ``n=samples_per_tag`` and a seed from (seed,
    question, tag), so results do not depend on batching; ``blocked_tokens`` get a logit
    bias of -100 (vLLM's ban). vLLM is an optional GPU dependency.
    """
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError as err:
        raise ImportError(
            "eval.backend=vllm needs the vLLM package (an optional GPU dependency, installed "
            "with `pip install vllm==<version>` pinned together with your Ray version); use "
            "eval.backend=hf meanwhile."
        ) from err

    llm = LLM(model=str(model_dir), seed=seed, trust_remote_code=False)  # never run repo code
    ban = {i: -100.0 for i in _token_ids(tokenizer, blocked_tokens)} or None
    prompts, params, keys = [], [], []
    for q in questions:
        base = format_prompt(
            tokenizer,
            q.prompt,
            use_chat_template=use_chat_template,
            prompt_template=prompt_template,
        )
        for tag in tags:
            digest = hashlib.sha256(f"{seed}|{q.question_id}|{tag}".encode()).digest()
            prompts.append(
                TokensPrompt(prompt_token_ids=[*base, tokenizer.convert_tokens_to_ids(tag)])
            )
            params.append(SamplingParams(
                n=samples_per_tag, temperature=temperature, top_p=top_p,
                max_tokens=max_new_tokens, seed=int.from_bytes(digest[:4], "little") & 0x7FFFFFFF,
                logit_bias=ban,
            ))  # fmt: skip
            keys.append((q.question_id, tag))
    rows = []
    for (qid, tag), out in zip(keys, llm.generate(prompts, params), strict=True):
        for k, completion in enumerate(out.outputs):
            rows.append({"question_id": qid, "tag": tag, "sample_index": k,
                         "text": completion.text.strip(),
                         "num_tokens": len(completion.token_ids)})  # fmt: skip
    return rows


@torch.inference_mode()
def tag_probabilities(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    tags: Sequence[str],
    *,
    use_chat_template: bool = True,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
) -> list[dict[str, Any]]:
    """Per question and tag: p(tag | prompt) over the vocabulary and renormalised over tags."""
    tag_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(tags)))
    device = next(model.parameters()).device
    rows = []
    for q in questions:
        ids = format_prompt(
            tokenizer,
            q.prompt,
            use_chat_template=use_chat_template,
            prompt_template=prompt_template,
        )
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float()
        probs = torch.softmax(logits, dim=-1)[tag_ids.to(device)].cpu()
        among = probs / probs.sum().clamp(min=1e-30)
        for tag, p, r in zip(tags, probs.tolist(), among.tolist(), strict=True):
            rows.append({"question_id": q.question_id, "tag": tag, "p_vocab": p, "p_among_tags": r})
    return rows
