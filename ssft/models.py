"""Loading models and tokenizers: pretrained ones by path or hub id, tiny ones from a config.

Two sources, one entry point (``load_model_and_tokenizer``):

- ``init="pretrained"``: ``from_pretrained`` on a local directory or hub id, exactly what a
  user runs on a real model. ``trust_remote_code`` stays off unless the config opts in
  (``model.trust_remote_code``, default false), and it is always passed explicitly: left
  unset, transformers would *prompt* on a terminal. A model directory whose ``config.json``
  (or ``tokenizer_config.json``) maps to its own Python code (``auto_map``) then loads with
  the built-in class when transformers has one, else fails with an ``InputError`` naming
  the file and the setting; the directory's code is never imported.
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

import json
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ssft.errors import InputError

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


def _auto_map(source: str, filename: str) -> dict[str, Any] | None:
    """The ``auto_map`` of a local model directory's JSON config, if it has one."""
    path = Path(source) / filename
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not a local directory, or a file transformers reports on itself
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    return auto_map if isinstance(auto_map, dict) and auto_map else None


def _from_pretrained(
    load: Callable[..., Any], source: str, model_cfg: Any, filenames: tuple[str, ...], **kwargs: Any
) -> Any:
    """``load(source, trust_remote_code=<the config's flag>)``, explaining a custom-code refusal.

    ``filenames``: the JSON configs whose ``auto_map`` this loader follows, in its order.
    """
    check_model_exists(model_cfg)
    trust = model_cfg.trust_remote_code is True
    try:
        return load(source, trust_remote_code=trust, **kwargs)
    except ValueError as err:
        mapped = [(f, m) for f in filenames if (m := _auto_map(source, f))]
        if trust or not mapped:
            raise
        filename, auto_map = mapped[0]
        raise InputError(
            f"model directory {source!r}, file {filename!r}, field 'auto_map': maps "
            f"{sorted(auto_map)} to Python code shipped with the model, transformers has no "
            "built-in class for it, and model.trust_remote_code is false, so that code was not "
            "run. Read it, then set model.trust_remote_code=true to run it, or convert the "
            "model to a built-in architecture."
        ) from err


def check_model_exists(model_cfg: Any) -> None:
    """``InputError`` now, before any compute, when the student is a packaged model that was
    never materialized (``ssft.packaged_models.missing_model_hint``)."""
    from ssft.packaged_models import missing_model_hint

    if model_cfg.init != "pretrained":
        return
    sources = {"model.name_or_path": model_cfg.name_or_path, "model.tokenizer": model_cfg.tokenizer}
    for setting, path in sources.items():
        if path and (hint := missing_model_hint(path, setting)):
            raise InputError(hint)


def load_tokenizer(model_cfg: Any):
    """The tokenizer named by ``model.tokenizer`` (or ``model.name_or_path``), pad token set."""
    from transformers import AutoTokenizer

    source = model_cfg.tokenizer or model_cfg.name_or_path
    if source == "char":
        tokenizer = build_char_tokenizer()
    else:
        files = ("tokenizer_config.json", "config.json")
        tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, source, model_cfg, files)
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

    Add them with ``ssft.method.forking_tokens.add_forking_tokens`` before any DDP/FSDP wrapping.
    """
    tokenizer = load_tokenizer(model_cfg)
    if model_cfg.init == "random":
        return build_random_model(model_cfg, len(tokenizer), tokenizer, seed=seed), tokenizer
    from transformers import AutoModelForCausalLM

    dtype = _DTYPES.get(model_cfg.dtype, "auto")
    load = AutoModelForCausalLM.from_pretrained
    model = _from_pretrained(load, model_cfg.name_or_path, model_cfg, ("config.json",), dtype=dtype)
    return model, tokenizer


def check_context_length(model: torch.nn.Module, max_seq_len: int) -> None:
    """Refuse ``data.max_seq_len`` beyond the model's position limit, before any step runs.

    Sequences are filtered to ``max_seq_len`` (``ssft.data.tokenize``); if that exceeds the
    positions a pretrained model was built for, long traces would reach untrained (or, for
    learned position tables, missing) positions. Random-init models are checked by the config.
    """
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max_seq_len > limit:
        raise InputError(
            f"data.max_seq_len={max_seq_len} but the model takes at most {limit} positions "
            f"(config.max_position_embeddings): longer traces would not fit its context. Set "
            f"data.max_seq_len <= {limit}; traces over it are dropped and counted "
            "(data.overlong=drop) or stop the run (data.overlong=error)."
        )
