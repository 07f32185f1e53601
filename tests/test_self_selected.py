"""Self-selected tag evaluation: the model draws its own tag from p(tag | prompt) renormalised
over the run's tags, then continues it (``eval.self_selected``). The draws, the rows a tiny
random model gives, the ``self/`` metrics by hand, and that the fixed-tag figures ignore them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ssft.config import DataConfig, EvalConfig
from ssft.data.grading import grade
from ssft.data.teachers.base import Question
from ssft.eval.evaluation import compute_metrics, evaluate_questions, tag_distribution
from ssft.eval.metrics import self_selected_metrics, tag_entropy
from ssft.eval.sampling import draw_tags, sample_self_selected, tag_probabilities
from ssft.final_model import TAGS_FILE
from ssft.report.eval import (
    TAG_DISTRIBUTION_TABLE,
    log_eval,
    sample_table,
    self_selected_line,
    self_selected_markdown,
    tag_distribution_table,
    write_eval_outputs,
)
from tests.conftest import make_model_and_tags
from tests.test_eval_metrics import TAGS, make_rows

T1, T2, T3 = TAGS

# ---- (a) the draws -----------------------------------------------------------------------------


def test_draws_are_seeded_per_question_and_never_pick_a_zero_probability_tag():
    p = [0.2, 0.0, 0.5, 0.3]
    a = draw_tags(p, 50, seed=3, question_id="q1")
    assert a == draw_tags(p, 50, seed=3, question_id="q1")  # deterministic
    assert a != draw_tags(p, 50, seed=4, question_id="q1")  # the seed matters
    assert a != draw_tags(p, 50, seed=3, question_id="q2")  # so does the question
    assert 1 not in a and set(a) <= {0, 2, 3}
    # Only (seed, question) seed the generator: what came before changes nothing.
    draw_tags([0.9, 0.1], 1000, seed=3, question_id="q0")
    assert draw_tags(p, 50, seed=3, question_id="q1") == a
    # float32-rounded probabilities that do not sum to exactly 1 are fine (renormalised).
    assert len(draw_tags(np.float32([0.1, 0.2, 0.7000001]), 5, 0, "q")) == 5


def test_draw_frequencies_approach_p():
    p = [0.1, 0.0, 0.6, 0.3]
    n = 20_000
    counts = np.bincount(draw_tags(p, n, seed=0, question_id="q"), minlength=len(p)) / n
    assert counts[1] == 0
    # 4.5 standard deviations of a share at n = 20000 is at most 0.016.
    assert np.abs(counts - np.array(p)).max() < 0.016


@pytest.mark.parametrize("p", [[0.0, 0.0], [float("nan"), 1.0], [-0.1, 1.1], []])
def test_a_distribution_that_is_none_is_a_clear_error(p):
    with pytest.raises(ValueError, match="self_selected/q: "):
        draw_tags(p, 3, seed=0, question_id="q")


# ---- (b) a tiny random model -----------------------------------------------------------------

QUESTIONS = [Question("qa", "12 + 34 = ?", "46", "mine"), Question("qb", "7 * 8 = ?", "56", "mine"),
             Question("qc", "9 - 4 = ?", "5", "mine")]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 3-tag model and two model folders pointing at it: an ssft one and a shared-tag
    (sft_mixed) one; only ``ssft_tags.json`` is read from them, the model is passed in."""
    model, tok, forking = make_model_and_tags(num_tags=3)
    model.eval()
    dirs = {}
    for method in ("ssft", "sft_mixed"):
        folder = tmp_path_factory.mktemp(method)
        pass1_tag = forking.shared_tag if method == "sft_mixed" else forking.tags[0]
        info = {"method": method, "tags": list(forking.tags), "shared_tag": forking.shared_tag,
                "pass1_tag": pass1_tag}  # fmt: skip
        (folder / TAGS_FILE).write_text(json.dumps(info))
        dirs[method] = folder
    return model, tok, forking, dirs


# Small and few: a forward of even this model is slow on a busy CPU.
EVAL = EvalConfig(samples_per_tag=2, max_new_tokens=3, batch_size=4, greedy=False)


def _evaluate(tiny, method="ssft", questions=QUESTIONS, seed=0, **kw):
    model, tok, _, dirs = tiny
    return evaluate_questions(dirs[method], questions, EVAL, DataConfig(), seed, model=model,
                              tokenizer=tok, **kw)  # fmt: skip


