"""HFTeacher on a tiny random Llama with the character tokenizer (fast, CPU, no hub)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ssft.data.teachers import Question, build_teacher
from ssft.data.teachers.hf import HFTeacher, _length_with_eos
from ssft.method.sequences import format_prompt
from ssft.models import build_char_tokenizer, build_random_model
from tests.conftest import tiny_model_config

QUESTIONS = [
    Question("q-add", "12 + 34 = ?", "46", "test"),
    Question("q-mul", "7 * 8 = ?", "56", "test"),
    Question("q-sub", "9 - 4 = ?", "5", "test"),
]


def teacher_config(**overrides) -> SimpleNamespace:
    cfg = SimpleNamespace(
        name="tiny-hf",
        kind="hf",
        model=None,
        samples_per_question=4,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=10,
        batch_size=2,
        system_prompt=None,
        use_chat_template=True,
        dtype="float32",
        trust_remote_code=False,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_teacher(**overrides) -> HFTeacher:
    tok = build_char_tokenizer()
    model = build_random_model(tiny_model_config(), len(tok), tok, seed=0)
    return HFTeacher.from_model(teacher_config(**overrides), model, tok)


def texts(samples) -> list[str]:
    return [s.text for s in samples]


def test_counts_grouping_and_teacher_name():
    teacher = tiny_teacher()
    samples = teacher.generate(QUESTIONS, num_samples=4, seed=0)
    assert [s.question_id for s in samples] == [q.question_id for q in QUESTIONS for _ in range(4)]
    assert {s.teacher for s in samples} == {"tiny-hf"}
    assert all(1 <= s.num_tokens <= teacher.cfg.max_new_tokens for s in samples)


def test_same_seed_same_texts_other_seed_other_texts():
    teacher = tiny_teacher()
    first = teacher.generate(QUESTIONS, num_samples=4, seed=3)
    assert texts(teacher.generate(QUESTIONS, num_samples=4, seed=3)) == texts(first)
    # A random model at temperature 1 over ~100 characters: collisions are negligible.
    assert texts(teacher.generate(QUESTIONS, num_samples=4, seed=4)) != texts(first)
    assert len(set(texts(first[:4]))) > 1, "one question's samples should differ"


def test_samples_do_not_depend_on_batching_or_global_rng():
    one_by_one = tiny_teacher(batch_size=1)
    all_at_once = tiny_teacher(batch_size=3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    reference = one_by_one.generate(QUESTIONS, num_samples=3, seed=5)
    assert torch.equal(torch.get_rng_state(), state), "generate must not consume the global RNG"
    torch.manual_seed(999)
    assert texts(all_at_once.generate(QUESTIONS, num_samples=3, seed=5)) == texts(reference)
    # A question's samples are its own: asking for it alone gives the same texts.
    alone = one_by_one.generate(QUESTIONS[1:2], num_samples=3, seed=5)
    assert texts(alone) == texts(reference[3:6])


def test_greedy_matches_plain_generate():
    teacher = tiny_teacher(temperature=0.0, max_new_tokens=6)
    samples = teacher.generate(QUESTIONS[:2], num_samples=3, seed=0)
    assert len(samples) == 6
    for i, q in enumerate(QUESTIONS[:2]):
        group = samples[3 * i : 3 * i + 3]
        assert len(set(texts(group))) == 1
        ids = torch.tensor([format_prompt(teacher.tokenizer, q.prompt)])
        out = teacher.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=teacher.pad_id,
            eos_token_id=teacher.eos_ids,
        )
        new = out[0, ids.shape[1] :].tolist()
        n = _length_with_eos(new, teacher.eos_ids)
        expected = teacher.tokenizer.decode(new[:n], skip_special_tokens=True).strip()
        assert group[0].text == expected and group[0].num_tokens == n


def test_prompt_uses_chat_template_like_training():
    teacher = tiny_teacher()
    prompt = QUESTIONS[0].prompt
    assert tuple(teacher.prompt_ids(prompt)) == format_prompt(teacher.tokenizer, prompt)


def test_plain_template_when_tokenizer_has_none():
    teacher = tiny_teacher(system_prompt="Be brief.")
    teacher.tokenizer.chat_template = None
    ids = teacher.prompt_ids("2 + 2 = ?")
    assert teacher.tokenizer.decode(ids) == "Be brief.\n\nQuestion: 2 + 2 = ?\nAnswer: "
    samples = teacher.generate(QUESTIONS[:1], num_samples=2, seed=0)
    assert len(samples) == 2


def test_use_chat_template_false_uses_plain_template():
    teacher = tiny_teacher(use_chat_template=False)
    assert teacher.tokenizer.decode(teacher.prompt_ids("x")) == "Question: x\nAnswer: "


def test_num_tokens_counts_the_eos():
    """A model whose only likely token is EOS: one token, the EOS itself, empty text."""
    teacher = tiny_teacher(max_new_tokens=5)
    model, eos = teacher.model, teacher.tokenizer.eos_token_id
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.zero_()
        head.bias[eos] = 100.0
    model.lm_head = head
    model.config.tie_word_embeddings = False
    for s in teacher.generate(QUESTIONS, num_samples=2, seed=0):
        assert (s.text, s.num_tokens) == ("", 1)


def test_length_with_eos():
    assert _length_with_eos([5, 6, 2, 0, 0], [2]) == 3
    assert _length_with_eos([5, 6, 7], [2, 9]) == 3
    assert _length_with_eos([9], [2, 9]) == 1


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="top_p"):
        tiny_teacher(top_p=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        tiny_teacher(batch_size=0)


def test_loads_from_a_saved_directory(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # The env var is read once at import; the constant is what the hub client checks.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tok = build_char_tokenizer()
    model = build_random_model(tiny_model_config(), len(tok), tok, seed=0)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = teacher_config(model=str(tmp_path), dtype="auto")
    teacher = build_teacher(cfg)
    assert isinstance(teacher, HFTeacher)
    assert not teacher.model.training
    loaded = teacher.generate(QUESTIONS, num_samples=2, seed=1)
    in_memory = HFTeacher.from_model(teacher_config(), model, tok).generate(
        QUESTIONS, num_samples=2, seed=1
    )
    assert texts(loaded) == texts(in_memory)
    teacher.close()
