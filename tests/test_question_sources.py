"""Tests for ssft.data.question_sources: each source, caps, determinism, error messages."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

from ssft.config.checks import ConfigError
from ssft.data.question_sources import (
    KNOWN_MODES_TEST_SIZE,
    REASONING_GYM_TEST_SEED_OFFSET,
    QuestionFileError,
    champ_split,
    held_out_questions,
    load_questions,
    read_questions_jsonl,
    trace_mode_classifier,
)
from ssft.data.teachers.base import Question

DATASET = Path(__file__).resolve().parents[1] / "datasets" / "known_modes"


def cfg(**overrides):
    base = dict(
        questions="known_modes",
        questions_path=None,
        split="train",
        num_questions=8,
        question_seed=0,
        digits=2,
        reasoning_gym_task="gsm_symbolic",
    )
    return SimpleNamespace(**{**base, **overrides})


# --- known_modes -------------------------------------------------------------------------


def test_known_modes_questions():
    qs = load_questions(cfg(num_questions=5))
    assert len(qs) == 5 and all(type(q) is Question for q in qs)
    assert qs[0].question_id == f"add2-s0-{KNOWN_MODES_TEST_SIZE:05d}"  # train starts after test
    assert {q.source for q in qs} == {"known_modes/addition-d2"}
    a, b = (int(x) for x in qs[0].prompt.removesuffix(" = ?").split(" + "))
    assert qs[0].gold_answer == str(a + b)
    assert load_questions(cfg(num_questions=5)) == qs
    assert load_questions(cfg(num_questions=3)) == qs[:3]  # prefix-stable
    assert load_questions(cfg(num_questions=5, question_seed=1)) != qs
    assert load_questions(cfg(num_questions=5, digits=3))[0].source == "known_modes/addition-d3"


@pytest.mark.parametrize(("n_train", "n_test"), [(1, KNOWN_MODES_TEST_SIZE), (300, 1), (64, 64)])
def test_known_modes_train_and_test_never_overlap(n_train, n_test):
    train = load_questions(cfg(split="train", num_questions=n_train))
    test = load_questions(cfg(split="test", num_questions=n_test))
    assert (len(train), len(test)) == (n_train, n_test)

    def pairs(qs):
        return {frozenset(q.prompt.removesuffix(" = ?").split(" + ")) for q in qs}

    assert not pairs(train) & pairs(test)
    assert not {q.question_id for q in train} & {q.question_id for q in test}


def test_known_modes_matches_the_shipped_files():
    for split, n in (("train", 512), ("test", KNOWN_MODES_TEST_SIZE)):
        shipped = read_questions_jsonl(DATASET / f"{split}_questions.jsonl")
        assert load_questions(cfg(split=split, num_questions=n)) == shipped


def test_known_modes_errors():
    with pytest.raises(ValueError, match=f"num_questions <= {KNOWN_MODES_TEST_SIZE}"):
        load_questions(cfg(split="test", num_questions=KNOWN_MODES_TEST_SIZE + 1))
    with pytest.raises(ValueError, match=r"needs|must be a number"):
        load_questions(cfg(num_questions=None))
    with pytest.raises(ValueError, match=r"build\.split='dev'"):
        load_questions(cfg(split="dev"))


def test_only_known_modes_labels_trace_modes():
    from ssft.data import known_modes

    assert trace_mode_classifier("known_modes") is known_modes.classify
    for source in ("jsonl", "reasoning_gym", "champ"):
        assert trace_mode_classifier(source) is None


# --- jsonl -------------------------------------------------------------------------------


def row(i, **extra):
    fields = {"question_id": f"q{i}", "prompt": f"{i} + 1 = ?", "gold_answer": str(i + 1)}
    return {**fields, "source": "mine", **extra}


def write_lines(tmp_path, lines, name="qs.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join(x if isinstance(x, bytes) else x.encode() + b"\n" for x in lines))
    return path


def test_jsonl_reads_in_order_and_caps(tmp_path):
    path = write_lines(tmp_path, [json.dumps(row(i)) for i in range(4)] + ["   "])
    qs = load_questions(cfg(questions="jsonl", questions_path=str(path), num_questions=None))
    assert qs == [Question(f"q{i}", f"{i} + 1 = ?", str(i + 1), "mine") for i in range(4)]
    capped = load_questions(cfg(questions="jsonl", questions_path=str(path), num_questions=2))
    assert capped == qs[:2]


def test_jsonl_ignores_extra_keys_and_blank_lines(tmp_path):
    path = write_lines(tmp_path, [json.dumps(row(0, a=12, b=34)), "", json.dumps(row(1))])
    assert [q.question_id for q in read_questions_jsonl(path)] == ["q0", "q1"]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (json.dumps({k: v for k, v in row(9).items() if k != "gold_answer"}),
         r":3: field 'gold_answer' is missing"),
        ('{"question_id": "q9", "prompt": ', r":3: invalid JSON \(Expecting value at column \d+\)"),
        ("[1, 2]", r":3: a JSON list, expected an object"),
        (json.dumps(row(9, gold_answer=46)), r":3: field 'gold_answer' is 46; expected a non-emp"),
        (json.dumps(row(9, prompt="  ")), r":3: field 'prompt' is '  '; expected a non-empty"),
        (json.dumps(row(0)), r":3: field 'question_id' value 'q0' repeats line 1"),
        (b'{"question_id": "q\xff9"}\n', r":3: byte 18 is not valid UTF-8"),
        (json.dumps(row(9)).replace("}", ', "gold_answer": "8"}'),
         r":3: field 'gold_answer' appears twice in one object"),
        (json.dumps(row(9, prompt="\ud800 + 1 = ?")), r":3: field 'prompt' has a lone surrogate"),
        ("[" * 100_000 + "]" * 100_000, r":3: JSON nested too deeply"),
        (json.dumps(row(9, gold_answer=None)), r":3: field 'gold_answer' is None; expected"),
    ],
)  # fmt: skip
def test_jsonl_errors_name_file_line_and_field(tmp_path, bad_line, message):
    path = write_lines(tmp_path, [json.dumps(row(0)), json.dumps(row(1)), bad_line, "{"])
    with pytest.raises(QuestionFileError, match="^" + re.escape(str(path)) + message):
        # The cap does not hide a bad line further down.
        load_questions(cfg(questions="jsonl", questions_path=str(path), num_questions=1))


def test_jsonl_file_errors(tmp_path):
    with pytest.raises(QuestionFileError, match=r"nope\.jsonl.*does not exist"):
        read_questions_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(QuestionFileError, match=r"is not a file"):
        read_questions_jsonl(tmp_path)
    with pytest.raises(QuestionFileError, match="holds no questions"):
        read_questions_jsonl(write_lines(tmp_path, ["", "  "]))
    with pytest.raises(ConfigError, match=r"needs build\.questions_path"):
        load_questions(cfg(questions="jsonl"))


# --- reasoning_gym -----------------------------------------------------------------------


def test_reasoning_gym_questions():
    qs = load_questions(cfg(questions="reasoning_gym", num_questions=3, question_seed=7))
    assert [q.question_id for q in qs] == [f"rg-gsm_symbolic-s7-{i:05d}" for i in range(3)]
    assert {q.source for q in qs} == {"reasoning_gym/gsm_symbolic"}
    assert all(q.prompt and q.gold_answer for q in qs)
    assert load_questions(cfg(questions="reasoning_gym", num_questions=3, question_seed=7)) == qs
    two = load_questions(cfg(questions="reasoning_gym", num_questions=2, question_seed=7))
    assert two == qs[:2]


def test_reasoning_gym_test_split_uses_another_seed():
    rg = cfg(questions="reasoning_gym", num_questions=3, question_seed=7)
    train = load_questions(rg)
    test = load_questions(SimpleNamespace(**{**vars(rg), "split": "test"}))
    seed = 7 + REASONING_GYM_TEST_SEED_OFFSET
    assert [q.question_id for q in test] == [f"rg-gsm_symbolic-s{seed}-{i:05d}" for i in range(3)]
    assert not {q.prompt for q in train} & {q.prompt for q in test}


def test_reasoning_gym_unknown_task_suggests_names():
    with pytest.raises(ValueError, match=r"'gsm_symbolc' is not a reasoning-gym task; did you"):
        load_questions(cfg(questions="reasoning_gym", reasoning_gym_task="gsm_symbolc"))


# --- champ and others --------------------------------------------------------------------


def test_champ_is_split_by_problem_with_the_seed(monkeypatch):
    fake = types.ModuleType("ssft.data.teachers.replay")
    fake.champ_questions = lambda: [Question(f"champ-{i}", "p", "1", "champ") for i in range(50)]
    monkeypatch.setitem(sys.modules, "ssft.data.teachers.replay", fake)

    def ids(**kw):
        return [q.question_id for q in load_questions(cfg(questions="champ", **kw))]

    train, test = ids(num_questions=None), ids(num_questions=None, split="test")
    assert sorted(train + test, key=lambda i: int(i.split("-")[1])) == [
        f"champ-{i}" for i in range(50)
    ]  # disjoint, complete, each in dataset order
    assert train == sorted(train, key=lambda i: int(i.split("-")[1])) and 3 <= len(test) <= 20
    assert ids(num_questions=2) == train[:2]  # the cap never moves a problem across splits
    assert ids(num_questions=None, question_seed=1) != train  # the seed picks another split
    assert all(champ_split(i, 0) == "test" for i in test)


def test_a_questions_file_has_no_test_split(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": "a", "prompt": "p", "gold_answer": "1",
                                "source": "mine"}) + "\n")  # fmt: skip
    assert len(load_questions(cfg(questions="jsonl", questions_path=str(path)))) == 1
    with pytest.raises(ConfigError, match=r"split 'test' of build.questions='jsonl' .*"
                       r"eval.questions_path=<held-out.jsonl>"):  # fmt: skip
        load_questions(cfg(questions="jsonl", questions_path=str(path), split="test"))


@pytest.mark.skipif(
    importlib.util.find_spec("ssft.data.teachers.replay") is None,
    reason="ssft.data.teachers.replay (champ_questions) is not written yet",
)
def test_champ_real_questions():
    everything = load_questions(cfg(questions="champ", num_questions=None))
    assert len({q.question_id for q in everything}) == len(everything) == 215
    assert all(q.prompt and q.gold_answer for q in everything)
    assert load_questions(cfg(questions="champ", num_questions=3)) == everything[:3]
    test = load_questions(cfg(questions="champ", num_questions=None, split="test"))
    assert len(test) == 55 and not {q.question_id for q in test} & {
        q.question_id for q in everything
    }


def test_unknown_source_and_bad_cap():
    with pytest.raises(ValueError, match=r"build\.questions='gsm8k': unknown source; choose"):
        load_questions(cfg(questions="gsm8k"))
    with pytest.raises(ValueError, match=r"build\.num_questions=0"):
        load_questions(cfg(num_questions=0))


def test_held_out_questions_come_from_a_file_or_the_split_and_say_what_is_cut(tmp_path):
    from ssft.config import BuildConfig, EvalConfig

    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(
        json.dumps({"question_id": f"h{i}", "prompt": f"{i} + 1 = ?", "gold_answer": str(i + 1),
                    "source": "mine"}) + "\n" for i in range(5)
    ))  # fmt: skip
    train_file = BuildConfig(questions="jsonl", questions_path=str(tmp_path / "train.jsonl"))
    questions, available = held_out_questions(
        train_file, EvalConfig(questions_path=str(path), num_questions=3)
    )
    assert [q.question_id for q in questions] == ["h0", "h1", "h2"] and available == 5
    with pytest.raises(ConfigError, match=r"eval\.questions_path=<held-out\.jsonl>"):
        held_out_questions(train_file, EvalConfig())  # a file has no test split
    km = BuildConfig(num_questions=16)
    questions, available = held_out_questions(km, EvalConfig(num_questions=8))
    assert len(questions) == available == 8  # generated: exactly as many as asked
    assert questions == load_questions(cfg(split="test", num_questions=8))