def test_self_selected_rows_of_a_tiny_model(tiny):
    model, tok, forking, _ = tiny
    rows = _evaluate(tiny, self_selected=True)
    assert len(rows) == len(QUESTIONS) * 3 * 2  # num_tags x samples_per_tag per question
    assert {r["decoding"] for r in rows} == {"self_selected"}
    assert {r["tag"] for r in rows} <= set(forking.tags)
    for q in QUESTIONS:
        mine = [r for r in rows if r["question_id"] == q.question_id]
        assert [r["sample_index"] for r in mine] == list(range(6))
    # The draws are draw_tags of the question's renormalised tag distribution, and p_tag is
    # the drawn tag's probability in it.
    probs = tag_distribution(model, tok, QUESTIONS, forking.tags, DataConfig())
    for q in QUESTIONS:
        p = {r["tag"]: r["p_among_tags"] for r in probs if r["question_id"] == q.question_id}
        drawn = [forking.tags[i] for i in draw_tags([p[t] for t in forking.tags], 6, 0,
                                                    q.question_id)]  # fmt: skip
        mine = [r for r in rows if r["question_id"] == q.question_id]
        assert [r["tag"] for r in mine] == drawn
        assert [r["p_tag"] for r in mine] == [p[t] for t in drawn]
    for r in rows:  # graded and classified like sampled rows
        assert isinstance(r["correct"], bool) and r["num_tokens"] <= 3
        assert {"parsed_answer", "strategy", "teacher", "gold_answer"} <= set(r)
    again = _evaluate(tiny, self_selected=True)
    assert again == rows  # same seed: identical rows
    # A question's draws do not depend on the others evaluated beside it (sharding).
    alone = _evaluate(tiny, questions=QUESTIONS[1:2], self_selected=True)
    qb = [r for r in rows if r["question_id"] == "qb"]
    assert [(r["tag"], r["p_tag"]) for r in alone] == [(r["tag"], r["p_tag"]) for r in qb]


def test_self_selected_samples_are_their_own_streams(tiny):
    """Draw k of a tag is sampled under key self<k>: not the fixed-tag protocol's sample."""
    model, tok, forking, _ = tiny
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=4, batch_size=4, seed=0)
    rows, probs = sample_self_selected(model, tok, QUESTIONS[:1], [forking.tags[0]], samples=3,
                                       **kw)  # fmt: skip
    assert [r["tag"] for r in rows] == [forking.tags[0]] * 3  # one tag: always drawn
    assert [r["p_tag"] for r in rows] == [1.0] * 3 and len(probs) == 1
    assert probs == tag_probabilities(model, tok, QUESTIONS[:1], [forking.tags[0]])
    texts = [r["text"] for r in rows]
    assert len(set(texts)) > 1  # three streams, not one sample three times


def test_shared_tag_methods_self_select_their_one_tag(tiny):
    _, _, forking, _ = tiny
    rows = _evaluate(tiny, "sft_mixed", questions=QUESTIONS[:2], self_selected=True)
    assert len(rows) == 2 * 3 * 2  # N x S under the one tag
    assert {r["tag"] for r in rows} == {forking.shared_tag}
    assert {r["p_tag"] for r in rows} == {1.0}


def test_self_selected_needs_the_hf_backend_and_its_own_pass(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"^eval\.self_selected needs eval\.backend=hf for now$"):
        evaluate_questions(tmp_path, QUESTIONS, EvalConfig(backend="vllm"), DataConfig(), 0,
                           self_selected=True)  # fmt: skip
    with pytest.raises(ValueError, match="separate passes"):
        _evaluate(tiny, greedy=True, self_selected=True)


# ---- (c) the self/ metrics by hand -------------------------------------------------------------

GOLD = {"q1": "5", "q2": "1/2"}
# question -> its self-selected samples in draw order: (drawn tag, boxed answer or None).
SELF = {
    # First 3 (N = 3): 5, 7, 6, a three-way tie won by the earliest group, 5: right.
    # All 6: 7 three times beats 5 twice: wrong.
    "q1": [(T1, "5"), (T2, "7"), (T1, "6"), (T2, "7"), (T2, "7"), (T1, "5")],
    # First 3: 1/2 and 0.5 vote together (math_verify) and beat 4: right. All 6: the 1/2
    # group has three votes, 4 two, no answer none: right.
    "q2": [(T2, "4"), (T2, "1/2"), (T2, "0.5"), (T2, None), (T1, "1/2"), (T2, "4")],
}
CORRECT = {"q1": [1, 0, 0, 0, 0, 1], "q2": [0, 1, 1, 0, 1, 0]}
PROBS = {"q1": (0.5, 0.5, 0.0), "q2": (0.25, 0.75, 0.0)}  # p_among_tags of T1, T2, T3
INFO = {"method": "ssft", "tags": TAGS, "shared_tag": "<think>", "pass1_tag": T1}


