import pytest

from ssft.data import tokenize
from ssft.data.tokenize import tokenize_trace_sets
from ssft.data.trace_selection import most_distinct
from ssft.data.trace_set import Trace, TraceSet
from ssft.errors import ConfigError, InputError
from ssft.method.sequences import end_of_turn_id, tokenize_trace


def trace(k, text, correct=True, teacher="t"):
    return Trace(trace_id=f"t{k}", teacher=teacher, text=text, parsed_answer="1", correct=correct)


def trace_set(qid, texts, correct=None):
    correct = correct or [True] * len(texts)
    return TraceSet(
        question_id=qid,
        prompt="1 + 0 = ?",
        gold_answer="1",
        source="test",
        traces=tuple(trace(k, t, c) for k, (t, c) in enumerate(zip(texts, correct, strict=True))),
    )


def test_drops_incorrect_and_counts(tokenizer):
    sets = [
        trace_set("a", ["1+0=1", "1+0=2", "0+1=1"], [True, False, True]),
        trace_set("b", ["x"], [False]),
    ]
    questions, stats = tokenize_trace_sets(sets, tokenizer, num_tags=4)
    assert [q.question_id for q in questions] == ["a"]
    assert questions[0].trace_keys == ("t0", "t2")
    assert stats.dropped == {"incorrect": 2, "questions_without_traces": 1}
    assert (stats.traces_in, stats.traces_kept, stats.questions_in, stats.questions_kept) == (
        4,
        2,
        2,
        1,
    )
    assert "kept 2/4 traces of 1/2 questions" in stats.summary()


def test_overlong_drop_or_error(tokenizer):
    sets = [trace_set("a", ["1" * 10, "1" * 200])]
    questions, stats = tokenize_trace_sets(sets, tokenizer, num_tags=4, max_seq_len=64)
    assert questions[0].num_traces == 1 and stats.dropped["overlong"] == 1
    with pytest.raises(InputError) as err:
        tokenize_trace_sets(
            sets, tokenizer, num_tags=4, max_seq_len=64, overlong="error", source_name="tr.parquet"
        )
    msg = str(err.value)
    assert (
        "'tr.parquet', row 0 (question_id='a')" in msg
        and "traces[1].text" in msg
        and "max_seq_len=64" in msg
    )


def test_more_traces_than_tags_errors_by_default(tokenizer):
    sets = [trace_set("a", ["1"]), trace_set("b", ["1+0=1", "0+1=1", "1-0=1"])]
    with pytest.raises(InputError) as err:
        tokenize_trace_sets(sets, tokenizer, num_tags=2, source_name="x.parquet")
    msg = str(err.value)
    assert (
        "row 1 (question_id='b')" in msg
        and "3 usable traces" in msg
        and "forking.num_tags=2" in msg
    )
    # Shared-tag methods may train on any number of traces.
    questions, _ = tokenize_trace_sets(sets, tokenizer, num_tags=2, injective=False)
    assert questions[1].num_traces == 3


def test_keep_most_distinct_drops_near_duplicates_and_counts(tokenizer):
    texts = ["12+34=46", "12+34=46.", "34+12=46", "10+30=40, 2+4=6, 46"]
    questions, stats = tokenize_trace_sets(
        [trace_set("a", texts)], tokenizer, num_tags=3, too_many_traces="keep_most_distinct"
    )
    assert questions[0].trace_keys == ("t0", "t2", "t3")  # the near-copy t1 goes
    assert stats.dropped == {"too_many_traces": 1}


def test_cap_applies_to_every_method(tokenizer):
    questions, stats = tokenize_trace_sets(
        [trace_set("a", ["1", "22", "333"])],
        tokenizer,
        num_tags=4,
        injective=False,
        max_traces_per_question=1,
    )
    assert questions[0].num_traces == 1 and stats.dropped == {"over_cap": 2}


