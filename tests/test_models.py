"""Tests for ssft.models: random init, plain from_pretrained loading, remote-code refusal."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaForCausalLM

from ssft.config_checks import InputError
from ssft.forking_tokens import add_forking_tokens
from ssft.models import (
    build_char_tokenizer,
    build_random_model,
    check_context_length,
    load_model_and_tokenizer,
)
from tests.conftest import make_model_and_tags, tiny_model_config

ROOT = str(Path(__file__).resolve().parents[1])


def test_random_init_is_deterministic(tokenizer):
    cfg = tiny_model_config()
    a = build_random_model(cfg, len(tokenizer), tokenizer, seed=7)
    b = build_random_model(cfg, len(tokenizer), tokenizer, seed=7)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)


def test_saved_checkpoint_loads_with_plain_from_pretrained(tmp_path):
    """The real loading path: from_pretrained on a directory, tags still single tokens."""
    model, tok, tags = make_model_and_tags(num_tags=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = SimpleNamespace(
        init="pretrained",
        name_or_path=str(tmp_path),
        tokenizer=None,
        dtype="float32",
        trust_remote_code=False,
    )
    loaded, loaded_tok = load_model_and_tokenizer(cfg)
    again = add_forking_tokens(loaded_tok, loaded, num_tags=3)
    assert again.added == 0 and again.tag_ids == tags.tag_ids
    ids = torch.tensor([[*tags.tag_ids, 10, 11]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


# -- remote code: never run unless the config opts in ----------------------------------------


def custom_code_model_dir(directory: Path, model_type: str = "llama") -> Path:
    """A real saved tiny model whose configs map to a module that leaves a marker if imported."""
    model, tok, _ = make_model_and_tags(num_tags=2)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    marker = directory / "CUSTOM_CODE_RAN"
    (directory / "custom_modeling.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig as CustomConfig\n"
        "from transformers import LlamaForCausalLM as CustomForCausalLM\n"
        "from transformers import PreTrainedTokenizerFast as CustomTokenizer\n"
    )
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "custom_modeling.CustomConfig",
        "AutoModelForCausalLM": "custom_modeling.CustomForCausalLM",
    }
    (directory / "config.json").write_text(json.dumps(config))
    return marker


def pretrained_cfg(path: Path, trust: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        init="pretrained", name_or_path=str(path), tokenizer=None, dtype="float32",
        trust_remote_code=trust,
    )  # fmt: skip


def test_custom_code_of_a_known_architecture_is_not_run(tmp_path):
    """auto_map present but model_type 'llama' is built in: the built-in class, no import."""
    marker = custom_code_model_dir(tmp_path)
    model, _ = load_model_and_tokenizer(pretrained_cfg(tmp_path))
    assert type(model) is LlamaForCausalLM
    assert not marker.exists()


def test_custom_code_of_an_unknown_architecture_is_refused(tmp_path):
    marker = custom_code_model_dir(tmp_path, model_type="custom-llama")
    with pytest.raises(InputError) as err:
        load_model_and_tokenizer(pretrained_cfg(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message and "'config.json', field 'auto_map'" in message
    assert "model.trust_remote_code=true" in message
    assert not marker.exists()


def test_custom_tokenizer_code_is_refused(tmp_path):
    marker = custom_code_model_dir(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "CustomTokenizer"
    config["auto_map"] = {"AutoTokenizer": [None, "custom_modeling.CustomTokenizer"]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"'tokenizer_config.json', field 'auto_map'"):
        load_model_and_tokenizer(pretrained_cfg(tmp_path))
    assert not marker.exists()


def test_evaluation_loader_does_not_run_custom_code(tmp_path):
    """The evaluation stage's loader too (it must never prompt or import the directory's code)."""
    from ssft.evaluation import load_eval_model

    marker = custom_code_model_dir(tmp_path, model_type="custom-llama")
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_eval_model(tmp_path)
    assert not marker.exists()


def test_opting_in_runs_the_custom_code(tmp_path):
    """The control for the tests above: with the flag on, the same directory's code runs.

    In a child process with its own module cache, so nothing lands in ~/.cache.
    """
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    marker = custom_code_model_dir(model_dir, model_type="custom-llama")
    script = (
        "import sys; from types import SimpleNamespace; "
        "from ssft.models import load_model_and_tokenizer; "
        "cfg = SimpleNamespace(init='pretrained', name_or_path=sys.argv[1], tokenizer=None, "
        "dtype='float32', trust_remote_code=True); "
        "print(type(load_model_and_tokenizer(cfg)[0]).__name__)"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-c", script, str(model_dir)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert marker.exists() and done.stdout.strip().endswith("LlamaForCausalLM")


def test_config_default_is_off_and_passed_explicitly():
    from ssft.config import ExperimentConfig, TeacherConfig

    assert ExperimentConfig().model.trust_remote_code is False
    assert TeacherConfig(name="t", kind="hf", model="m").trust_remote_code is False


# -- context length --------------------------------------------------------------------------


def test_max_seq_len_beyond_the_models_positions_is_an_error():
    tok = build_char_tokenizer()
    model = build_random_model(tiny_model_config(), len(tok), tok)  # 256 positions
    check_context_length(model, 256)
    with pytest.raises(InputError) as err:
        check_context_length(model, 257)
    assert "data.max_seq_len=257" in str(err.value) and "at most 256 positions" in str(err.value)