def self_rows() -> list[dict]:
    rows = []
    for qid, samples in SELF.items():
        for k, (tag, answer) in enumerate(samples):
            text = "no box" if answer is None else f"so \\boxed{{{answer}}}"
            parsed, correct = grade(GOLD[qid], text)
            rows.append(dict(question_id=qid, tag=tag, sample_index=k, text=text,
                             parsed_answer=parsed, correct=correct, num_tokens=5,
                             strategy=None, decoding="self_selected",
                             p_tag=PROBS[qid][TAGS.index(tag)]))  # fmt: skip
    return rows


def prob_rows() -> list[dict]:
    return [{"question_id": q, "tag": t, "p_vocab": p / 2, "p_among_tags": p}
            for q, ps in PROBS.items() for t, p in zip(TAGS, ps, strict=True)]  # fmt: skip


def test_the_hand_written_rows_grade_as_assumed():
    assert {q: [int(r["correct"]) for r in self_rows() if r["question_id"] == q]
            for q in SELF} == CORRECT  # fmt: skip


def test_self_selected_metrics_by_hand():
    rows = make_rows() + self_rows()  # fixed-tag rows beside them
    m = compute_metrics(rows, INFO, EvalConfig(samples_per_tag=2), tag_probs=prob_rows())
    assert m["self/pass1"] == pytest.approx((2 / 6 + 3 / 6) / 2)
    assert m["self/cons_k"] == 1.0 and m["self/cons_all"] == 0.5
    assert m["self/drawn/<think1>"] == pytest.approx(4 / 12)
    assert m["self/drawn/<think2>"] == pytest.approx(8 / 12)
    assert m["self/drawn/<think3>"] == 0.0
    assert m["self/pass1/<think1>"] == 0.75  # q1: 5, 6, 5; q2: 1/2
    assert m["self/pass1/<think2>"] == 0.25  # q1: 7 x3; q2: 4, 1/2, 0.5, none, 4
    assert "self/pass1/<think3>" not in m  # never drawn
    h1, h2 = math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert m["self/tag_entropy"] == pytest.approx((h1 + h2) / 2)
    assert m["self/tag_entropy_max"] == pytest.approx(math.log(3))
    assert m["self/p/<think1>"] == pytest.approx(0.375)
    assert m["self/p/<think2>"] == pytest.approx(0.625)
    assert m["self/p/<think3>"] == 0.0
    assert m["self/n_samples"] == 6.0
    # Without the distribution: everything but entropy and p(tag).
    bare = compute_metrics(rows, INFO, EvalConfig(samples_per_tag=2))
    assert {k for k in m if k not in bare} == {"self/tag_entropy", "self/tag_entropy_max"} | {
        f"self/p/{t}" for t in TAGS}  # fmt: skip


def test_self_cons_k_votes_over_n_samples_of_a_shared_tag():
    """A shared-tag method has one tag but votes N = num_tags samples at a time."""
    rows = [dict(r, tag="<think>", p_tag=1.0) for r in self_rows()]
    m = self_selected_metrics(rows, ["<think>"], cons_k=3)
    assert m["self/cons_k"] == 1.0 and m["self/drawn/<think>"] == 1.0
    assert m["self/pass1/<think>"] == pytest.approx(5 / 12)
    ones = [{"question_id": q, "tag": "<think>", "p_among_tags": 1.0} for q in SELF]
    m = self_selected_metrics(rows, ["<think>"], ones, cons_k=3)
    assert m["self/tag_entropy"] == m["self/tag_entropy_max"] == 0.0
    with pytest.raises(ValueError, match="votes over 7 samples"):
        self_selected_metrics(rows, ["<think>"], cons_k=7)
    with pytest.raises(ValueError, match="not in"):
        self_selected_metrics(self_rows(), ["<think>"])


def test_tag_entropy():
    assert tag_entropy([0.25] * 4) == pytest.approx(math.log(4))
    assert tag_entropy([1.0, 0.0]) == 0.0 and tag_entropy([2.0, 2.0]) == pytest.approx(math.log(2))


# ---- (d) the fixed-tag figures ignore self-selected rows ----------------------------------------


