"""Tests for ssft/data/known_modes.py: the addition task with four known reasoning strategies."""

import dataclasses
import itertools
import json
import random
from pathlib import Path

import pytest
from math_verify import parse, verify

from ssft.data import known_modes, teachers
from ssft.data.known_modes import (
    STRATEGIES,
    AdditionQuestion,
    classify,
    make_questions,
    make_splits,
    parse_answer,
    render,
    sample_trace,
)

SHIPPED = Path(__file__).resolve().parents[1] / "datasets" / "known_modes"
EXAMPLES_37_58 = {
    "column": "7+8=15 c1\n3+5+1=9\n\\boxed{95}",
    "split": "30+50=80\n7+8=15\n80+15=95\n\\boxed{95}",
    "round": "58=60-2\n37+60=97\n97-2=95\n\\boxed{95}",
    "count_on": "58+30=88+7=95\n\\boxed{95}",
}


def random_pairs(digits: int, n: int, seed: int) -> list[tuple[int, int]]:
    """Any operands of `digits` digits, degenerate ones (ones digit 0) included."""
    rng = random.Random(seed)
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    return [(rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(n)]


def all_slips(a: int, b: int, strategy: str) -> list[str]:
    """Every trace one fault can give (the private fault table, exhaustively)."""
    renderer, faults = known_modes._RENDERERS[strategy]
    traces = []
    for fault in faults(a, b):
        lines, answer = renderer(a, b, fault)
        traces.append("\n".join([*lines, f"\\boxed{{{answer}}}"]))
    return traces


def test_examples_are_exact():
    for strategy, trace in EXAMPLES_37_58.items():
        assert render(37, 58, strategy) == trace
    assert tuple(EXAMPLES_37_58) == STRATEGIES


@pytest.mark.parametrize("digits", [2, 3, 4])
def test_every_strategy_adds_correctly_and_classifies(digits):
    for a, b in random_pairs(digits, 300, seed=digits):
        for strategy in STRATEGIES:
            trace = render(a, b, strategy)
            assert parse_answer(trace) == str(a + b), (a, b, strategy, trace)
            assert classify(trace) == strategy, (a, b, strategy, trace)


@pytest.mark.parametrize("digits", [2, 3])
def test_every_possible_slip_is_wrong_and_keeps_its_strategy(digits):
    for a, b in random_pairs(digits, 200, seed=10 + digits):
        for strategy in STRATEGIES:
            slips = all_slips(a, b, strategy)
            assert slips, (a, b, strategy)
            for trace in slips:
                assert parse_answer(trace) != str(a + b), (a, b, strategy, trace)
                assert classify(trace) == strategy, (a, b, strategy, trace)


def test_render_slip_public_api():
    rng = random.Random(0)
    for a, b in random_pairs(2, 100, seed=3):
        for strategy in STRATEGIES:
            trace = render(a, b, strategy, slip=True, rng=rng)
            assert parse_answer(trace) != str(a + b)
            assert classify(trace) == strategy
            # without rng the slip is still deterministic
            assert render(a, b, strategy, slip=True) == render(a, b, strategy, slip=True)


def test_column_slip_kinds_include_a_dropped_carry():
    # 37 + 58: the carry out of the ones column can be dropped -> 85
    assert "7+8=15 c1\n3+5=8\n\\boxed{85}" in all_slips(37, 58, "column")


def test_strategies_are_pairwise_distinct_and_never_named():
    for a, b in random_pairs(2, 200, seed=4):
        traces = [render(a, b, s) for s in STRATEGIES]
        assert len(set(traces)) == len(STRATEGIES)
        for trace in traces:
            assert not any(name in trace for name in STRATEGIES), trace


def test_traces_and_prompts_are_short_at_two_digits():
    longest = 0
    for a in range(10, 100):
        for b in range(10, 100):
            for strategy in STRATEGIES:
                traces = [render(a, b, strategy), *all_slips(a, b, strategy)]
                longest = max(longest, *map(len, traces))
    assert longest <= 120
    assert max(len(q.prompt) for q in make_questions(200, seed=0, digits=2)) <= 30


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "The answer is 95.",
        "\\boxed{95}",
        "37 + 58 = 95\n\\boxed{95}",
        "I think 7+8=15 c1\n3+5+1=9\n\\boxed{95}",
        "7+8=15 c1\n3+5+1=9\n\\boxed{95} done",
        "7+8=15 c1\n3+5+1=9\n\\boxed{x}",
    ],
)
def test_junk_is_unknown(text):
    assert classify(text) == "unknown"


