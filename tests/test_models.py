from types import SimpleNamespace

import torch

from ssft.forking_tokens import add_forking_tokens
from ssft.models import build_random_model, load_model_and_tokenizer
from tests.conftest import make_model_and_tags, tiny_model_config


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
