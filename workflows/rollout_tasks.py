"""GFPO's rollouts as Ray tasks (``gfpo.rollout_tasks > 0``), for a Ray Train worker.

Each call (one chunk of one step on one worker): the worker's current model goes into the
object store once (weights on the CPU), its rollout requests are split into
``gfpo.rollout_tasks`` shares, and each share is sampled and graded by a Ray task with the
same code the in-process path runs (``ssft.train.policy_hooks.graded_rollouts``). Every
sample is seeded from its own identity, so the rewards are those the worker would have
computed itself. Tasks reserve ``gfpo.rollout_task_cpus`` / ``rollout_task_gpus``; the
default 0 CPUs borrows the waiting worker's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import ray
import torch

from ssft.method.base import RolloutRequest
from ssft.train.policy_hooks import graded_rollouts, sample_requests_of


@ray.remote(max_retries=2)  # a lost task is sampled again: same seeds, same rewards
def _rollout_share(
    model: torch.nn.Module, tokenizer: Any, asked: list, cfg: Any, blocked: tuple[str, ...]
) -> list:
    torch.set_num_threads(1)  # share the CPUs the waiting trainer lends
    if torch.cuda.is_available() and cfg.gfpo.rollout_task_gpus > 0:
        model = model.to("cuda")
    return graded_rollouts(model, tokenizer, asked, cfg, blocked)


def ray_task_rollouts(run: Any) -> Callable[[Sequence[RolloutRequest]], list[list[float]]]:
    """``TrainContext.rollouts`` for a Ray Train worker: rollouts spread over Ray tasks."""
    g = run.cfg.gfpo
    remote = _rollout_share.options(num_cpus=g.rollout_task_cpus, num_gpus=g.rollout_task_gpus)

    def roll(requests: Sequence[RolloutRequest]) -> list[list[float]]:
        asked = sample_requests_of(run, requests)
        if not asked:
            return []
        model = run.model if run.device.type == "cpu" else copy.deepcopy(run.model).cpu()
        model_ref = ray.put(model)  # one copy of the weights per call, shared by its tasks
        k = max(1, min(g.rollout_tasks, len(asked)))
        shares = [asked[i::k] for i in range(k)]  # round-robin: similar work per task
        results = ray.get([remote.remote(model_ref, run.tokenizer, share, run.cfg,
                                         run.blocked_tokens) for share in shares])  # fmt: skip
        out: list[list[float]] = [[] for _ in asked]
        for i, share_rewards in enumerate(results):
            for j, rewards in enumerate(share_rewards):
                out[i + j * k] = rewards
        return out

    return roll
