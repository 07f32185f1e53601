"""Tests for ssft.report.comparison on constructed evaluation folders: groups, equal k, rules."""

from __future__ import annotations

import json

import pytest

from ssft.errors import InputError
from ssft.report.comparison import (
    aggregate,
    common_k,
    label_runs,
    load_eval,
    markdown_table,
    pass1_rule_audit,
    report,
)

TAGS4 = [f"<think{i}>" for i in range(1, 5)]


def _write(tmp_path, name, method, tags, per_tag, pass_k, selection=None, **metrics):
    folder = tmp_path / name
    folder.mkdir()
    blob = {
        "metrics": {"num_tags": float(len(tags)), **{f"pass1/{t}": a for t, a in per_tag.items()},
                    **{f"pass@{k}": v for k, v in pass_k.items()},
                    **{f"cons@{k}": v for k, v in pass_k.items()}, **metrics},
        "model": {"method": method, "tags": tags, "shared_tag": "<think>",
                  "pass1_tag": (selection or {}).get("pass1_tag", tags[0]),
                  "tag_selection": selection, "usable_tags": (selection or {}).get("usable_tags")},
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(blob))
    return folder


def _selection(picks: dict[str, str], rule: str, validation=None) -> dict:
    return {"pass1_tag": picks[rule], "rule": rule, "candidates": picks,
            "usable_tags": TAGS4, "validation_accuracy": validation or {}}  # fmt: skip


def test_runs_are_compared_at_the_largest_k_every_run_drew(tmp_path):
    six = _write(tmp_path, "n6", "ssft", [*TAGS4, "<think5>", "<think6>"], {},
                 {1: 0.5, 16: 0.9, 24: 0.95}, pass1=0.5)  # fmt: skip
    four = _write(tmp_path, "n4", "ssft", TAGS4, {}, {1: 0.6, 16: 0.8}, pass1=0.6)
    evals = label_runs([load_eval(six), load_eval(four)])
    assert common_k(evals) == 16
    # One method at two N: the labels say N.
    assert [e["label"] for e in evals] == ["ssft N=6", "ssft N=4"]
    table = markdown_table(aggregate(evals), 16)
    assert "| Cons@16 | pass@16 |" in table and "pass@24" not in table
    assert "| ssft N=6 | 1 | 0.500 |" in table


def test_groups_aggregate_over_seeds_with_a_t_interval(tmp_path):
    dirs = [_write(tmp_path, f"s{i}", "sft_mixed", ["<think>"], {}, {1: v}, pass1=v)
            for i, v in enumerate((0.5, 0.7))]  # fmt: skip
    agg = aggregate([load_eval(d, "sft-mixed") for d in dirs])
    mean, half, runs = agg["sft-mixed"]["pass1"]
    # mean 0.6, sd 0.1414, t(0.975, 1) = 12.706: 12.706 * 0.1414 / sqrt(2) = 1.2706
    assert (mean, runs) == (pytest.approx(0.6), 2) and half == pytest.approx(1.2706, abs=1e-4)


def test_pass1_rule_audit_scores_every_rule_against_the_best_test_tag(tmp_path):
    picks_a = {"coverage": "<think3>", "coverage_last_epoch": "<think2>", "validation": "<think1>"}
    picks_b = {"coverage": "<think1>", "coverage_last_epoch": "<think4>", "validation": "<think4>"}
    acc_a = {"<think1>": 1.0, "<think2>": 0.9, "<think3>": 0.5, "<think4>": 1.0}
    acc_b = {"<think1>": 0.8, "<think2>": 0.8, "<think3>": 0.7, "<think4>": 0.6}
    a = _write(tmp_path, "a", "ssft", TAGS4, acc_a, {1: 0.5}, _selection(picks_a, "validation"))
    b = _write(tmp_path, "b", "ssft", TAGS4, acc_b, {1: 0.5}, _selection(picks_b, "validation"))
    mixed = _write(tmp_path, "m", "sft_mixed", ["<think>"], {"<think>": 0.7}, {1: 0.5})
    # Each rule's pick gets a Pass@1 of its own: the paper's coverage heuristic is a column.
    assert load_eval(a)["metrics"]["pass1_coverage"] == 0.5
    assert load_eval(a)["metrics"]["pass1_validation"] == 1.0
    rows, summary = pass1_rule_audit([load_eval(a), load_eval(b), load_eval(mixed)])
    assert len(rows) == 2  # shared-tag runs have nothing to choose
    assert rows[0]["validation"] == {"tag": "<think1>", "test_accuracy": 1.0, "best": True}
    assert rows[1]["coverage"]["best"] and not rows[1]["validation"]["best"]
    assert "| coverage | 1 of 2 runs | 0.250 |" in summary  # (0.5 + 0) / 2
    assert "| coverage_last_epoch | 0 of 2 runs | 0.150 |" in summary  # (0.1 + 0.2) / 2
    assert "| validation | 1 of 2 runs | 0.100 |" in summary  # (0 + 0.2) / 2
    text = report([load_eval(a), load_eval(b), load_eval(mixed)])
    assert (
        "Pass@1 rules on the test set" in text and "- ssft (a): <think1> (rule validation)" in text
    )


def test_a_missing_or_broken_evaluation_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_eval(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"has no metrics\.json"):
        load_eval(tmp_path / "empty")
    (tmp_path / "empty" / "metrics.json").write_text("{not json")
    with pytest.raises(InputError, match="not an evaluation's metrics file"):
        load_eval(tmp_path / "empty")
