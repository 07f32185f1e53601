"""Evaluation without Ray: tag-conditioned sampling, grading, metrics, outputs."""

import dataclasses
import json

import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from ssft.config import EvalConfig, ModelConfig, load_config
from ssft.data.question_sources import load_questions
from ssft.data.teachers.base import Question
from ssft.eval.evaluation import compute_metrics, evaluate_questions
from ssft.eval.sampling import sample_with_tags, tag_probabilities
from ssft.final_model import read_model_tags
from ssft.report.comparison import aggregate, load_eval, markdown_table
from ssft.report.eval import per_tag_figure, write_eval_outputs
from ssft.train.loop import TrainContext, train


@pytest.fixture(scope="module")
def trained(known_modes_traces, tmp_path_factory):
    """A briefly trained ssft model and an sft_mixed one, with their configs."""
    out = {}
    for method in ("ssft", "sft_mixed"):
        cfg = load_config(
            "tests/configs/tiny_test.yaml",
            [f"data.train_path={known_modes_traces}", f"method={method}", "train.epochs=4",
             "train.questions_per_step=8", "train.warmup_steps=0",
             "train.log_every=100", "eval.num_questions=6", "eval.samples_per_tag=2",
             "eval.max_new_tokens=48"],
        )  # fmt: skip
        final = tmp_path_factory.mktemp(method) / "final"
        train(cfg, TrainContext(final_dir=final))
        out[method] = (cfg, final)
    return out


def _questions(cfg):
    return load_questions(dataclasses.replace(cfg.build, split="test", num_questions=6))


def test_samples_are_tag_conditioned_graded_and_classified(trained):
    cfg, final = trained["ssft"]
    rows = evaluate_questions(final, _questions(cfg), cfg.eval, cfg.data, seed=0)
    assert len(rows) == 6 * 4 * 2
    assert [r["tag"] for r in rows[:8]] == [f"<think{i}>" for i in (1, 1, 2, 2, 3, 3, 4, 4)]
    for r in rows:
        assert isinstance(r["correct"], bool) and r["num_tokens"] <= 48
        assert r["strategy"] in ("column", "split", "round", "count_on", "unknown")
    again = evaluate_questions(final, _questions(cfg), cfg.eval, cfg.data, seed=0)
    assert [r["text"] for r in again] == [r["text"] for r in rows]  # seeded


def test_shared_tag_methods_draw_the_same_number_of_samples(trained):
    cfg, final = trained["sft_mixed"]
    rows = evaluate_questions(final, _questions(cfg), cfg.eval, cfg.data, seed=0)
    assert {r["tag"] for r in rows} == {"<think>"} and len(rows) == 6 * 4 * 2
    metrics = compute_metrics(rows, read_model_tags(final), cfg.eval)
    assert metrics["n_samples"] == 8 and "pass@8" in metrics and "cons_native" in metrics


def test_metrics_and_outputs(trained, tmp_path):
    cfg, final = trained["ssft"]
    info = read_model_tags(final)
    rows = evaluate_questions(final, _questions(cfg), cfg.eval, cfg.data, seed=0)
    metrics = compute_metrics(rows, info, cfg.eval)
    assert metrics["pass1"] == metrics[f"pass1/{info['pass1_tag']}"]
    assert metrics["tag_accuracy_min"] <= min(metrics[f"pass1/<think{i}>"] for i in range(1, 5))
    assert 0 <= metrics["mode_purity"] <= 1 and metrics["num_tags"] == 4
    assert metrics["pass@1"] <= metrics["pass@8"]
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    probs = tag_probabilities(model, tok, _questions(cfg), info["tags"])
    per_q = {}
    for p in probs:
        per_q[p["question_id"]] = per_q.get(p["question_id"], 0.0) + p["p_among_tags"]
        assert 0 <= p["p_vocab"] <= 1
    assert all(abs(v - 1) < 1e-5 for v in per_q.values())
    write_eval_outputs(tmp_path / "a", rows, probs, metrics, info)
    assert pq.read_table(tmp_path / "a" / "samples.parquet").num_rows == len(rows)
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["metrics"] == metrics
    write_eval_outputs(tmp_path / "b", rows, probs, {**metrics, "pass1": 0.0}, info)
    table = markdown_table(aggregate([load_eval(tmp_path / "a"), load_eval(tmp_path / "b")]))
    assert table.splitlines()[2].startswith("| ssft | 2 |")


def test_sampling_rejects_a_model_without_tags(tokenizer, trained):
    cfg, final = trained["ssft"]
    model = AutoModelForCausalLM.from_pretrained(final)
    with pytest.raises(ValueError, match="not a single token"):
        sample_with_tags(model, tokenizer, _questions(cfg), ["<think1>"], samples_per_tag=1)


def test_a_directory_without_tags_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ssft_tags\.json"):
        read_model_tags(tmp_path)


