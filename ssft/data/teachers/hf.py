"""``kind: hf``: sample answers from a local Hugging Face causal LM with ``generate``.

The model is a local directory or hub id (``from_pretrained``, ``trust_remote_code`` off
unless the config opts in), or an already built ``(model, tokenizer)`` pair
(``HFTeacher.from_model``, used by tests and by serving code that holds a model already).

One ``generate`` call per ``batch_size`` questions. Prompts are left-padded by hand (the
tokenizer is shared with other code, so its ``padding_side`` is never touched) and every
question's row is repeated ``num_samples`` times, so its samples sit together::

    row   0 .. S-1   question 0, samples 0..S-1     [pad pad p0 p1 p2 | new tokens ...]
    row   S .. 2S-1  question 1, samples 0..S-1     [p0 p1 p2 p3 p4   | new tokens ...]

Sampling (``temperature > 0``) is done by ``_RowSampler``, a logits processor that draws
each row's token with that row's own random stream, seeded from ``(seed, question_id,
sample index)``. A question's samples therefore do not depend on which other questions
share its batch, on ``batch_size`` or on the global torch RNG (up to the float noise that
left padding adds to the logits). ``generate`` then runs greedily over the one token the
sampler left. Temperature and top-p are applied here; ``top_k`` is not used, while other
processors of the model's own ``generation_config`` (e.g. ``repetition_penalty``) still run
before the sampler. ``temperature == 0`` is greedy decoding: one row per question, its text
repeated ``num_samples`` times.

``blocked_ids`` (empty for teachers): token ids never generated, masked to ``-inf`` before
temperature, top-p and the draw (greedy decoding too). A student sampler blocks its forking
tokens: they belong at the tag position only, never inside an answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from ssft.data.teachers.base import Question, Sample, Teacher
from ssft.errors import InputError

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def row_seed(seed: int, question_id: str, sample_index: int) -> int:
    """A 63-bit seed for one sample's random stream (stable across runs and processes)."""
    digest = hashlib.sha256(f"{seed}\0{question_id}\0{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class _RowSampler:
    """Logits processor: temperature, top-p, then one draw per row from the row's generator.

    Returns scores that are ``-inf`` everywhere but the drawn token, so greedy decoding
    picks it. Uniforms come from CPU generators (one per row) and go to the device in one
    copy per step; the token is found by inverse CDF (``searchsorted``), which never picks a
    token of probability zero.
    """

    def __init__(self, temperature: float, top_p: float, seeds: Sequence[int]) -> None:
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        assert scores.shape[0] == len(self.generators), (scores.shape, len(self.generators))
        scores = scores.float()
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1)  # [rows, vocab]
        u = torch.stack([torch.rand((), generator=g) for g in self.generators])
        u = u.to(cdf.device).unsqueeze(1) * cdf[:, -1:]  # scale by the total: cumsum rounding
        token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


