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

from ssft.errors import InputError
from ssft.method.forking_tokens import add_forking_tokens
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


@pytest.fixture
def prompts(monkeypatch) -> list[str]:
    """Every ``input()`` prompt shown. transformers prompts "run the custom code? [y/N]" when
    ``trust_remote_code`` is left unset, so a loader that passes it explicitly shows none (under
    pytest the prompt itself fails, which would look like a refusal; this tells them apart)."""
    shown: list[str] = []

    def record(prompt: str = "") -> str:
        shown.append(prompt)
        raise EOFError("no terminal in this test")

    monkeypatch.setattr("builtins.input", record)
    return shown


def test_evaluation_loader_does_not_run_custom_code(tmp_path, prompts):
    """The evaluation stage's loader: an explicit refusal naming the file, no prompt, no import."""
    from ssft.eval.evaluation import load_eval_model

    marker = custom_code_model_dir(tmp_path, model_type="custom-llama")
    with pytest.raises(InputError) as err:
        load_eval_model(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "'config.json', field 'auto_map'" in message
    assert prompts == [] and not marker.exists()


def test_evaluation_loader_uses_the_built_in_class_of_a_known_architecture(tmp_path, prompts):
    from ssft.eval.evaluation import load_eval_model

    marker = custom_code_model_dir(tmp_path)  # auto_map, but model_type 'llama' is built in
    model, tokenizer = load_eval_model(tmp_path)
    assert type(model) is LlamaForCausalLM and not model.training
    assert tokenizer.pad_token is not None
    assert prompts == [] and not marker.exists()


def test_evaluate_questions_loads_its_tokenizer_without_running_custom_code(tmp_path, prompts):
    """``evaluate_questions`` loads the tokenizer itself when not given one: refused too."""
    from ssft.eval.evaluation import evaluate_questions
    from ssft.final_model import TAGS_FILE

    marker = custom_code_model_dir(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "CustomTokenizer"
    config["auto_map"] = {"AutoTokenizer": [None, "custom_modeling.CustomTokenizer"]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tags = {"method": "ssft", "tags": ["<think1>", "<think2>"], "shared_tag": "<think>"}
    (tmp_path / TAGS_FILE).write_text(json.dumps(tags))
    with pytest.raises(InputError, match=r"'tokenizer_config.json', field 'auto_map'"):
        evaluate_questions(tmp_path, [], SimpleNamespace(), SimpleNamespace(), seed=0)
    assert prompts == [] and not marker.exists()


def test_packaged_model_conversion_passes_trust_remote_code_false(tmp_path, monkeypatch):
    """``convert_gguf`` loads with transformers' Auto classes: the flag is passed, and off."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ssft.packaged_models import convert_gguf

    calls: list[tuple[str, object]] = []

    class Loaded(Exception):
        pass

    def fake_loader(name: str):
        def load(*args, **kwargs):
            calls.append((name, kwargs.get("trust_remote_code", "unset")))
            if name == "model":
                raise Loaded  # stop before the conversion itself
            return SimpleNamespace()

        return load

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake_loader("tokenizer"))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_loader("model"))
    with pytest.raises(Loaded):
        convert_gguf(tmp_path / "model.gguf", tmp_path / "out")
    assert calls == [("tokenizer", False), ("model", False)]


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
