"""The policy hooks the loop lends RL methods (``MethodContext.tag_logprobs``,
``reference_tag_logprobs``, ``rollouts``), on the loop's own model, with no gradient.

Rollouts use the evaluation sampler (``ssft.eval.sampling.sample_requests``: the prompt
exactly as in training, the tag appended, per-sample seeded streams) and the project's
grader, so a rollout's reward is what evaluation would score. Each training worker rolls out
its own questions (under Ray Train, ``train.num_workers`` workers roll out in parallel). The
model samples in eval mode and goes back to train mode after; the reference (the model the
run started from, for GFPO's KL) is loaded once, on first use, and its tag log-probs are
cached per question (it never changes).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ssft.data.grading import grade
from ssft.eval.sampling import SampleRequest, sample_requests
from ssft.method.base import RolloutRequest
from ssft.method.sequences import TokenizedQuestion
from ssft.models import load_model_and_tokenizer

if TYPE_CHECKING:
    from ssft.train.setup import Run


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def tag_logprobs(
    model: torch.nn.Module,
    questions: Sequence[TokenizedQuestion],
    tag_ids: Sequence[int],
    *,
    pad_id: int,
    batch_size: int = 64,
) -> np.ndarray:
    """[B, N] vocabulary log-probs of each tag right after each question's prompt.

    Prompts are left-padded so every row's last position is its tag position, and only that
    position's logits are computed (``logits_to_keep=1``): one forward per batch of prompts."""
    device = next(model.parameters()).device
    tags = torch.tensor(list(tag_ids), device=device)
    out = []
    with eval_mode(model):
        for start in range(0, len(questions), batch_size):
            chunk = questions[start : start + batch_size]
            width = max(len(q.prompt_ids) for q in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, q in enumerate(chunk):
                ids[r, width - len(q.prompt_ids) :] = torch.tensor(q.prompt_ids)
                mask[r, width - len(q.prompt_ids) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                position_ids=positions.to(device), logits_to_keep=1,
            ).logits[:, -1].float()  # fmt: skip
            out.append(torch.log_softmax(logits, dim=-1)[:, tags].cpu().numpy())
    return np.concatenate(out).astype(np.float64)


class ReferencePolicy:
    """The frozen model a run started from: its tag log-probs, cached per question."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.model: torch.nn.Module | None = None
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, questions: Sequence[TokenizedQuestion]) -> np.ndarray:
        missing = [q for q in questions if q.question_id not in self.cache]
        if missing:
            if self.model is None:
                self.model = self._load()
            with self.run.autocast():
                rows = tag_logprobs(self.model, missing, self.run.tag_ids, pad_id=self.run.pad_id)
            self.cache.update({q.question_id: row for q, row in zip(missing, rows, strict=True)})
        return np.stack([self.cache[q.question_id] for q in questions])

    def _load(self) -> torch.nn.Module:
        cfg = self.run.cfg
        path = cfg.gfpo.init_from or cfg.model.name_or_path
        model_cfg = dataclasses.replace(cfg.model, init="pretrained", name_or_path=path,
                                        tokenizer=None)  # fmt: skip
        model, tokenizer = load_model_and_tokenizer(model_cfg, seed=cfg.seed)
        ids = tuple(tokenizer.convert_tokens_to_ids(list(self.run.tag_names)))
        if ids != tuple(self.run.tag_ids):
            raise ValueError(
                f"the reference model {path!r} has tag ids {ids}, the trained model "
                f"{tuple(self.run.tag_ids)}: gfpo.init_from must be the SSFT model this run "
                "started from"
            )
        return model.to(self.run.device).eval().requires_grad_(False)


def sample_requests_of(run: Run, requests: Sequence[RolloutRequest]) -> list[SampleRequest]:
    """The sampler's requests for an RL method's rollout requests (question text, tag name)."""
    return [SampleRequest(run.sources[r.question.question_id], run.tag_names[r.tag_index], r.n,
                          r.key) for r in requests]  # fmt: skip


def graded_rollouts(
    model: torch.nn.Module, tokenizer, asked: Sequence[SampleRequest], cfg,
    blocked_tokens: Sequence[str] = (),
) -> list[list[float]]:  # fmt: skip
    """Sample ``asked`` on ``model`` (eval mode) and grade each sample: 1.0 correct, else 0.0.
    ``cfg``: the run's ``ExperimentConfig`` (gfpo's decoding, eval's grading, data's prompt);
    ``blocked_tokens``: never sampled (``Run.blocked_tokens``)."""
    g, ev, data = cfg.gfpo, cfg.eval, cfg.data
    on_gpu = next(model.parameters()).device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()
    with eval_mode(model), autocast:
        samples = sample_requests(
            model, tokenizer, asked, temperature=g.temperature, top_p=ev.top_p,
            max_new_tokens=g.max_new_tokens or ev.max_new_tokens,
            batch_size=g.rollout_batch_size, seed=cfg.seed,
            use_chat_template=data.use_chat_template, prompt_template=data.prompt_template,
            blocked_tokens=blocked_tokens,
        )  # fmt: skip
    return [
        [float(grade(a.question.gold_answer, s["text"], ev.answer_extraction)[1]) for s in ss]
        for a, ss in zip(asked, samples, strict=True)
    ]


def rollouts(run: Run) -> Callable[[Sequence[RolloutRequest]], list[list[float]]]:
    """Graded rollouts in this process, on the run's current model."""
    return lambda requests: graded_rollouts(
        run.model, run.tokenizer, sample_requests_of(run, requests), run.cfg, run.blocked_tokens
    )