def test_fixed_tag_figures_are_unchanged_by_self_selected_rows():
    cfg = EvalConfig(samples_per_tag=2)
    greedy = [dict(r, decoding="greedy") for r in make_rows() if r["sample_index"] == 0]
    before = compute_metrics(make_rows() + greedy, INFO, cfg)
    after = compute_metrics(make_rows() + greedy + self_rows(), INFO, cfg, tag_probs=prob_rows())
    assert {k: after[k] for k in before} == before
    assert not any(k.startswith("self/") for k in before)
    assert list(after)[: len(before)] == list(before)  # the new figures come last
    # And the distribution alone adds nothing: there is no self-selected sample to judge.
    assert compute_metrics(make_rows(), INFO, cfg, tag_probs=prob_rows()) == compute_metrics(
        make_rows(), INFO, cfg)  # fmt: skip


# ---- the report and what reaches MLflow --------------------------------------------------------


class _Recorder:
    """The tracker calls ``log_eval`` makes, recorded."""

    def __init__(self):
        self.tables, self.texts, self.metrics = {}, {}, {}

    def log_metrics(self, metrics, step=None):
        self.metrics |= metrics

    def log_table(self, data, artifact_file):
        self.tables[artifact_file] = data

    def log_text(self, text, artifact_file):
        self.texts[artifact_file] = text

    def log_artifact(self, path, artifact_path=None):
        pass

    def log_figure(self, figure, artifact_file):
        pass


def test_the_tag_distribution_table_and_report(tmp_path):
    rows = make_rows() + self_rows()
    metrics = compute_metrics(rows, INFO, EvalConfig(samples_per_tag=2), tag_probs=prob_rows())
    table = tag_distribution_table(prob_rows(), rows)
    assert table["question_id"] == ["q1", "q2"]
    assert table["p/<think2>"] == [0.5, 0.75] and table["p/<think3>"] == [0.0, 0.0]
    assert table["entropy"] == pytest.approx([math.log(2), tag_entropy([0.25, 0.75])])
    assert table["drawn/<think1>"] == [3, 1] and table["drawn/<think2>"] == [3, 5]
    assert table["drawn/<think3>"] == [0, 0]
    assert table["self_accuracy"] == pytest.approx([2 / 6, 3 / 6])

    text = self_selected_markdown(metrics)
    assert "Pass@1: 0.417" in text and "Cons@N (vote of N draws): 1.000" in text
    assert f"at most {math.log(3):.3f} (ln N)" in text
    fixed = f"{metrics['pass1/<think3>']:.3f}"
    assert f"| <think3> | 0.000 | 0.000 | – | {fixed} |" in text  # never drawn
    assert self_selected_markdown({"pass1": 1.0}) == "" and self_selected_line({}) is None
    assert "self-selected pass1 0.417" in self_selected_line(metrics)

    tracker = _Recorder()
    write_eval_outputs(tmp_path, rows, prob_rows(), metrics, INFO)
    assert (tmp_path / "self_selected.md").read_text() == text
    log_eval(tracker, tmp_path, rows, metrics, "x", prob_rows=prob_rows())
    assert tracker.tables[TAG_DISTRIBUTION_TABLE] == table
    assert tracker.texts["eval/self_selected.md"] == text
    assert tracker.metrics["self/p/think1"] == metrics["self/p/<think1>"]
    samples = tracker.tables["eval/samples.json"]
    assert samples["p_tag"][-1] == 0.75 and samples["p_tag"][0] is None
    # Without self-selected rows: no section and no distribution table.
    plain = compute_metrics(make_rows(), INFO, EvalConfig(samples_per_tag=2))
    write_eval_outputs(tmp_path, make_rows(), prob_rows(), plain, INFO)
    assert not (tmp_path / "self_selected.md").exists()
    tracker = _Recorder()
    log_eval(tracker, tmp_path, make_rows(), plain, "x", prob_rows=prob_rows())
    assert TAG_DISTRIBUTION_TABLE not in tracker.tables and not tracker.texts
    assert "p_tag" not in sample_table(make_rows())


def test_samples_file_keeps_a_column_only_some_rows_have(tmp_path):
    import pyarrow.parquet as pq

    rows = make_rows() + self_rows()
    write_eval_outputs(tmp_path, rows, prob_rows(), {"pass1": 0.0}, INFO)
    table = pq.read_table(tmp_path / "samples.parquet").to_pylist()
    assert [r["p_tag"] for r in table] == [None] * len(make_rows()) + [
        r["p_tag"] for r in self_rows()]  # fmt: skip
    assert [r["decoding"] for r in table][-1] == "self_selected"