def test_most_distinct_is_deterministic():
    traces = [[1, 2, 3, 4], [1, 2, 3, 4], [9, 8, 7, 6], [1, 2, 3, 5]]
    assert most_distinct(traces, 2) == [0, 2]
    assert most_distinct(traces, 9) == [0, 1, 2, 3]


@pytest.mark.parametrize("keep", [1, 2, 3, 5])
def test_cap_and_too_many_traces_keep_trace_selection_most_distinct(tokenizer, keep):
    """Both cuts are ``ssft.data.trace_selection.most_distinct`` over the token ids."""
    assert tokenize.most_distinct is most_distinct  # one function, no copy here
    texts = ["12+34=46", "12+34=46.", "34+12=46", "10+30=40, 2+4=6, 46", "46", "12+34=46!"]
    eot = end_of_turn_id(tokenizer)
    expected = tuple(f"t{k}" for k in most_distinct([tokenize_trace(tokenizer, t, eot)
                                                     for t in texts], keep))  # fmt: skip
    capped, _ = tokenize_trace_sets(
        [trace_set("a", texts)], tokenizer, num_tags=9, max_traces_per_question=keep
    )
    cut, stats = tokenize_trace_sets(
        [trace_set("a", texts)], tokenizer, num_tags=keep, too_many_traces="keep_most_distinct"
    )
    assert capped[0].trace_keys == cut[0].trace_keys == expected
    assert len(expected) == keep and stats.dropped == {"too_many_traces": len(texts) - keep}


def test_questions_without_a_correct_trace_are_dropped_and_counted(tokenizer):
    """No correct trace, or every correct one overlong: dropped, counted, never an empty set."""
    sets = [
        trace_set("none-correct", ["1+0=2", "1+0=3"], [False, False]),
        trace_set("no-traces", []),
        trace_set("only-overlong", ["1" * 300]),
        trace_set("fine", ["1+0=1"]),
    ]
    questions, stats = tokenize_trace_sets(sets, tokenizer, num_tags=2, max_seq_len=64)
    assert [q.question_id for q in questions] == ["fine"]
    assert stats.dropped == {"incorrect": 2, "overlong": 1, "questions_without_traces": 3}
    assert "kept 1/4 traces of 1/4 questions" in stats.summary()


def test_every_trace_longer_than_the_context_errors_with_overlong_error(tokenizer):
    """The first overlong trace stops the run; nothing is silently cut to fit."""
    sets = [trace_set("a", ["1+0=1"]), trace_set("b", ["1+0=1", "x" * 500])]
    with pytest.raises(InputError) as err:
        tokenize_trace_sets(
            sets, tokenizer, num_tags=4, max_seq_len=100, overlong="error", source_name="t.pq"
        )
    assert "'t.pq', row 1 (question_id='b')" in str(err.value)
    assert "'traces[1].text'" in str(err.value) and "data.overlong=drop" in str(err.value)


@pytest.mark.parametrize(
    ("option", "value"), [("too_many_traces", "drop"), ("overlong", "truncate")]
)
def test_unknown_policy_names_the_setting(tokenizer, option, value):
    with pytest.raises(ConfigError, match=f"data.{option}={value!r}"):
        tokenize_trace_sets([trace_set("a", ["1"])], tokenizer, num_tags=2, **{option: value})


def test_copies_of_one_trace_under_distinct_ids_are_dropped_and_counted(tokenizer):
    """Whitespace is collapsed before comparing; case is kept (x and X may differ)."""
    sets = [trace_set("q", ["1 + 0 = 1", "1  +  0 =\n1", "1 + 0 = 1", "X = 1", "x = 1"])]
    questions, stats = tokenize_trace_sets(sets, tokenizer, num_tags=4)
    assert questions[0].trace_keys == ("t0", "t3", "t4")
    assert stats.dropped == {"duplicate": 2} and stats.traces_kept == 3
    assert "duplicate=2" in stats.summary()
