from types import SimpleNamespace

import pytest

from ssft.data import known_modes
from ssft.data.teachers import Question, build_teacher


def cfg(strategy, error_rate=0.0, name=None):
    return SimpleNamespace(
        name=name or f"strategy:{strategy}",
        kind="strategy",
        strategy=strategy,
        error_rate=error_rate,
    )


QUESTIONS = [
    Question(q.question_id, q.prompt, q.gold_answer, q.source)
    for q in known_modes.make_questions(20, seed=0)
]


@pytest.mark.parametrize("strategy", known_modes.STRATEGIES)
def test_each_strategy_teacher_is_correct_and_classifiable(strategy):
    samples = build_teacher(cfg(strategy)).generate(QUESTIONS, num_samples=2, seed=0)
    assert [s.question_id for s in samples] == [q.question_id for q in QUESTIONS for _ in range(2)]
    for s, q in zip(samples, [q for q in QUESTIONS for _ in range(2)], strict=True):
        assert s.teacher == f"strategy:{strategy}"
        assert known_modes.parse_answer(s.text) == q.gold_answer
        assert known_modes.classify(s.text) == strategy


def test_error_rate_slips_deterministically():
    teacher = build_teacher(cfg("column", error_rate=0.5))
    a = teacher.generate(QUESTIONS, 4, seed=1)
    assert a == teacher.generate(QUESTIONS, 4, seed=1)
    wrong = sum(
        known_modes.parse_answer(s.text) != q.gold_answer
        for s, q in zip(a, [q for q in QUESTIONS for _ in range(4)], strict=True)
    )
    assert 20 <= wrong <= 60  # about half of 80
    assert a != teacher.generate(QUESTIONS, 4, seed=2)


def test_bad_strategy_and_bad_prompt_are_clear_errors():
    with pytest.raises(ValueError, match="not one of"):
        build_teacher(cfg("guess"))
    with pytest.raises(ValueError, match="q-x"):
        build_teacher(cfg("split")).generate([Question("q-x", "What is 2+2?", "4", "t")], 1, 0)


def test_unknown_kind_lists_kinds():
    with pytest.raises(ValueError, match="valid kinds"):
        build_teacher(SimpleNamespace(name="t", kind="oracle"))


def test_a_users_own_solver_is_a_strategy_teacher():
    from types import SimpleNamespace

    from ssft.config import ConfigError, TeacherConfig
    from ssft.data.grading import is_correct
    from ssft.data.teachers import Question, build_teacher

    cfg = TeacherConfig(name="mine", kind="strategy", strategy="tests.user_plugin:count_up")
    cfg.validate()
    teacher = build_teacher(cfg)
    questions = [Question(f"q{i}", f"{7 + i} - 3 = ?", str(4 + i), "subtraction") for i in range(8)]
    samples = teacher.generate(questions, num_samples=2, seed=0)
    assert [s.question_id for s in samples] == [q.question_id for q in questions for _ in "ab"]
    assert samples[0].text in (
        "From 3: 4 5 6 7, that is 4 steps. \\boxed{4}",
        "From 3: 4 5 6 7, that is 4 steps. \\boxed{5}",
    )
    correct = [is_correct(q.gold_answer, s.text) for q in questions for s in samples
               if s.question_id == q.question_id]  # fmt: skip
    assert 0 < sum(correct) < 16  # its own slips, seeded
    assert [s.text for s in teacher.generate(questions, 2, seed=0)] == [s.text for s in samples]
    with pytest.raises(ConfigError, match=r"error_rate=0.1: must be 0 for your own solver"):
        TeacherConfig(name="m", kind="strategy", strategy="tests.user_plugin:count_up",
                      error_rate=0.1).validate()  # fmt: skip
    with pytest.raises(ConfigError, match=r"cannot import it \(AttributeError"):
        build_teacher(SimpleNamespace(name="m", kind="strategy", strategy="tests.user_plugin:nope",
                                      error_rate=0.0))  # fmt: skip
