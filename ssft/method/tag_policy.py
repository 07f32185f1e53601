"""The tag policy GFPO trains, and every term of its objective as per-tag coefficients.

The policy is the model's choice of forking token: ``p_i = pi(tag_i | prompt)``, the
vocabulary distribution at the tag position renormalised over the N tags (what a model
samples when it is restricted to its forking tokens). Every term of the objective a question
contributes has a gradient of the form ``sum_i c_i * grad log p_i`` with ``c`` computed on
the host from rewards and the current ``p`` (held constant):

    exact    J = sum_i p_i A_i                     c_i  = p_i A_i
    sampled  J = 1/G sum_g A_g log p_{t_g}         c_i  = sum_{g: t_g = i} A_g / G
    KL       - beta KL(p || r)                     c_i -= beta p_i (log p_i - log r_i)
    entropy  + eta H(p), while H < floor * ln N    c_i -= eta p_i log p_i

(the KL's and entropy's ``+1`` terms vanish: ``sum_i p_i grad log p_i = 0``). The training
loop backpropagates weighted NLLs over the vocabulary, ``NLL_j = -log softmax(z)_j``; as
``log p_i = log softmax(z)_i - log sum_k softmax(z)_k``, ascending ``sum_i c_i log p_i`` is
descending ``sum_j w_j NLL_j`` with ``w_j = c_j - (sum_i c_i) p_j`` (``vocab_weights``).
Continuation tokens carry no loss: a rollout's text enters only through its reward.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ADVANTAGE_EPS = 1e-6  # added to the reward std before dividing (GRPO)


def tag_distribution(tag_logprobs: np.ndarray) -> np.ndarray:
    """``p`` over the tags from the tags' vocabulary log-probs (any shape [..., N])."""
    z = np.asarray(tag_logprobs, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def entropy(p: np.ndarray) -> float:
    """Entropy in nats (0 log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    nz = p > 0
    return float(-(p[nz] * np.log(p[nz])).sum())


def kl_divergence(p: np.ndarray, r: np.ndarray) -> float:
    """KL(p || r) in nats over the tags."""
    p, r = np.asarray(p, dtype=np.float64), np.asarray(r, dtype=np.float64)
    nz = p > 0
    return float((p[nz] * (np.log(p[nz]) - np.log(r[nz]))).sum())


def draw_tags(p: np.ndarray, n: int, seed: int, *keys: object) -> list[int]:
    """``n`` tag indices drawn from ``p``, from a stream seeded by ``(seed, *keys)`` alone (so a
    question's draws do not depend on which other questions share its batch or shard)."""
    p = np.asarray(p, dtype=np.float64)
    where = "/".join(map(str, keys))
    if p.ndim != 1 or not len(p) or not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{where}: not a distribution over tags: {p.tolist()}")
    if p.sum() <= 0:
        raise ValueError(f"{where}: every tag has probability 0, none to draw")
    digest = hashlib.sha256("\0".join(map(str, (seed, *keys))).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return [int(t) for t in rng.choice(len(p), size=n, p=p / p.sum())]


@dataclass
class TagAdvantages:
    """One question's policy-gradient part: coefficients on ``log p_i`` and what to log."""

    coefficients: np.ndarray  # [N], c_i of the module docstring
    advantages: list[float]  # one per rollout (sampled) or per rolled-out tag (exact)
    flat: bool  # every rollout scored alike: no signal from this question


def _baseline(kind: str, p: np.ndarray, values: dict[int, float], rewards: Sequence[float]):
    if kind == "expected":  # the policy's value, over the tags that have one
        mass = sum(p[i] for i in values)
        return sum(p[i] * v for i, v in values.items()) / mass if mass > 0 else 0.0
    if kind == "mean":
        return float(np.mean(rewards))
    if kind == "none":
        return 0.0
    raise ValueError(f"unknown GFPO baseline {kind!r}")


def _scale(rewards: Sequence[float], normalize: bool) -> tuple[float, bool]:
    """The advantages' divisor and whether the question is flat (all rewards equal)."""
    std = float(np.std(rewards))
    flat = std == 0.0
    return (std + ADVANTAGE_EPS if normalize else 1.0), flat


def exact_advantages(
    p: np.ndarray, rewards_by_tag: Sequence[Sequence[float]], *, baseline: str, normalize: bool
) -> TagAdvantages:
    """The exact form: ``c_i = p_i (R_i - b) / s`` with ``R_i`` the mean reward of tag i's
    rollouts; a tag without rollouts keeps a zero advantage."""
    values = {i: float(np.mean(r)) for i, r in enumerate(rewards_by_tag) if len(r)}
    flat_rewards = [x for r in rewards_by_tag for x in r]
    b = _baseline(baseline, p, values, flat_rewards)
    scale, flat = _scale(flat_rewards, normalize)
    adv = np.zeros(len(p))
    if not (flat and normalize):  # a flat question's normalised advantages are zero
        for i, v in values.items():
            adv[i] = (v - b) / scale
    return TagAdvantages(np.asarray(p) * adv, [float(adv[i]) for i in values], flat)


def sampled_advantages(
    num_tags: int, draws: Sequence[int], rewards: Sequence[float], *, baseline: str,
    normalize: bool,
) -> TagAdvantages:  # fmt: skip
    """The sampled (REINFORCE/GRPO) form over G draws: ``c_i = sum_{g: t_g = i} A_g / G``,
    ``A_g = (R_g - b) / s``."""
    if baseline == "expected":
        raise ValueError("the sampled GFPO form has no 'expected' baseline: use mean or none")
    b = _baseline(baseline, np.ones(num_tags), {}, rewards)
    scale, flat = _scale(rewards, normalize)
    adv = [0.0 if (flat and normalize) else (r - b) / scale for r in rewards]
    c = np.zeros(num_tags)
    for t, a in zip(draws, adv, strict=True):
        c[t] += a / len(draws)
    return TagAdvantages(c, adv, flat)


def regularizer_coefficients(
    p: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    kl_coef: float = 0.0,
    entropy_floor: float = 0.0,
    entropy_coef: float = 0.0,
) -> np.ndarray:
    """The KL-to-reference and entropy-floor terms' coefficients (module docstring)."""
    p = np.asarray(p, dtype=np.float64)
    logp = np.log(np.clip(p, 1e-300, None))
    c = np.zeros_like(p)
    if kl_coef and reference is not None:
        logr = np.log(np.clip(np.asarray(reference, dtype=np.float64), 1e-300, None))
        c -= kl_coef * p * (logp - logr)
    if entropy_coef and entropy_floor and entropy(p) < entropy_floor * np.log(len(p)):
        c -= entropy_coef * p * logp
    return c


def vocab_weights(coefficients: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Loss weights on each tag's vocabulary NLL with the gradient of ``-sum_i c_i log p_i``."""
    c = np.asarray(coefficients, dtype=np.float64)
    return c - c.sum() * np.asarray(p, dtype=np.float64)