def test_vllm_backend_without_vllm_is_a_clear_error(trained):
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed here; this test checks the message when it is not")
    cfg, final = trained["ssft"]
    eval_cfg = dataclasses.replace(cfg.eval, backend="vllm")
    with pytest.raises(ImportError, match=r"eval\.backend=hf"):
        evaluate_questions(final, _questions(cfg), eval_cfg, cfg.data, seed=0)


def test_greedy_rows_teachers_and_usable_tags_reach_the_metrics(trained):
    cfg, final = trained["ssft"]
    info = read_model_tags(final)
    qs = _questions(cfg)
    rows = evaluate_questions(final, qs, cfg.eval, cfg.data, seed=0)
    greedy = evaluate_questions(final, qs, cfg.eval, cfg.data, seed=0, greedy=True)
    assert len(greedy) == 6 * 4 and {r["decoding"] for r in greedy} == {"greedy"}
    assert {r["decoding"] for r in rows} == {"sampled"}
    # Training wrote teacher profiles: every sample is attributed (a teacher or "unknown").
    teachers = {f"strategy:{s}" for s in ("column", "split", "round", "count_on")}
    assert {r["teacher"] for r in rows} <= teachers | {"unknown"}
    narrowed = {**info, "usable_tags": ["<think1>", "<think2>"]}
    metrics = compute_metrics(rows + greedy, narrowed, cfg.eval)
    assert metrics["n_samples"] == 8  # greedy rows stay out of the sampling metrics
    assert metrics["num_usable_tags"] == 2.0
    assert metrics["tag_accuracy_min_usable"] == min(metrics["pass1/<think1>"],
                                                     metrics["pass1/<think2>"])  # fmt: skip
    assert {"cons_native_usable", "greedy_accuracy_mean", "distinct_strategies_greedy",
            "teacher_purity", "distinct_teachers_greedy"} <= set(metrics)  # fmt: skip
    greedy_acc = [metrics[f"greedy_pass1/<think{i}>"] for i in range(1, 5)]
    assert metrics["greedy_accuracy_mean"] == pytest.approx(sum(greedy_acc) / 4)
    assert "cons_native_usable" not in compute_metrics(rows, info, cfg.eval)  # all usable


# -- which classifier labels a sample's mode -----------------------------------------------------


def test_mode_classifier_auto_is_for_the_benchmarks_own_questions_only():
    from ssft.data.known_modes import render
    from ssft.eval.modes import mode_classifier

    auto = mode_classifier("auto")
    text = render(47, 38, "column")
    benchmark = Question("q", "47 + 38 = ?", "85", "known_modes/addition-d2")
    lookalike = Question("q", "47 + 38 = ?", "85", "known_modes_mine")  # a user's own source
    assert auto(benchmark, text) == ("column", "column")
    assert auto(lookalike, text) == (None, None)
    assert mode_classifier("none")(benchmark, text) == (None, None)


def test_a_users_mode_classifier_is_imported_and_checked():
    from ssft.config.checks import ConfigError
    from ssft.eval.modes import mode_classifier

    q = Question("q", "p", "1", "mine")
    assert mode_classifier("tests.user_plugin:by_first_word")(q, "Guess then check") == (
        "guess", "guess",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"returned int 16 for a sample; it must return a str"):
        mode_classifier("tests.user_plugin:not_a_label")(q, "Guess then check")
    with pytest.raises(ConfigError, match=r"cannot import it \(AttributeError"):
        mode_classifier("tests.user_plugin:missing")
    with pytest.raises(ConfigError, match=r"cannot import it \(ModuleNotFoundError"):
        mode_classifier("no_such_package.modes:classify")


def test_auto_looks_the_questions_source_up_in_the_benchmark_table():
    from ssft.data import known_modes
    from ssft.data.question_sources import mode_classifiers, trace_mode_classifier
    from ssft.eval.modes import mode_classifier

    found = mode_classifiers("known_modes/addition-d3")
    assert found is not None and found.source == "known_modes"
    assert (found.layout, found.strict) == (known_modes.classify_layout, known_modes.classify)
    assert trace_mode_classifier("known_modes") is found.strict  # the build's label, same entry
    assert mode_classifiers("known_modes_mine") is None
    assert mode_classifiers("champ") is None
    q = known_modes.make_questions(1, seed=0)[0].as_question()
    text = "column"  # not a known-modes layout: unclassified, but still looked up
    assert mode_classifier("auto")(q, text) == (known_modes.classify_layout(text),
                                                known_modes.classify(text))  # fmt: skip
    assert mode_classifier("auto")(dataclasses.replace(q, source="champ"), text) == (None, None)


def test_a_model_folder_is_loaded_through_a_model_config(tmp_path):
    from ssft.eval.evaluation import _model_dir_cfg

    cfg = _model_dir_cfg(tmp_path, trust_remote_code=False)
    assert cfg == ModelConfig(name_or_path=str(tmp_path), init="pretrained", dtype="auto")


