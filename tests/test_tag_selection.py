"""Tests for ssft.eval.tag_selection (exact picks, held-out split) and the spare-tag options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ssft.config import load_config
from ssft.data.trace_set import Trace, TraceSet
from ssft.eval.tag_selection import held_out_count, select_tags, validation_split
from ssft.final_model import is_finished_model
from ssft.method.matching import spare_tag_fill
from ssft.method.sequences import TokenizedQuestion, build_sequence
from ssft.train.batching import micro_batch_count
from ssft.train.loop import TrainContext, train, train_step
from ssft.train.setup import setup_run
from tests.conftest import last_wins

TAGS = ["<think1>", "<think2>", "<think3>", "<think4>"]


def test_each_rule_picks_its_tag_and_ties_go_to_the_lowest():
    selection = select_tags(
        TAGS, [5, 9, 9, 1], [2, 2, 7, 1], {"<think1>": 0.5, "<think2>": 0.9,
                                           "<think3>": 0.6, "<think4>": 0.9},
        rule="validation", validation_questions=10,
    )  # fmt: skip
    assert selection.candidates == {
        "coverage": "<think2>", "coverage_last_epoch": "<think3>", "validation": "<think2>"
    }  # fmt: skip
    assert selection.pass1_tag == "<think2>" and selection.usable_tags == TAGS
    assert selection.why() == "<think2>: best validation accuracy 0.900 on 10 q"
    by_coverage = select_tags(TAGS, [5, 9, 9, 1], [2, 2, 7, 1], None, rule="coverage")
    assert by_coverage.pass1_tag == "<think2>" and "validation" not in by_coverage.candidates
    assert by_coverage.why() == "<think2>: most traces matched (coverage: 9)"


def test_usable_tags_keep_those_within_the_ratio_of_the_best():
    accuracy = {"<think1>": 1.0, "<think2>": 0.95, "<think3>": 0.949, "<think4>": 0.5}
    selection = select_tags(TAGS, [1] * 4, [1] * 4, accuracy, rule="coverage_last_epoch",
                            min_relative_accuracy=0.95)  # fmt: skip
    assert selection.usable_tags == ["<think1>", "<think2>"]
    assert selection.pass1_tag == "<think1>"  # the rule still decides Pass@1 (a tie here)
    assert json.loads(json.dumps(selection.to_json()))["usable_tags"] == selection.usable_tags


def test_rules_without_their_evidence_are_errors():
    with pytest.raises(ValueError, match="validation_questions > 0"):
        select_tags(TAGS, [1] * 4, [1] * 4, None, rule="validation")
    with pytest.raises(ValueError, match="valid rules"):
        select_tags(TAGS, [1] * 4, [1] * 4, None, rule="best")


def _sets(n: int) -> list[TraceSet]:
    trace = Trace("t", "strategy:column", "1+1=2\n\\boxed{2}", "2", True)
    return [TraceSet(f"q{i:03d}", "1 + 1 = ?", "2", "known_modes", (trace,)) for i in range(n)]


def test_validation_split_is_by_question_id_hash_capped_at_a_quarter():
    sets = _sets(40)
    train_sets, held = validation_split(sets, 8)
    assert len(held) == 8 and len(train_sets) == 32
    assert not {s.question_id for s in train_sets} & {s.question_id for s in held}
    # The same questions whatever the file order; both parts keep the file's order.
    _, held_reversed = validation_split(sets[::-1], 8)
    assert {s.question_id for s in held_reversed} == {s.question_id for s in held}
    assert held == sorted(held, key=lambda s: s.question_id)
    assert held_out_count(64, 40) == 10 and held_out_count(64, 1000) == 64
    assert validation_split(sets, 0) == (sets, [])


def test_spare_tag_fill_gives_every_unused_tag_its_cheapest_trace():
    cost = np.array([[1.0, 5.0, 2.0], [0.5, 0.4, 0.9], [3.0, 3.0, 1.0], [2.0, 2.0, 8.0],
                     [9.0, 1.0, 1.0]])  # fmt: skip
    assert spare_tag_fill(cost, np.array([0, 1, 2])) == [(3, 0), (4, 1)]  # ties: lowest trace
    assert spare_tag_fill(cost[:3], np.array([2, 0, 1])) == []


def test_micro_batches_count_n_sequences_per_question_when_spare_tags_fill():
    q = TokenizedQuestion("q", (1,), ((2,), (3,)))  # M = 2
    assert micro_batch_count([[0, 1]], [q, q], 3) == 2  # 4 sequences
    assert micro_batch_count([[0, 1]], [q, q], 3, lambda q: max(q.num_traces, 6)) == 4  # 12


def _cfg(path, *overrides):
    return load_config("tests/configs/tiny_test.yaml", last_wins(
        f"data.train_path={path}", "train.log_every=100", "train.questions_per_step=48",
        "train.epochs=1", "train.warmup_steps=0", "forking.num_tags=6",
        "model.tie_word_embeddings=false", *overrides,
    ))  # fmt: skip


@pytest.mark.parametrize("packing", ["false", "true"])
def test_fill_leaves_the_logged_loss_to_the_matched_sequences(known_modes_traces, packing):
    """Same init and the same matching at step 0: the logged (matched-only) loss agrees, also
    when packed rows mix matched and spare-tag sequences."""
    losses = [
        train(_cfg(known_modes_traces, f"matching.spare_tags={spare}", f"train.packing={packing}"),
              TrainContext()).losses
        for spare in ("unused", "fill")
    ]  # fmt: skip
    assert len(losses[0]) == 1 and losses[1][0] == pytest.approx(losses[0][0], rel=1e-6)


@pytest.mark.filterwarnings("ignore:Seems like:UserWarning")
def test_fill_gives_a_gradient_to_tags_no_trace_was_matched_to(known_modes_traces):
    grads = {}
    for spare in ("unused", "fill"):
        cfg = _cfg(known_modes_traces, f"matching.spare_tags={spare}", "train.questions_per_step=1")
        run = setup_run(cfg, TrainContext())  # one question (M <= 4) per step, N = 6
        emb = run.model.get_input_embeddings().weight
        q0 = run.questions[0]
        dummy = build_sequence(q0.prompt_ids, run.tag_ids[0], q0.trace_ids[0])
        run.optimizer.step = lambda: None  # keep the gradients for inspection
        run.optimizer.zero_grad = lambda set_to_none=True: None
        out = train_step(run, 0, dummy)
        used = {t for r in out.records for t in r.tags}
        grads[spare] = (emb.grad[list(run.tag_ids)].abs().sum(dim=1), used)
    g_unused, used = grads["unused"]
    g_fill, _ = grads["fill"]
    assert len(used) < 6  # at least two tags got no trace
    for i in range(6):
        assert (g_unused[i] > 0) == (i in used)  # unused tags get nothing from the loss
        assert g_fill[i] > 0  # fill: every tag trains
    assert torch.isfinite(g_fill).all()


def test_training_with_validation_records_the_selection_in_the_model_folder(
    known_modes_traces, tmp_path
):
    cfg = _cfg(
        known_modes_traces, "forking.num_tags=4", "tag_selection.validation_questions=8",
        "tag_selection.pass1_rule=validation", "tag_selection.samples_per_tag=1",
        "tag_selection.min_relative_accuracy=0.9", "eval.max_new_tokens=8",
    )  # fmt: skip
    result = train(cfg, TrainContext(final_dir=tmp_path / "final"))
    info = json.loads((tmp_path / "final" / "ssft_tags.json").read_text())
    selection = info["tag_selection"]
    assert is_finished_model(tmp_path / "final")
    assert set(selection["validation_accuracy"]) == set(TAGS)
    assert selection["validation_questions"] == 8 and selection["rule"] == "validation"
    assert info["pass1_tag"] == selection["candidates"]["validation"] == result.pass1_tag
    best = max(selection["validation_accuracy"].values())
    assert info["usable_tags"] == [
        t for t in TAGS if selection["validation_accuracy"][t] >= 0.9 * best
    ]
    assert (tmp_path / "final" / "teacher_profiles.json").exists()
    # 40 questions trained on (8 held out), 48 per step: one step.
    assert result.steps == 1 and result.data_log[0][2] == 40
