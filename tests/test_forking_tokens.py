import pytest
import torch
from transformers import AutoTokenizer

from ssft.method.forking_tokens import MAX_NUM_TAGS, add_forking_tokens, tag_strings
from ssft.models import build_char_tokenizer, build_random_model
from tests.conftest import tiny_model_config


def test_tag_strings_are_one_based():
    assert tag_strings(3) == ("<think1>", "<think2>", "<think3>")
    with pytest.raises(ValueError, match="must contain"):
        tag_strings(2, "<tag>")


@pytest.mark.parametrize("tie", [True, False])
def test_adds_single_tokens_and_resizes(tie):
    tok = build_char_tokenizer()
    model = build_random_model(tiny_model_config(tie), len(tok), tok)
    before = len(tok)
    tags = add_forking_tokens(tok, model, num_tags=12)
    assert tags.added == 13 and len(tok) == before + 13
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    # <think1> must not swallow the prefix of <think10>, and each tag is one token.
    for tag, tid in zip(tags.tags, tags.tag_ids, strict=True):
        assert tok.encode(tag, add_special_tokens=False) == [tid]
    assert tok.encode("<think10>7<think1>", add_special_tokens=False) == [
        tags.tag_ids[9],
        tok.convert_tokens_to_ids("7"),
        tags.tag_ids[0],
    ]
    assert tags.ids_for(shared=True) == (tags.shared_tag_id,)


@pytest.mark.parametrize("tie", [True, False])
def test_new_rows_are_near_the_mean_and_distinct(tie):
    tok = build_char_tokenizer()
    model = build_random_model(tiny_model_config(tie), len(tok), tok)
    old = model.get_input_embeddings().weight.detach().clone()
    tags = add_forking_tokens(tok, model, num_tags=4, init_noise=0.02)
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = module.weight.detach()
        if module is model.get_input_embeddings():
            assert torch.equal(weight[: old.shape[0]], old)  # existing rows untouched
        new = weight[list(tags.tag_ids)]
        mean = weight[: old.shape[0]].mean(0)
        # Not random noise at init scale: far closer to the mean than any existing row.
        existing = (weight[: old.shape[0]] - mean).norm(dim=1).min()
        assert (new - mean).norm(dim=1).max() < existing
        assert torch.unique(new, dim=0).shape[0] == 4  # symmetry broken


def test_idempotent_and_partial():
    tok = build_char_tokenizer()
    model = build_random_model(tiny_model_config(False), len(tok), tok)
    tok.add_tokens(["<think2>"], special_tokens=True)  # a tokenizer that already has one tag
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[-1] = 7.0  # pretend <think2> was trained
    tags = add_forking_tokens(tok, model, num_tags=3)
    assert tags.added == 3  # <think1>, <think3>, <think>
    assert torch.all(model.get_input_embeddings().weight[tags.tag_ids[1]] == 7.0)
    snapshot = model.get_input_embeddings().weight.detach().clone()
    again = add_forking_tokens(tok, model, num_tags=3)
    assert again.added == 0 and again.tag_ids == tags.tag_ids
    assert torch.equal(model.get_input_embeddings().weight, snapshot)


def test_saved_tokenizer_keeps_tags_as_single_tokens(tmp_path):
    tok = build_char_tokenizer()
    tags = add_forking_tokens(tok, None, num_tags=6)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    again = add_forking_tokens(loaded, None, num_tags=6)
    assert again.added == 0 and again.tag_ids == tags.tag_ids
    assert loaded.encode("<think6>", add_special_tokens=False) == [tags.tag_ids[5]]


def test_shared_tag_collision_is_an_error():
    with pytest.raises(ValueError, match="collides"):
        add_forking_tokens(build_char_tokenizer(), None, num_tags=2, shared_tag="<think2>")


def test_existing_plain_token_that_splits_is_an_error():
    tok = build_char_tokenizer()
    with pytest.raises(ValueError, match="ordinary tokens"):
        add_forking_tokens(tok, None, num_tags=1, tag_format="{i}")  # "1" is an ordinary char


@pytest.mark.parametrize(
    ("num_tags", "error", "match"),
    [
        (0, ValueError, r"forking\.num_tags=0: must be between 1 and 1024"),
        (-3, ValueError, r"forking\.num_tags=-3"),
        (MAX_NUM_TAGS + 1, ValueError, r"forking\.num_tags=1025: must be between 1 and 1024"),
        (10**9, ValueError, r"forking\.num_tags=1000000000"),
        (True, TypeError, r"forking\.num_tags=True: expected an integer"),
        (4.0, TypeError, r"forking\.num_tags=4\.0: expected an integer"),
    ],
)
def test_num_tags_out_of_range_or_type_is_an_error(num_tags, error, match):
    """Checked before the tokenizer or model is touched: nothing is added on failure."""
    tok = build_char_tokenizer()
    model = build_random_model(tiny_model_config(), len(tok), tok)
    before, rows = len(tok), model.get_input_embeddings().weight.shape[0]
    with pytest.raises(error, match=match):
        add_forking_tokens(tok, model, num_tags=num_tags)
    assert len(tok) == before and model.get_input_embeddings().weight.shape[0] == rows


def test_the_cap_itself_is_allowed():
    tok = build_char_tokenizer()
    tags = add_forking_tokens(tok, None, num_tags=MAX_NUM_TAGS)
    assert tags.num_tags == MAX_NUM_TAGS and len(set(tags.tag_ids)) == MAX_NUM_TAGS
    last = tags.tags[-1]
    assert tok.encode(last, add_special_tokens=False) == [tags.tag_ids[-1]]


def test_bad_tag_format_template_is_a_value_error():
    with pytest.raises(ValueError, match=r"tag_format='<t\{i\}\{j\}>' is not a str\.format"):
        tag_strings(2, "<t{i}{j}>")


def test_tags_already_added_as_plain_added_tokens_are_reused():
    """A tokenizer that holds <think1> as a non-special added token: reused, not re-added."""
    tok = build_char_tokenizer()
    tok.add_tokens(["<think1>"])  # special_tokens=False
    tid = tok.convert_tokens_to_ids("<think1>")
    tags = add_forking_tokens(tok, None, num_tags=2)
    assert tags.added == 2 and tags.tag_ids[0] == tid  # <think2> and <think> are new


def test_collision_with_an_ordinary_multi_character_token():
    """A BPE-style vocabulary that already spells a tag as one ordinary token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<think2>": 1, "a": 2, "<think>": 3}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(ValueError) as err:
        add_forking_tokens(tok, None, num_tags=3)
    assert "['<think2>', '<think>'] are ordinary tokens" in str(err.value)
    assert "forking.tag_format" in str(err.value)


def test_the_tag_slot_renders_a_chosen_tag_after_the_generation_prompt_only():
    from jinja2 import Template

    from ssft.method.forking_tokens import with_tag_slot
    from ssft.models import CHAR_CHAT_TEMPLATE

    template = with_tag_slot(CHAR_CHAT_TEMPLATE)
    assert with_tag_slot(template) == template  # once
    messages = [{"role": "user", "content": "1 + 1 = ?"}]

    def render(**kw):
        return Template(template).render(messages=messages, **kw)

    assert render(add_generation_prompt=True, forking_tag="<think3>") == (
        "<|user|>1 + 1 = ?<|assistant|><think3>"
    )
    assert render(add_generation_prompt=True) == "<|user|>1 + 1 = ?<|assistant|>"
    assert render(add_generation_prompt=False, forking_tag="<think3>") == "<|user|>1 + 1 = ?"