# -- the metrics of a constructed sample table (no model) ----------------------------------------

SHARED_INFO = {"method": "sft_mixed", "tags": ["<think1>", "<think2>"], "shared_tag": "<think>",
               "pass1_tag": "<think>"}  # fmt: skip


def test_compute_metrics_of_a_shared_tag_table_by_hand():
    from tests.test_eval_metrics import shared_rows

    greedy = [dict(r, decoding="greedy") for r in shared_rows() if r["sample_index"] == 0]
    rows = shared_rows() + greedy
    metrics = compute_metrics(rows, SHARED_INFO, EvalConfig(samples_per_tag=2, cons_k=3))
    # N = 2 tags x 2 samples = 4 samples under <think>, voted 2 at a time (by hand in
    # tests/test_eval_metrics.py::test_summarize_votes_over_a_shared_tags_groups_once_by_hand).
    assert metrics["cons_native"] == 0.75 and metrics["distinct_strategies"] == 1.5
    assert [metrics[f"cons@{k}"] for k in (1, 2, 4)] == [0.5, 0.5, 0.5]
    assert metrics["cons_k"] == 1.0 and metrics["n_samples"] == 4.0
    assert metrics["num_tags"] == 2.0 and metrics["num_usable_tags"] == 1.0
    # Greedy: sample 0 of each question (q1 5 right, q2 4 wrong; column and round).
    assert metrics["greedy_pass1/<think>"] == metrics["greedy_accuracy_mean"] == 0.5
    assert metrics["distinct_strategies_greedy"] == 1.0
    keys = list(metrics)
    assert keys[keys.index("cons_k") :][:3] == ["cons_k", "num_tags", "num_usable_tags"]
    with pytest.raises(ValueError, match=r"eval.cons_k=5 but only 4 samples"):
        compute_metrics(rows, SHARED_INFO, EvalConfig(samples_per_tag=2, cons_k=5))


def test_compute_metrics_votes_once(monkeypatch):
    import ssft.eval.metrics as m
    from tests.test_eval_metrics import TAGS, make_rows

    calls = []

    def counted(name):
        real = getattr(m, name)

        def vote(*args):
            calls.append(name)
            return real(*args)

        return vote

    for name in ("cons_native", "cons_at_k"):
        monkeypatch.setattr(m, name, counted(name))
    info = {"method": "ssft", "tags": TAGS, "shared_tag": "<think>", "pass1_tag": TAGS[0]}
    metrics = compute_metrics(make_rows(), info, EvalConfig(samples_per_tag=2))
    # ks = 1, 2, 4, 6 (6 = all samples, also cons_k): one vote computation each.
    assert calls == ["cons_native"] + ["cons_at_k"] * 4
    assert metrics["cons_k"] == metrics["cons@6"]


def test_the_per_tag_plot_shows_the_logged_figures():
    from ssft.eval import metrics as m
    from tests.test_eval_metrics import TAGS, make_rows

    metrics = m.summarize(make_rows(), TAGS, TAGS[0], [1])
    acc, length = per_tag_figure(metrics, "t").axes
    stats = m.per_tag(make_rows())
    assert [b.get_height() for b in acc.patches] == [stats[t].accuracy for t in TAGS]
    assert [b.get_height() for b in length.patches] == [stats[t].mean_tokens for t in TAGS]
    assert [x.get_text() for x in acc.get_xticklabels()] == TAGS


def test_evaluation_never_samples_a_forking_token_unless_told(trained, tmp_path):
    """``eval.mask_forking_tokens`` (default on) keeps every forking token, the shared tag
    included, out of the answers: a copy of the model whose ``<think>`` output row dominates
    the first answer token answers as the original does; with the mask off it does not."""
    import shutil

    import torch

    cfg, final = trained["ssft"]
    copy = tmp_path / "final"
    shutil.copytree(final, copy)
    model = AutoModelForCausalLM.from_pretrained(copy)
    tokenizer = AutoTokenizer.from_pretrained(copy)
    q = _questions(cfg)[0]
    prompt = tokenizer.encode(f"Question: {q.prompt}\nAnswer: ", add_special_tokens=True)
    shared = tokenizer.convert_tokens_to_ids("<think>")
    with torch.no_grad():  # untied or tied alike: <think> is never an input of SSFT's samples
        first = model(input_ids=torch.tensor([[*prompt, tokenizer.convert_tokens_to_ids(
            "<think1>")]])).logits[0, -1].argmax()  # fmt: skip
        head = model.get_output_embeddings().weight
        head[shared] = 3.0 * head[first]
    model.save_pretrained(copy)

    def texts(model_dir, mask):
        ev = dataclasses.replace(cfg.eval, mask_forking_tokens=mask)
        return [r["text"] for r in evaluate_questions(model_dir, _questions(cfg), ev, cfg.data,
                                                      seed=0)]  # fmt: skip

    assert texts(copy, True) == texts(final, True)
    assert texts(copy, False) != texts(final, False)
