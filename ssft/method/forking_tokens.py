"""Global forking tokens: the N tags ``<think1>`` ... ``<thinkN>`` plus the one shared tag.

SSFT reserves N new special tokens. Each sits at the very start of the answer and steers the
whole trace after it; training assigns every trace of a question to a distinct tag (see
``ssft.method.matching``). SFT-mixed and single-trace SFT train every trace under one shared tag
(``<think>``), so that tag is added too: all methods then see the same vocabulary and
checkpoints of every method load the same way.

Adding the tokens is idempotent: a tokenizer that already holds some or all of them (a saved
SSFT checkpoint, or a base model that ships ``<think>``) gains only the missing ones, and only
the embedding rows of tokens that are new to the *model* are (re)initialised.

New rows start at the mean of the existing rows plus small Gaussian noise scaled by the
per-dimension std of those rows (``init_noise``, default 0.02): a tag then begins as an
"average token" (its logit is typical, its input does not blow up the first layer), and the
noise breaks the symmetry between tags so the first cost matrices are not all ties. Random
rows at the model's init scale would be far larger than trained rows; zero rows would give
identical tags. Both the input embedding and, when untied, the output embedding (and its bias)
are initialised this way; tied models share one matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_TAG_FORMAT = "<think{i}>"
DEFAULT_SHARED_TAG = "<think>"
# Why a cap: the cost step runs N x M prefix forwards per question and every tag is a new
# embedding row, so N in the thousands costs hours per step and dilutes the tags' training
# signal; the paper uses N = 6. A value above this is a typo (60 for 6), not an experiment.
MAX_NUM_TAGS = 1024


@dataclass(frozen=True)
class ForkingTokens:
    """The tag vocabulary of one run.

    Attributes:
        tags: the N forking-token strings, ``tags[i]`` is tag index ``i`` (``<think{i+1}>``).
        tag_ids: their token ids, same order.
        shared_tag: the single tag of SFT-mixed / single-trace SFT.
        shared_tag_id: its token id.
        added: how many tokens were new to the tokenizer in this call (0 when idempotent).
    """

    tags: tuple[str, ...]
    tag_ids: tuple[int, ...]
    shared_tag: str
    shared_tag_id: int
    added: int = 0

    @property
    def num_tags(self) -> int:
        return len(self.tags)

    def ids_for(self, shared: bool) -> tuple[int, ...]:
        """Token ids a method chooses from: all N tags, or just the shared one."""
        return (self.shared_tag_id,) if shared else self.tag_ids


def tag_strings(num_tags: int, tag_format: str = DEFAULT_TAG_FORMAT) -> tuple[str, ...]:
    """``('<think1>', ..., '<thinkN>')`` for the given format (1-based, as in the paper).

    ``num_tags`` must be an int in [1, ``MAX_NUM_TAGS``]; see the cap's comment for why.
    """
    if isinstance(num_tags, bool) or not isinstance(num_tags, int):
        raise TypeError(
            f"forking.num_tags={num_tags!r}: expected an integer number of forking tokens, "
            f"got {type(num_tags).__name__}."
        )
    if not 1 <= num_tags <= MAX_NUM_TAGS:
        raise ValueError(
            f"forking.num_tags={num_tags}: must be between 1 and {MAX_NUM_TAGS} (each trace of "
            "a question needs its own tag, and the cost step runs N x M forwards per question; "
            "the paper uses 6). Set forking.num_tags to the most traces a question keeps."
        )
    if "{i}" not in tag_format:
        raise ValueError(f"tag_format={tag_format!r} must contain '{{i}}', e.g. '<think{{i}}>'.")
    try:
        return tuple(tag_format.format(i=i) for i in range(1, num_tags + 1))
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"forking.tag_format={tag_format!r} is not a str.format template with only {{i}} "
            f"({err!r}); write literal braces as {{{{ and }}}}."
        ) from None


def add_forking_tokens(
    tokenizer,
    model: torch.nn.Module | None = None,
    *,
    num_tags: int,
    tag_format: str = DEFAULT_TAG_FORMAT,
    shared_tag: str = DEFAULT_SHARED_TAG,
    init_noise: float = 0.02,
    seed: int = 0,
) -> ForkingTokens:
    """Add the tags to ``tokenizer`` (idempotently) and make ``model``'s embeddings fit.

    Call this BEFORE wrapping the model in DDP/FSDP: it may replace the embedding modules.

    A tag that already is an ordinary (non-added) token of the tokenizer raises
    ``ValueError``, and so does one that does not encode to exactly one token afterwards.
    """
    tags = tag_strings(num_tags, tag_format)
    if shared_tag in tags:
        raise ValueError(
            f"shared_tag={shared_tag!r} collides with a forking token; choose another shared tag."
        )
    wanted = [*tags, shared_tag]
    vocab, added_vocab = tokenizer.get_vocab(), tokenizer.get_added_vocab()
    ordinary = [t for t in wanted if t in vocab and t not in added_vocab]
    if ordinary:
        raise ValueError(
            f"{ordinary} are ordinary tokens of this tokenizer, so plain text containing them "
            "would read as a forking token. Pick another forking.tag_format / forking.shared_tag."
        )
    missing = [t for t in wanted if t not in vocab]
    added = tokenizer.add_tokens(missing, special_tokens=True) if missing else 0

    ids = tokenizer.convert_tokens_to_ids(wanted)
    for tag, tid in zip(wanted, ids, strict=True):
        encoded = tokenizer.encode(tag, add_special_tokens=False)
        if encoded != [tid]:
            raise ValueError(
                f"tag {tag!r} encodes to {encoded}, not to its single id {tid}: the tokenizer "
                "already had it as an ordinary (non-special) token. Pick another "
                "forking.tag_format / forking.shared_tag."
            )
    new_ids = [tid for tag, tid in zip(wanted, ids, strict=True) if tag in missing]
    if model is not None:
        resize_and_init_embeddings(model, len(tokenizer), new_ids, init_noise=init_noise, seed=seed)
    return ForkingTokens(
        tags=tags,
        tag_ids=tuple(ids[:-1]),
        shared_tag=shared_tag,
        shared_tag_id=ids[-1],
        added=added,
    )


@torch.no_grad()
def resize_and_init_embeddings(
    model: torch.nn.Module,
    vocab_size: int,
    new_token_ids: list[int],
    *,
    init_noise: float = 0.02,
    seed: int = 0,
) -> None:
    """Grow the embeddings to ``vocab_size`` if needed, then initialise the new tokens' rows.

    Rows are (re)initialised for ``new_token_ids`` and for every row the resize itself
    created. Models whose embedding matrix is already larger than the vocabulary (Qwen pads
    it) keep their size; their spare rows are untrained, so new tags there are initialised too.
    """
    old_rows = model.get_input_embeddings().weight.shape[0]
    if vocab_size > old_rows:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    fresh = sorted(set(new_token_ids) | set(range(old_rows, vocab_size)))
    if not fresh:
        return
    # Statistics come from rows that existed before and are not being re-initialised.
    keep = torch.ones(old_rows, dtype=torch.bool)
    keep[[i for i in fresh if i < old_rows]] = False
    generator = torch.Generator().manual_seed(seed)
    matrices = [model.get_input_embeddings()]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != matrices[0].weight.data_ptr():
        matrices.append(out)
    for module in matrices:
        weight = module.weight
        reference = weight[:old_rows][keep.to(weight.device)].float()
        mean, std = reference.mean(0), reference.std(0)
        noise = torch.randn(len(fresh), weight.shape[1], generator=generator)
        rows = mean.cpu() + init_noise * std.cpu() * noise
        weight[fresh] = rows.to(device=weight.device, dtype=weight.dtype)
        bias = getattr(module, "bias", None)
        if bias is not None and bias.shape[0] == weight.shape[0]:
            bias[fresh] = bias[:old_rows][keep.to(bias.device)].mean()


# Appended to a saved model's chat template: with add_generation_prompt, a ``forking_tag``
# passed to apply_chat_template (or vLLM's ``chat_template_kwargs``) is rendered right after
# the generation prompt, which is where training put it: [prompt ; tag] -> answer.
TAG_SLOT = "{% if add_generation_prompt and forking_tag is defined %}{{ forking_tag }}{% endif %}"


def with_tag_slot(chat_template: str) -> str:
    """``chat_template`` that also renders ``forking_tag`` after the generation prompt.

    Without ``forking_tag`` it renders exactly as before; applied twice it adds one slot."""
    return chat_template if chat_template.endswith(TAG_SLOT) else chat_template + TAG_SLOT
