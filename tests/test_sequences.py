import pytest
import torch

from ssft.method.sequences import (
    IGNORE_INDEX,
    build_sequence,
    end_of_turn_id,
    format_prompt,
    pad_batch,
    tokenize_trace,
)
from ssft.models import build_char_tokenizer

X = IGNORE_INDEX


def test_layout_masks_prompt_and_tag_and_supervises_end_of_turn():
    ids, labels = build_sequence([1, 2, 3], 50, [7, 8, 99])
    assert ids == [1, 2, 3, 50, 7, 8, 99]
    assert labels == [X, X, X, X, 7, 8, 99]  # 99 = end-of-turn is a label; prompt is not


def test_tag_loss_supervises_the_tag_only():
    _, labels = build_sequence([1, 2], 50, [7, 99], tag_loss=True)
    assert labels == [X, X, 50, 7, 99]


def test_prefix_cuts_the_trace_only():
    ids, labels = build_sequence([1, 2], 50, [7, 8, 9, 99], prefix_tokens=2)
    assert ids == [1, 2, 50, 7, 8] and labels == [X, X, X, 7, 8]
    assert build_sequence([1], 50, [7, 99], prefix_tokens=10) == build_sequence([1], 50, [7, 99])


def test_pad_batch_exact_tensors():
    batch = pad_batch([([1, 2, 3], [X, 2, 3]), ([4], [4])], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.labels.tolist() == [[X, 2, 3], [4, X, X]]
    assert batch.input_ids.dtype == torch.long
    with pytest.raises(ValueError):
        pad_batch([], pad_id=0)


def test_chat_template_prompt_ends_with_generation_prompt(tokenizer):
    ids = format_prompt(tokenizer, "1 + 2 = ?")
    assert tokenizer.decode(ids) == "<|user|>1 + 2 = ?<|assistant|>"
    eot = end_of_turn_id(tokenizer)
    assert eot == tokenizer.convert_tokens_to_ids("<|end|>")
    trace = tokenize_trace(tokenizer, "1+2=3", eot)
    assert trace[-1] == eot and tokenizer.decode(trace[:-1]) == "1+2=3"


def test_plain_template_when_no_chat_template():
    tok = build_char_tokenizer()
    tok.chat_template = None
    ids = format_prompt(tok, "5 - 1 = ?", prompt_template="Q: {prompt}\nA: ")
    assert tok.decode(ids) == "Q: 5 - 1 = ?\nA: "
    chat_tok = build_char_tokenizer()
    ids = format_prompt(
        chat_tok, "5 - 1 = ?", use_chat_template=False, prompt_template="Q: {prompt}\nA: "
    )
    assert chat_tok.decode(ids) == "Q: 5 - 1 = ?\nA: "


def test_end_of_turn_errors_name_the_setting():
    tok = build_char_tokenizer()
    with pytest.raises(ValueError, match=r"data\.end_of_turn_token"):
        end_of_turn_id(tok, "stop")  # four characters = four tokens