def garbles(trace: str) -> list[str]:
    lines = trace.split("\n")
    body, boxed = lines[:-1], lines[-1]
    out = ["\n".join([boxed, *body]), "\n".join(body)]  # box moved first; box missing
    if len(body) > 1:
        out.append("\n".join([*body[::-1], boxed]))
    else:  # count_on's single line: jumps out of order
        start, rest = body[0].split("+", 1)
        jumps = rest.split("+")
        out.append("\n".join([start + "+" + "+".join(jumps[::-1]), boxed]))
    return out


def test_shuffled_or_garbled_traces_are_unknown():
    for strategy in STRATEGIES:
        for a, b in [(37, 58), (87, 58), (137, 258)]:
            for garbled in garbles(render(a, b, strategy)):
                assert classify(garbled) == "unknown", (strategy, garbled)
    # lines of two strategies mixed
    assert classify("7+8=15 c1\n37+60=97\n97-2=95\n\\boxed{95}") == "unknown"
    # a carry that appears from nowhere, a carry mark on a small sum, a wrong read-off
    assert classify("7+1=8\n3+5+1=9\n\\boxed{98}") == "unknown"
    assert classify("7+1=8 c1\n3+5+1=9\n\\boxed{98}") == "unknown"
    assert classify("7+8=15 c1\n3+5+1=9\n\\boxed{96}") == "unknown"
    # count_on must start from the larger operand
    assert classify("37+50=87+8=95\n\\boxed{95}") == "unknown"


@pytest.mark.parametrize("digits", [2, 3])
def test_every_line_permutation_is_unknown_except_same_reading_columns(digits):
    for a, b in random_pairs(digits, 300, seed=20 + digits):
        for strategy in STRATEGIES:
            for slip in (False, True):
                trace = render(a, b, strategy, slip=slip)
                for perm in itertools.permutations(trace.split("\n")):
                    shuffled = "\n".join(perm)
                    if shuffled == trace or classify(shuffled) == "unknown":
                        continue
                    # the one documented exception: columns reordered, same read-off, box last
                    assert strategy == "column" and perm[-1] == trace.split("\n")[-1], shuffled


