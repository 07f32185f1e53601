"""The ``vllm`` teacher: offline batch sampling with vLLM on local GPUs.

For sampling many answers from an open model, vLLM's continuous batching is several times
faster than ``model.generate`` (the ``hf`` teacher), and it needs no server (the ``openai``
teacher against ``vllm serve`` is the alternative when a server is already running).

vLLM is an optional GPU dependency: it is not installed on CPU machines and never runs in
CI. It is imported in the constructor, so ``import ssft`` and every other teacher work
without it, and a config that asks for it fails at build time with install instructions.

Sampling: one ``SamplingParams(n=num_samples, ...)`` per question, seeded from (seed,
question_id), so a question's samples do not depend on the rest of the batch and a shard
retried by Ray gives the same texts (vLLM is deterministic per request seed on the same
hardware and version). The engine is created on the first ``generate`` call (``LLM(...,
seed=seed)``) and reused: building it loads the weights and reserves GPU memory.

With ``use_chat_template`` the prompt goes through ``llm.chat`` (system prompt if set, then
the question); otherwise the raw text ``system_prompt + "\\n\\n" + prompt`` (or the prompt
alone) goes to ``llm.generate``. ``num_tokens`` is the number of generated token ids.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Sequence
from typing import Any

from ssft.data.teachers.base import Question, Sample, Teacher

VLLM_MISSING = (
    "teacher {name!r}: kind 'vllm' needs the vLLM package, an optional GPU dependency that "
    "is not installed here. Install it on a CUDA machine with `pip install vllm==<version>` "
    "pinned together with the Ray version you run (each vLLM release supports specific "
    "Ray versions), or meanwhile use kind 'hf' (transformers generate, CPU or GPU) or kind "
    "'openai' (an OpenAI-compatible server such as `vllm serve`)."
)


def _question_seed(seed: int, question_id: str) -> int:
    key = f"{seed}|vllm|{question_id}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


class VLLMTeacher(Teacher):
    """Samples ``num_samples`` answers per question with ``vllm.LLM`` in this process."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        try:
            import vllm
        except ImportError as err:
            raise ImportError(VLLM_MISSING.format(name=cfg.name)) from err
        if not cfg.model:
            raise ValueError(f"teacher {cfg.name!r}: kind 'vllm' needs model (a path or hub id)")
        self._vllm = vllm
        self._llm = None

    def _engine(self, seed: int):
        if self._llm is None:
            cfg = self.cfg
            self._llm = self._vllm.LLM(
                model=cfg.model,
                dtype=cfg.dtype or "auto",
                trust_remote_code=bool(cfg.trust_remote_code),
                seed=seed,
            )
        return self._llm

    def _params(self, num_samples: int, seed: int, question_id: str):
        return self._vllm.SamplingParams(
            n=num_samples,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            max_tokens=self.cfg.max_new_tokens,
            seed=_question_seed(seed, question_id),
        )

    def generate(self, questions: Sequence[Question], num_samples: int, seed: int) -> list[Sample]:
        """``num_samples`` answers per question, grouped by question in input order."""
        if num_samples <= 0 or not questions:
            return []
        llm = self._engine(seed)
        params = [self._params(num_samples, seed, q.question_id) for q in questions]
        system = self.cfg.system_prompt
        if self.cfg.use_chat_template:
            conversations = [
                ([{"role": "system", "content": system}] if system else [])
                + [{"role": "user", "content": q.prompt}]
                for q in questions
            ]
            outputs = llm.chat(conversations, sampling_params=params, use_tqdm=False)
        else:
            prompts = [f"{system}\n\n{q.prompt}" if system else q.prompt for q in questions]
            outputs = llm.generate(prompts, sampling_params=params, use_tqdm=False)
        # vLLM returns one RequestOutput per prompt, in prompt order.
        assert len(outputs) == len(questions), (len(outputs), len(questions))
        samples = []
        for q, output in zip(questions, outputs, strict=True):
            for completion in output.outputs:
                num_tokens = len(completion.token_ids)
                samples.append(Sample(q.question_id, self.name, completion.text, num_tokens))
        return samples

    def close(self) -> None:
        """Drops the engine so its GPU memory can be reclaimed (best effort in vLLM)."""
        self._llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
