"""The ``vllm`` teacher: optional (a clear error without vLLM), checked against a fake module."""

from __future__ import annotations

import importlib.util
import sys
import types
from types import SimpleNamespace
from typing import Any

import pytest

from ssft.data.teachers.base import Question, build_teacher


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_missing_vllm_raises_clear_import_error():
    cfg = SimpleNamespace(
        name="big",
        kind="vllm",
        model="Qwen/Qwen2.5-7B-Instruct",
        dtype="bfloat16",
        trust_remote_code=False,
    )
    with pytest.raises(ImportError) as info:
        build_teacher(cfg)
    message = str(info.value)
    assert "'big'" in message and "optional GPU dependency" in message
    assert "pip install vllm" in message and "Ray" in message
    assert "'hf'" in message and "'openai'" in message


class _FakeVLLM(types.ModuleType):
    """Stands in for ``vllm`` (never installed in CI) to check what the teacher asks of it."""

    def __init__(self) -> None:
        super().__init__("vllm")
        self.calls: list[tuple[str, Any]] = []
        fake = self

        class SamplingParams(SimpleNamespace):
            pass

        class LLM:
            def __init__(self, **kwargs) -> None:
                fake.calls.append(("LLM", kwargs))

            def _run(self, method, inputs, sampling_params, use_tqdm):
                fake.calls.append((method, (inputs, sampling_params)))
                return [
                    SimpleNamespace(
                        outputs=[
                            SimpleNamespace(text=f"{i}.{k}", token_ids=[0] * (k + 1))
                            for k in range(p.n)
                        ]
                    )
                    for i, p in enumerate(sampling_params)
                ]

            def chat(self, conversations, sampling_params, use_tqdm=True):
                return self._run("chat", conversations, sampling_params, use_tqdm)

            def generate(self, prompts, sampling_params, use_tqdm=True):
                return self._run("generate", prompts, sampling_params, use_tqdm)

        self.LLM, self.SamplingParams = LLM, SamplingParams


@pytest.mark.parametrize("chat", [True, False])
def test_generate_with_fake_vllm(monkeypatch, chat):
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    cfg = SimpleNamespace(
        name="big", kind="vllm", model="m", dtype="bfloat16", trust_remote_code=False,
        temperature=0.7, top_p=0.9, max_new_tokens=32, system_prompt="Be brief.",
        use_chat_template=chat,
    )  # fmt: skip
    teacher = build_teacher(cfg)
    questions = [Question(q, f"prompt {q}", "1", "t") for q in ("a", "b")]
    samples = teacher.generate(questions, num_samples=3, seed=5)
    teacher.generate(questions[1:], num_samples=3, seed=5)

    assert [(s.question_id, s.text, s.num_tokens) for s in samples] == [
        ("a", "0.0", 1), ("a", "0.1", 2), ("a", "0.2", 3),
        ("b", "1.0", 1), ("b", "1.1", 2), ("b", "1.2", 3),
    ]  # fmt: skip
    assert all(s.teacher == "big" for s in samples)
    (kind, llm_kwargs), (method, (inputs, params)), (_, (_, params_b)) = fake.calls
    assert kind == "LLM"  # one engine for both calls
    assert llm_kwargs == {"model": "m", "dtype": "bfloat16", "trust_remote_code": False, "seed": 5}
    assert method == ("chat" if chat else "generate")
    if chat:
        assert inputs[0] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "prompt a"},
        ]
    else:
        assert inputs == ["Be brief.\n\nprompt a", "Be brief.\n\nprompt b"]
    assert (params[0].n, params[0].temperature, params[0].top_p, params[0].max_tokens) == (
        3, 0.7, 0.9, 32
    )  # fmt: skip
    assert params[0].seed != params[1].seed  # per-question seeds ...
    assert params_b[0].seed == params[1].seed  # ... independent of the rest of the batch
