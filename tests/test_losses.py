import numpy as np
import torch

from ssft.method.losses import matched_sequences
from ssft.method.matching import assign_tags, cost_matrices, get_policy
from ssft.method.sequences import TokenizedQuestion, pad_batch
from tests.conftest import make_model_and_tags, make_questions, nll_sum_and_count


def ssft_loss(model, tok, tags, questions):
    """Cost -> Hungarian -> loss on the matched sequences (token mean)."""
    costs = cost_matrices(model, questions, tags.tag_ids, pad_id=tok.pad_token_id)
    assignments = assign_tags(get_policy("hungarian"), questions, tags.num_tags, costs)
    batch = pad_batch(matched_sequences(questions, assignments, tags.tag_ids), tok.pad_token_id)
    total, count = nll_sum_and_count(model, batch)
    return total / count, assignments


def test_permuting_traces_permutes_assignment_and_keeps_loss():
    model, tok, tags = make_model_and_tags(num_tags=5)
    q = make_questions(tok, ["q-mul"])[0]
    loss, (tags_of,) = ssft_loss(model, tok, tags, [q])
    perm = [2, 0, 3, 1]
    permuted = TokenizedQuestion(q.question_id, q.prompt_ids, tuple(q.trace_ids[k] for k in perm))
    loss_p, (tags_p,) = ssft_loss(model, tok, tags, [permuted])
    assert tags_p.tolist() == [tags_of[k] for k in perm]
    torch.testing.assert_close(loss_p, loss, atol=1e-6, rtol=1e-6)


def test_gradient_reaches_only_matched_tags():
    """Untied model: an unmatched tag's input row gets exactly zero gradient."""
    model, tok, tags = make_model_and_tags(num_tags=6, tie=False)
    questions = make_questions(tok, ["q-add"])  # 3 traces, 6 tags: 3 tags unmatched
    loss, (assigned,) = ssft_loss(model, tok, tags, questions)
    loss.backward()
    grad = model.get_input_embeddings().weight.grad
    used = {tags.tag_ids[t] for t in assigned.tolist()}
    for tid in tags.tag_ids:
        if tid in used:
            assert grad[tid].abs().sum() > 0
        else:
            assert torch.count_nonzero(grad[tid]) == 0
    assert torch.count_nonzero(grad[tags.shared_tag_id]) == 0


def test_every_parameter_moves_after_a_step():
    model, tok, tags = make_model_and_tags(tie=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss, _ = ssft_loss(model, tok, tags, make_questions(tok))
    loss.backward()
    optimizer.step()
    for name, p in model.named_parameters():
        if name == "model.embed_tokens.weight":
            continue  # only rows of tokens that occur move; checked row-wise above
        assert not torch.equal(before[name], p.detach()), name


def test_shared_policy_is_plain_sft_on_flattened_traces():
    model, tok, tags = make_model_and_tags()
    questions = make_questions(tok)
    assignments = assign_tags(get_policy("shared"), questions, 1)
    shared_ids = tags.ids_for(shared=True)
    batch = pad_batch(matched_sequences(questions, assignments, shared_ids), tok.pad_token_id)
    total, count = nll_sum_and_count(model, batch)
    # Plain SFT: every (question, trace) as its own example after "<think>".
    flat_ids, flat_labels = [], []
    for q in questions:
        for trace in q.trace_ids:
            flat_ids.append([*q.prompt_ids, tags.shared_tag_id, *trace])
            flat_labels.append([-100] * (len(q.prompt_ids) + 1) + list(trace))
    plain = pad_batch(list(zip(flat_ids, flat_labels, strict=True)), tok.pad_token_id)
    hf = model(
        input_ids=plain.input_ids, attention_mask=plain.attention_mask, labels=plain.labels
    ).loss
    torch.testing.assert_close(total / count, hf, atol=1e-5, rtol=1e-5)


def test_accumulation_one_by_eight_equals_eight_by_one():
    """Sum of local_sum / GLOBAL count over micro-batches == one big batch."""
    model, tok, tags = make_model_and_tags(tie=False)
    questions = make_questions(tok)
    assignments = assign_tags(get_policy("random"), questions, tags.num_tags, seed=0)
    seqs = matched_sequences(questions, assignments, tags.tag_ids)
    assert len(seqs) == 8

    total, count = nll_sum_and_count(model, pad_batch(seqs, 0))
    (total / count).backward()
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    global_count = sum(nll_sum_and_count(model, pad_batch([s], 0))[1] for s in seqs)
    for s in seqs:
        local_sum, _ = nll_sum_and_count(model, pad_batch([s], 0))
        (local_sum / global_count).backward()
    for a, b in zip(big, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_end_of_turn_is_supervised_and_prompt_is_not():
    _, tok, tags = make_model_and_tags()
    q = make_questions(tok, ["q-one"])[0]
    ((ids, labels),) = matched_sequences([q], [np.array([2])], tags.tag_ids)
    eot = tok.convert_tokens_to_ids("<|end|>")
    assert ids[-1] == eot and labels[-1] == eot
    assert labels[: len(q.prompt_ids) + 1] == [-100] * (len(q.prompt_ids) + 1)
    assert ids[len(q.prompt_ids)] == tags.tag_ids[2]