def test_parse_answer():
    assert parse_answer("a \\boxed{1} b \\boxed{42}") == "42"
    assert parse_answer("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert parse_answer("\\boxed{7} then \\boxed{unclosed") == "7"
    assert parse_answer("no box") is None


def test_math_verify_agrees_with_gold():
    for q in make_questions(5, seed=1):
        for strategy in STRATEGIES:
            assert verify(parse(q.gold_answer), parse(render(q.a, q.b, strategy)))
            slipped = render(q.a, q.b, strategy, slip=True)
            assert not verify(parse(q.gold_answer), parse(slipped))


@pytest.mark.parametrize("digits", [2, 3])
def test_make_questions_deterministic_distinct_and_well_formed(digits):
    questions = make_questions(300, seed=7, digits=digits)
    assert questions == make_questions(300, seed=7, digits=digits)
    assert questions[:100] == make_questions(100, seed=7, digits=digits)
    assert questions != make_questions(300, seed=8, digits=digits)
    assert len({frozenset((q.a, q.b)) for q in questions}) == len(questions)
    for i, q in enumerate(questions):
        assert type(q) is AdditionQuestion
        assert q.question_id == f"add{digits}-s7-{i:05d}"
        assert q.prompt == f"{q.a} + {q.b} = ?"
        assert q.gold_answer == str(q.a + q.b)
        assert q.source == f"known_modes/addition-d{digits}"
        for x in (q.a, q.b):
            assert len(str(x)) == digits and x % 10 != 0
    assert any(q.a < q.b for q in questions) and any(q.a > q.b for q in questions)


def test_a_benchmark_question_is_the_one_question_plus_its_operands():
    assert known_modes.Question is teachers.Question  # one Question, defined in teachers.base
    assert issubclass(AdditionQuestion, teachers.Question)
    q = make_questions(1, seed=0)[0]
    plain = q.as_question()
    assert type(plain) is teachers.Question
    assert plain == teachers.Question(q.question_id, q.prompt, q.gold_answer, q.source)
    # What workers rebuild from a shipped dict (workflows: Question(**asdict(q))).
    assert teachers.Question(**dataclasses.asdict(plain)) == plain


def test_make_questions_can_exhaust_all_pairs():
    every = make_questions(81 * 82 // 2, seed=0, digits=2)
    assert len({frozenset((q.a, q.b)) for q in every}) == 81 * 82 // 2
    with pytest.raises(ValueError, match="distinct pairs"):
        make_questions(81 * 82 // 2 + 1, seed=0, digits=2)


def test_splits_disjoint_and_stable():
    train, test = make_splits(400, 100, seed=3, digits=2)
    assert (len(train), len(test)) == (400, 100)
    pairs = lambda qs: {frozenset((q.a, q.b)) for q in qs}  # noqa: E731
    assert not pairs(train) & pairs(test)  # (a, b) and (b, a) alike
    assert not {q.question_id for q in train} & {q.question_id for q in test}
    assert (train, test) == make_splits(400, 100, seed=3, digits=2)
    bigger_train, same_test = make_splits(800, 100, seed=3, digits=2)
    assert same_test == test and bigger_train[:400] == train


def test_sample_trace():
    q = make_questions(1, seed=0)[0]
    rng = random.Random(0)
    for strategy in STRATEGIES:
        assert parse_answer(sample_trace(q, strategy, error_rate=0.0, rng=rng)) == q.gold_answer
        assert parse_answer(sample_trace(q, strategy, error_rate=1.0, rng=rng)) != q.gold_answer
    slips = [sample_trace(q, "split", error_rate=0.3, rng=rng) for _ in range(1000)]
    rate = sum(parse_answer(t) != q.gold_answer for t in slips) / len(slips)
    assert 0.25 < rate < 0.35
    with pytest.raises(ValueError, match="error_rate"):
        sample_trace(q, "split", error_rate=1.5, rng=rng)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown strategy"):
        render(37, 58, "guess")
    with pytest.raises(ValueError, match=">= 10"):
        render(7, 58, "column")
    with pytest.raises(ValueError, match="digits"):
        make_questions(3, seed=0, digits=1)


def test_shipped_files_are_what_the_command_regenerates(tmp_path):
    definition = json.loads((SHIPPED / "definition.json").read_text())
    known_modes.main(
        [
            "--out", str(tmp_path),
            "--n-train", str(definition["n_train"]),
            "--n-test", str(definition["n_test"]),
            "--seed", str(definition["seed"]),
            "--digits", str(definition["digits"]),
        ]
    )  # fmt: skip
    for name in ("definition.json", "train_questions.jsonl", "test_questions.jsonl"):
        assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), name
    assert definition["strategies"] == list(STRATEGIES)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files
    rows = [
        json.loads(line)
        for line in (SHIPPED / "test_questions.jsonl").read_text().split("\n")
        if line
    ]
    assert list(rows[0]) == ["question_id", "prompt", "gold_answer", "source", "a", "b"]


def test_readme_shows_the_real_traces():
    readme = (SHIPPED / "README.md").read_text()
    for trace in EXAMPLES_37_58.values():
        assert trace in readme
    assert "python -m ssft.data.known_modes --out datasets/known_modes" in readme


def test_layout_classifier_follows_the_mode_even_with_wrong_numbers():
    rng = random.Random(0)
    for a, b in [(37, 58), (12, 34), (99, 11), (45, 67), (123, 456)]:
        for strategy in known_modes.STRATEGIES:
            for slip in (False, True):
                trace = known_modes.render(a, b, strategy, slip=slip, rng=rng)
                assert known_modes.classify_layout(trace) == strategy
    # Wrong arithmetic keeps the layout (the strict classifier rejects the broken data flow).
    broken = "7+8=15 c1\n3+5+1=9\n\\boxed{96}"
    assert (
        known_modes.classify_layout(broken) == "column"
        and known_modes.classify(broken) == "unknown"
    )
    assert known_modes.classify_layout("the answer is 95\n\\boxed{95}") == "unknown"
    assert (
        known_modes.classify_layout("7+8=15 c1\n58+30=88+7=95\n\\boxed{95}") == "unknown"
    )  # mixed
    assert known_modes.classify_layout("") == "unknown"