class _BlockTokens:
    """Logits processor: ``-inf`` for ``ids`` in every row (not transformers'
    ``SuppressTokensLogitsProcessor``, which would replace one the model's own
    ``generation_config.suppress_tokens`` asks for)."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = torch.tensor(list(ids), dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.index_fill(1, self.ids.to(scores.device), float("-inf"))


class HFTeacher(Teacher):
    """Samples answers with ``model.generate``; see the module docstring for the layout."""

    blocked_ids: tuple[int, ...] = ()

    def __init__(self, cfg: Any, model=None, tokenizer=None) -> None:
        super().__init__(cfg)
        _check_config(cfg)
        if model is None or tokenizer is None:
            model, tokenizer = _load(cfg)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        pad_id = tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model, tokenizer)
        if self.pad_id is None or not self.eos_ids:
            raise ValueError(
                f"teacher {cfg.name!r}: the tokenizer of {cfg.model!r} has no eos_token (and no "
                "pad_token), so generation cannot stop or pad; use a tokenizer that has one."
            )

    @classmethod
    def from_model(cls, cfg: Any, model, tokenizer) -> HFTeacher:
        """A teacher around an already built model (left on its device) and tokenizer."""
        return cls(cfg, model=model, tokenizer=tokenizer)

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of one question's prompt, ending where the answer starts."""
        tok, system = self.tokenizer, self.cfg.system_prompt
        if self.cfg.use_chat_template and getattr(tok, "chat_template", None):
            user = {"role": "user", "content": prompt}
            messages = [{"role": "system", "content": system}, user] if system else [user]
            try:
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as err:  # jinja2 raises TemplateError from inside the template
                if not system or type(err).__name__ != "TemplateError":
                    raise
                # Some templates (e.g. Gemma's) refuse a system turn: fold it into the user turn.
                merged = [{"role": "user", "content": f"{system}\n\n{prompt}"}]
                text = tok.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
            # The rendered template already holds BOS and every special token it needs.
            return tok.encode(text, add_special_tokens=False)
        text = f"Question: {prompt}\nAnswer: "
        if system:
            text = f"{system}\n\n{text}"
        return tok.encode(text, add_special_tokens=True)

    def generate(self, questions: Sequence[Question], num_samples: int, seed: int) -> list[Sample]:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        samples: list[Sample] = []
        step = self.cfg.batch_size
        for start in range(0, len(questions), step):
            samples.extend(self._generate_batch(questions[start : start + step], num_samples, seed))
        return samples

    @torch.inference_mode()
    def _generate_batch(
        self, questions: Sequence[Question], num_samples: int, seed: int
    ) -> list[Sample]:
        greedy = self.cfg.temperature == 0
        copies = 1 if greedy else num_samples  # greedy rows would all be identical
        prompts = [self.prompt_ids(q.prompt) for q in questions]
        width = max(len(p) for p in prompts)
        rows = len(prompts) * copies
        input_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, width), dtype=torch.long)
        for i, ids in enumerate(prompts):
            for r in range(i * copies, (i + 1) * copies):
                input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[r, width - len(ids) :] = 1
        from transformers import LogitsProcessorList

        processors = []
        if self.blocked_ids:  # first: the sampler then never sees them
            processors.append(_BlockTokens(self.blocked_ids))
        if not greedy:
            seeds = [row_seed(seed, q.question_id, j) for q in questions for j in range(copies)]
            processors.append(_RowSampler(self.cfg.temperature, self.cfg.top_p, seeds))
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            max_new_tokens=self.cfg.max_new_tokens,
            do_sample=False,  # sampling, when wanted, happens in _RowSampler
            num_beams=1,
            logits_processor=LogitsProcessorList(processors),
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
        )
        new_tokens = out[:, width:].cpu()  # the one device-to-host copy of the batch
        samples = []
        for i, q in enumerate(questions):
            for j in range(num_samples):
                ids = new_tokens[i * copies + (0 if greedy else j)].tolist()
                n = _length_with_eos(ids, self.eos_ids)
                text = self.tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
                samples.append(Sample(q.question_id, self.name, text, num_tokens=n))
        return samples

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _check_config(cfg: Any) -> None:
    problems = []
    if not cfg.temperature >= 0:
        problems.append(f"temperature must be >= 0 (0 = greedy), got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.max_new_tokens < 1:
        problems.append(f"max_new_tokens must be >= 1, got {cfg.max_new_tokens}")
    if cfg.batch_size < 1:
        problems.append(
            f"batch_size (questions per generate call) must be >= 1, got {cfg.batch_size}"
        )
    if cfg.dtype not in _DTYPES:
        problems.append(f"dtype must be one of {list(_DTYPES)}, got {cfg.dtype!r}")
    if problems:
        raise ValueError(f"teacher {cfg.name!r}: " + "; ".join(problems))


def _load(cfg: Any):
    """``(model, tokenizer)`` from ``cfg.model``, in eval mode, on CUDA when there is one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ssft.packaged_models import missing_model_hint

    if hint := missing_model_hint(cfg.model, f"build.teachers.{cfg.name}.model"):
        raise InputError(f"teacher {cfg.name!r}: {hint}")
    remote = bool(cfg.trust_remote_code)
    dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=remote)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, trust_remote_code=remote)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def _eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's generation EOS ids."""
    ids = [tokenizer.eos_token_id]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += gen_eos if isinstance(gen_eos, list) else [gen_eos]
    return list(dict.fromkeys(i for i in ids if i is not None))


def _length_with_eos(ids: list[int], eos_ids: list[int]) -> int:
    """Generated tokens up to and including the first EOS (all of them when none)."""
    for pos, token in enumerate(ids):
        if token in eos_ids:
            return pos + 1
    return len(ids)
