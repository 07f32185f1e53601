"""Assignment statistics: second-best gap vs brute force, tracker metrics, state, plots."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from ssft.method.assignments import AssignmentRecord, second_best_gap
from ssft.train.matching_stats import (
    MatchingTracker,
    heatmap,
    step_metrics,
)


def brute_force_gap(cost: np.ndarray) -> float:
    """Second-smallest minus smallest total over every injective map trace -> tag."""
    n, m = cost.shape
    totals = sorted(
        sum(cost[tag, j] for j, tag in enumerate(perm))
        for perm in itertools.permutations(range(n), m)
    )
    return totals[1] - totals[0] if len(totals) > 1 else math.inf


def optimum(cost: np.ndarray) -> np.ndarray:
    return linear_sum_assignment(cost.T)[1]


@pytest.mark.parametrize("shape", [(3, 1), (3, 2), (4, 4), (5, 3), (6, 4)])
def test_gap_matches_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        cost = rng.normal(size=shape)
        assert second_best_gap(cost, optimum(cost)) == pytest.approx(brute_force_gap(cost))
        # Small integers make ties common; sums are exact, so the gap must be exactly 0 there.
        cost = rng.integers(0, 3, size=shape).astype(float)
        assert second_best_gap(cost, optimum(cost)) == brute_force_gap(cost)


def test_gap_edge_cases():
    assert second_best_gap(np.array([[2.0]]), np.array([0])) == math.inf
    assert second_best_gap(np.zeros((3, 0)), np.zeros(0, dtype=np.int64)) == math.inf
    assert second_best_gap(np.ones((4, 4)), np.arange(4)) == 0.0
    assert second_best_gap(np.array([[1.0], [3.5]]), np.array([0])) == 2.5
    with pytest.raises(ValueError, match="not optimal"):
        second_best_gap(np.array([[1.0], [3.5]]), np.array([1]))
    with pytest.raises(ValueError, match="injective"):
        second_best_gap(np.zeros((3, 2)), np.array([1, 1]))
    with pytest.raises(ValueError, match="M <= N"):
        second_best_gap(np.zeros((1, 2)), np.array([0, 0]))


def rec(qid, tags, keys, teachers=(), modes=(), gap=None) -> AssignmentRecord:
    return AssignmentRecord(qid, np.asarray(tags, dtype=np.int64), keys, teachers, modes, gap)


# (step, epoch, records): N = 3 tags, four questions over two epochs.
STEPS = [
    (0, 0, [rec("A", [0, 1], ["a1", "a2"], ["T1", "T2"], ["x", "y"], gap=0.5),
            rec("B", [0, 1, 2], ["b1", "b2", "b3"], ["T1", "T2", "T2"], ["x", None, "y"])]),
    (1, 0, [rec("C", [2, 0, 1], ["c1", "c2", "c3"], ["T1", "T1", "T2"], gap=math.inf)]),
    # A swaps its tags; B lists its traces in another order but keeps the same assignment.
    (2, 1, [rec("A", [1, 0], ["a1", "a2"], ["T1", "T2"], ["x", "y"], gap=1.0),
            rec("B", [2, 0, 1], ["b3", "b1", "b2"], ["T2", "T1", "T2"], ["y", "x", None])]),
    # A again in epoch 1: compared with epoch 0 (unchanged). D is new: not compared.
    (3, 1, [rec("A", [0, 1], ["a1", "a2"], ["T1", "T2"], ["x", "y"]),
            rec("D", [2], ["d1"], ["T3"])]),
]  # fmt: skip


def run_steps(tracker, steps):
    return [tracker.update(step, epoch, records) for step, epoch, records in steps]


def test_step_metrics_exact():
    metrics = run_steps(MatchingTracker(3), STEPS)
    usage = [[m[f"matching/tag_usage/{i}"] for i in (1, 2, 3)] for m in metrics]
    assert usage == [[2, 2, 1], [1, 1, 1], [2, 2, 1], [1, 1, 1]]
    h = -(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2))
    assert metrics[0]["matching/entropy"] == pytest.approx(h)
    assert metrics[1]["matching/entropy"] == pytest.approx(math.log(3))  # uniform: log N
    assert metrics[0]["matching/gap_mean"] == 0.5
    assert "matching/gap_mean" not in metrics[1]  # only an infinite gap
    assert metrics[2]["matching/gap_mean"] == 1.0
    assert "matching/changed_fraction" not in metrics[0]
    assert "matching/changed_fraction" not in metrics[1]
    assert metrics[2]["matching/changed_fraction"] == 0.5
    assert metrics[3]["matching/changed_fraction"] == 0.0
    assert step_metrics([], 2) == {"matching/tag_usage/1": 0.0, "matching/tag_usage/2": 0.0}


def test_coverage_usage_and_pass1_tie_break():
    tracker = MatchingTracker(3)
    run_steps(tracker, STEPS)
    assert tracker.coverage() == [4, 4, 3]
    assert tracker.coverage_tag() == 0  # tags 0 and 1 tie: lowest index
    summary = tracker.summary()
    assert summary == {
        "num_tags": 3,
        "coverage_tag": 1,
        "coverage_tag_index": 0,
        "coverage": [4, 4, 3],
        # Each question's latest assignment: A [0,1], B [2,0,1], C [2,0,1], D [2].
        "coverage_last_epoch": [3, 3, 3],
        "usage": [6, 6, 4],
        "questions": 4,
    }
    json.dumps(summary)

    tracker = MatchingTracker(3)
    assert tracker.coverage_tag() == 0  # nothing seen yet
    # The same trace matched to tag 0 many times counts once; tag 1 has two distinct traces.
    for step in range(5):
        tracker.update(step, step, [rec("q", [0], ["t"]), rec(f"r{step % 2}", [1], ["t"])])
    assert tracker.coverage() == [1, 2, 0]
    assert tracker.coverage_tag() == 1


def test_tag_by_teacher_and_mode():
    tracker = MatchingTracker(3)
    run_steps(tracker, STEPS)
    tags, teachers, counts = tracker.tag_by_teacher()
    assert tags.tolist() == [0, 1, 2] and teachers == ["T1", "T2", "T3"]
    assert counts.tolist() == [[3, 0, 0], [0, 3, 0], [1, 1, 1]]
    tags, modes, counts = tracker.tag_by_mode()
    assert modes == ["unknown", "x", "y"]
    assert counts.tolist() == [[1, 2, 0], [2, 0, 1], [2, 0, 1]]

    plain = MatchingTracker(2)
    plain.update(0, 0, [rec("q", [0, 1], ["t1", "t2"])])
    assert plain.tag_by_mode() is None and plain.tag_by_teacher() is None


def test_state_dict_round_trip():
    tracker = MatchingTracker(3)
    run_steps(tracker, STEPS[:3])
    state = json.loads(json.dumps(tracker.state_dict()))
    resumed = MatchingTracker(3)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert run_steps(resumed, STEPS[3:]) == run_steps(tracker, STEPS[3:])
    assert resumed.state_dict() == tracker.state_dict()
    assert resumed.assignment_table().equals(tracker.assignment_table())
    with pytest.raises(ValueError, match="num_tags"):
        MatchingTracker(4).load_state_dict(state)


def test_assignment_table():
    tracker = MatchingTracker(3)
    run_steps(tracker, STEPS)
    table = tracker.assignment_table()
    assert table.column_names == [
        "question_id", "trace_key", "teacher", "mode", "tag", "epoch", "step"
    ]  # fmt: skip
    rows = table.to_pylist()
    assert [(r["question_id"], r["trace_key"], r["tag"]) for r in rows] == [
        ("A", "a1", 1), ("A", "a2", 2),
        ("B", "b3", 3), ("B", "b1", 1), ("B", "b2", 2),
        ("C", "c1", 3), ("C", "c2", 1), ("C", "c3", 2),
        ("D", "d1", 3),
    ]  # fmt: skip
    assert rows[2] == {"question_id": "B", "trace_key": "b3", "teacher": "T2", "mode": "y",
                       "tag": 3, "epoch": 1, "step": 2}  # fmt: skip
    assert rows[5]["mode"] is None and rows[5]["epoch"] == 0 and rows[5]["step"] == 1
    assert MatchingTracker(2).assignment_table().num_rows == 0


def test_update_rejects_bad_input():
    tracker = MatchingTracker(2)
    with pytest.raises(ValueError, match="outside"):
        tracker.update(0, 0, [rec("q", [2], ["t"])])
    with pytest.raises(ValueError, match="more than once"):
        tracker.update(0, 0, [rec("q", [0], ["t"]), rec("q", [1], ["u"])])
    tracker.update(0, 3, [rec("q", [0], ["t"])])
    with pytest.raises(ValueError, match="go back"):
        tracker.update(1, 2, [rec("q", [0], ["t"])])
    with pytest.raises(ValueError, match="trace_keys"):
        rec("q", [0, 1], ["t"])


def test_heatmap_saves_png(tmp_path):
    from matplotlib.figure import Figure

    counts = np.array([[3, 0, 0], [0, 3, 0], [1, 1, 1]])
    fig = heatmap(counts, ["<think1>", "<think2>", "<think3>"], ["T1", "T2", "T3"], "tag x teacher")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # the heatmap and its colorbar
    assert [t.get_text() for t in fig.axes[0].texts] == [
        "3",
        "0",
        "0",
        "0",
        "3",
        "0",
        "1",
        "1",
        "1",
    ]
    path = tmp_path / "heatmap.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="labels"):
        heatmap(counts, ["<think1>"], ["T1", "T2", "T3"], "bad")
