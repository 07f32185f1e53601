"""Loading models and tokenizers: pretrained ones by path or hub id, tiny ones from a config.

Two sources, one entry point (``load_model_and_tokenizer``):

- ``init="pretrained"``: ``from_pretrained`` on a local directory or hub id, exactly what a
  user runs on a real model. ``trust_remote_code`` stays off unless the config opts in.
- ``init="random"``: a small Llama-shaped model with random weights, built from the config's
  size fields, with the built-in character tokenizer (``tokenizer="char"``) or any saved one.
  This is how tests and CPU experiments run without a model hub, and how the known-modes
  experiment trains from scratch.

The character tokenizer maps each printable ASCII character to one token, so arithmetic
traces tokenize transparently. It has a compact chat template (``<|user|>...<|assistant|>``)
whose end-of-turn token ``<|end|>`` is also its EOS, so the chat-template path is exercised
by every CPU test.
"""

from __future__ import annotations

import string
from typing import Any

import torch

CHAR_SPECIAL_TOKENS = ("<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>")
CHAR_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_char_tokenizer():
    """A character-level fast tokenizer over printable ASCII, built locally (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = list(CHAR_SPECIAL_TOKENS) + [c for c in string.printable if c not in "\x0b\x0c"]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    # Registering the specials makes the tokenizer match them whole before splitting chars.
    backend.add_special_tokens(list(CHAR_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|end|>",
    )
    tokenizer.chat_template = CHAR_CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(model_cfg: Any):
    """The tokenizer named by ``model.tokenizer`` (or ``model.name_or_path``), pad token set."""
    from transformers import AutoTokenizer

    source = model_cfg.tokenizer or model_cfg.name_or_path
    if source == "char":
        tokenizer = build_char_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=model_cfg.trust_remote_code
        )
    if tokenizer.pad_token is None:
        # Padding is always masked out (attention mask and labels), so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_random_model(model_cfg: Any, vocab_size: int, tokenizer=None, seed: int = 0):
    """A Llama-shaped causal LM with random weights, sized by the config (deterministic)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = model_cfg.num_heads
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=model_cfg.max_position_embeddings,
        tie_word_embeddings=model_cfg.tie_word_embeddings,
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
        eos_token_id=getattr(tokenizer, "eos_token_id", None),
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    dtype = _DTYPES.get(model_cfg.dtype)
    return model.to(dtype) if dtype is not None else model


def load_model_and_tokenizer(model_cfg: Any, seed: int = 0):
    """``(model, tokenizer)`` for a ``ModelConfig``; forking tokens are NOT added here.

    Add them with ``ssft.forking_tokens.add_forking_tokens`` before any DDP/FSDP wrapping.
    """
    tokenizer = load_tokenizer(model_cfg)
    if model_cfg.init == "random":
        return build_random_model(model_cfg, len(tokenizer), tokenizer, seed=seed), tokenizer
    from transformers import AutoModelForCausalLM

    dtype = _DTYPES.get(model_cfg.dtype, "auto")
    model = AutoModelForCausalLM.from_pretrained(
        model_cfg.name_or_path, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code
    )
    return model, tokenizer
