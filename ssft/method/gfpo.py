"""GFPO (Global Forking Policy Optimization): after SSFT, a policy gradient on the tag
position only; the rollouts continued from each tag only score that tag (answer correctness).

Per chunk of a step (on-policy: every step rolls out afresh with the current model)::

    tag log-probs (no grad, one forward per question) -> p over the N tags
    -> rollouts: every tag K times (rollout_tags=every_tag) or G tags drawn from p (policy)
    -> graded rewards -> advantages -> per-tag coefficients c (ssft.method.tag_policy)
       (+ KL to the SSFT model, + the entropy floor) -> loss weights w on each tag's NLL
    -> N sequences [prompt ; tag_j] per question, the label on tag_j only, weight w_j

The loop's denominator is one per question, so the step's loss is the mean over its
questions. Every sequence is a zero-loss row of the logged (NLL) loss: what GFPO logs is its
``gfpo/*`` metrics (rewards per tag, the tag distribution, entropy, KL, advantages).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ssft.method.base import MethodContext, RolloutRequest, StepSequences, TrainingMethod
from ssft.method.sequences import TokenizedQuestion, build_sequence
from ssft.method.table import Method
from ssft.method.tag_policy import (
    TagAdvantages,
    draw_tags,
    entropy,
    exact_advantages,
    kl_divergence,
    regularizer_coefficients,
    sampled_advantages,
    tag_distribution,
    vocab_weights,
)


class GFPO(TrainingMethod):
    """RL on the forking-token choice (the ``gfpo`` config section)."""

    console_metrics = ("gfpo/reward", "gfpo/policy_reward", "gfpo/tag_entropy")
    needs_policy = True
    logs_nll = False  # its loss is weights on the tag tokens: it shows rewards instead

    def __init__(self, method: Method, cfg: Any) -> None:
        super().__init__(method, cfg)
        self.g = cfg.gfpo

    def restrict_training(self, model: Any, tag_ids: Sequence[int]) -> None:
        """``gfpo.trainable=tag_head``: only the tags' rows of the output projection learn.

        Tied embeddings are untied first (the output matrix becomes a copy), so the tags'
        input embeddings, and with them every continuation, stay exactly the SSFT model's:
        GFPO then only re-weights which tag the model picks. The saved model is untied."""
        if self.g.trainable == "all":
            return
        head = model.get_output_embeddings()
        if head.weight is model.get_input_embeddings().weight:
            head.weight = torch.nn.Parameter(head.weight.detach().clone())
            model.config.tie_word_embeddings = False
            if getattr(model.config, "get_text_config", None):  # multimodal configs nest it
                model.config.get_text_config().tie_word_embeddings = False
        for param in model.parameters():
            param.requires_grad_(param is head.weight)
        mask = torch.zeros(head.weight.shape[0], 1, dtype=head.weight.dtype,
                           device=head.weight.device)  # fmt: skip
        mask[list(tag_ids)] = 1
        head.weight.register_hook(lambda grad: grad * mask.to(grad.dtype))

    def supervised_tokens(self, q: TokenizedQuestion) -> int:
        return 1  # one tag choice per question: the loss is the mean over questions

    def sequences_per_question(self, q: TokenizedQuestion) -> int:
        return self.cfg.forking.num_tags

    def rollout_plan(
        self, questions: Sequence[TokenizedQuestion], p: np.ndarray, ctx: MethodContext
    ) -> list[list[RolloutRequest]]:
        """Per question, its rollout requests (keyed by the step, so each step samples anew)."""
        plans = []
        for q, pq in zip(questions, p, strict=True):
            if self.g.rollout_tags == "every_tag":
                k = self.g.rollouts_per_tag
                plans.append([RolloutRequest(q, i, k, f"s{ctx.step}") for i in range(len(pq))])
            else:
                draws = draw_tags(pq, self.g.group_size, ctx.seed, "gfpo", ctx.step, q.question_id)
                plans.append([RolloutRequest(q, t, 1, f"s{ctx.step}g{j}")
                              for j, t in enumerate(draws)])  # fmt: skip
        return plans

    def advantages(
        self, p: np.ndarray, plan: list[RolloutRequest], rewards: list[list[float]]
    ) -> TagAdvantages:
        baseline, norm = self.g.baseline_kind, self.g.normalize_advantages
        if self.g.form == "sampled":
            draws = [r.tag_index for r in plan for _ in range(r.n)]
            flat = [x for rs in rewards for x in rs]
            return sampled_advantages(len(p), draws, flat, baseline=baseline, normalize=norm)
        by_tag: list[list[float]] = [[] for _ in p]
        for r, rs in zip(plan, rewards, strict=True):
            by_tag[r.tag_index].extend(rs)
        return exact_advantages(p, by_tag, baseline=baseline, normalize=norm)

    def chunk_sequences(
        self, questions: Sequence[TokenizedQuestion], ctx: MethodContext
    ) -> StepSequences:
        if not questions:
            return StepSequences([], [], [])
        g, n_tags = self.g, len(ctx.tag_ids)
        p = tag_distribution(ctx.tag_logprobs(questions))
        ref = tag_distribution(ctx.reference_tag_logprobs(questions)) if g.kl_coef else None
        plans = self.rollout_plan(questions, p, ctx)
        flat_requests = [r for plan in plans for r in plan]
        flat_rewards = ctx.rollouts(flat_requests)
        metrics: dict[str, list[float]] = {}

        def add(name: str, total: float, count: float = 1.0) -> None:
            s, c = metrics.setdefault(name, [0.0, 0.0])
            metrics[name] = [s + total, c + count]

        # Metric names as MLflow takes them: <think1> -> think1.
        names = tuple(t.strip("<>") for t in ctx.tags) or tuple(str(j) for j in range(n_tags))
        seqs, weights, at = [], [], 0
        for b, (q, plan) in enumerate(zip(questions, plans, strict=True)):
            rewards = flat_rewards[at : at + len(plan)]
            at += len(plan)
            adv = self.advantages(p[b], plan, rewards)
            c = adv.coefficients + regularizer_coefficients(
                p[b], None if ref is None else ref[b], kl_coef=g.kl_coef,
                entropy_floor=g.entropy_floor, entropy_coef=g.entropy_coef,
            )  # fmt: skip
            w = vocab_weights(c, p[b])
            for j, tag_id in enumerate(ctx.tag_ids):
                seqs.append(build_sequence(q.prompt_ids, tag_id, (), tag_loss=True))
                weights.append(float(w[j]))
            for r, rs in zip(plan, rewards, strict=True):
                add("gfpo/reward", sum(rs), len(rs))
                add(f"gfpo/reward/{names[r.tag_index]}", sum(rs), len(rs))
            for j in range(n_tags):
                add(f"gfpo/p/{names[j]}", float(p[b][j]))
            if g.rollout_tags == "every_tag":  # what a self-selected tag would score
                value = sum(float(p[b][r.tag_index]) * sum(rs) / len(rs)
                            for r, rs in zip(plan, rewards, strict=True))  # fmt: skip
                add("gfpo/policy_reward", value)
            add("gfpo/tag_entropy", entropy(p[b]))
            if ref is not None:
                add("gfpo/kl", kl_divergence(p[b], ref[b]))
            add("gfpo/advantage_abs", float(np.abs(adv.advantages).sum()), len(adv.advantages))
            add("gfpo/flat_questions", float(adv.flat))
        return StepSequences(
            seqs, weights, [False] * len(seqs), metrics={k: (s, c) for k, (s, c) in metrics.items()}
        )
