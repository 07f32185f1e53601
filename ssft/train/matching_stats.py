"""Statistics of the trace -> tag assignment over training, and the Pass@1 tag.

METHOD.md lists "the tag x trace assignment statistics over training (they converge)" as a
diagnostic, and the paper evaluates Pass@1 under the tag with the largest coverage in the
training matching graph. This module keeps both, host-side only (numpy/scipy/pyarrow; no
torch, no Ray), from what the training loop already has after matching:

- the mean ``second_best_gap`` (``ssft.method.assignments``): how far the runner-up assignment
  is from the chosen one. Near 0 the matching is a coin flip; growing gaps mean tags separate.
- ``MatchingTracker``: per step, tag usage, its entropy, the fraction of questions whose
  assignment changed since their previous epoch, the mean gap; over training, the distinct
  traces each tag was matched to (coverage -> Pass@1 tag) and each question's latest
  assignment (tag x teacher / tag x mode tables, a per-trace parquet table). Its state is
  plain JSON so it is saved with checkpoints and a resumed run continues the same series.
- ``heatmap``: a tag x teacher (or mode) count plot.

Tag conventions: method arguments and return values use the 0-based tag INDEX of
``ssft.method.matching`` (``tags[j] = i`` means ``<think{i+1}>``); what people read (metric keys,
the table's ``tag`` column, ``summary()["coverage_tag"]``) is 1-based as in ``<think i>``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from ssft.method.assignments import AssignmentRecord

UNKNOWN = "unknown"  # column label for traces without a teacher / mode in a partly known set
_STATE_VERSION = 1
_TABLE_SCHEMA = pa.schema(
    [("question_id", pa.string()), ("trace_key", pa.string()), ("teacher", pa.string()),
     ("mode", pa.string()), ("tag", pa.int64()), ("epoch", pa.int64()), ("step", pa.int64())]
)  # fmt: skip


def step_metrics(records: Sequence[AssignmentRecord], num_tags: int) -> dict[str, float]:
    """The stateless metrics of one step: tag usage, its entropy (nats), mean finite gap."""
    usage = np.zeros(num_tags, dtype=np.int64)
    for r in records:
        np.add.at(usage, np.asarray(r.tags, dtype=np.int64), 1)
    out = {f"matching/tag_usage/{i + 1}": float(c) for i, c in enumerate(usage)}
    if usage.sum():
        p = usage[usage > 0] / usage.sum()
        out["matching/entropy"] = float(-(p * np.log(p)).sum())  # log N when uniform
    gaps = [r.gap for r in records if r.gap is not None and math.isfinite(r.gap)]
    if gaps:
        out["matching/gap_mean"] = float(np.mean(gaps))
    return out


@dataclass(frozen=True)
class _Seen:
    epoch: int
    step: int
    record: AssignmentRecord  # gap dropped: only the assignment is kept


class MatchingTracker:
    """Accumulates assignments over training; ``state_dict`` is JSON for checkpoints.

    Per question it keeps the latest assignment and the latest one from an EARLIER epoch
    (what ``matching/changed_fraction`` compares against, so a question seen twice in one
    epoch is still compared with its previous epoch). Coverage counts distinct
    (question_id, trace_key) pairs, so re-matching the same trace to a tag adds nothing.
    """

    def __init__(self, num_tags: int):
        if num_tags < 1:
            raise ValueError(f"num_tags={num_tags}; a tracker needs at least one tag")
        self.num_tags = num_tags
        self._latest: dict[str, _Seen] = {}
        self._previous: dict[str, _Seen] = {}  # latest assignment from an earlier epoch
        self._covered: list[set[tuple[str, str]]] = [set() for _ in range(num_tags)]
        self._usage = np.zeros(num_tags, dtype=np.int64)  # trace-assignments over training

    def update(
        self, step: int, epoch: int, records: Sequence[AssignmentRecord]
    ) -> dict[str, float]:
        """Record one optimizer step's assignments; returns that step's metrics to log."""
        ids = [r.question_id for r in records]
        if len(set(ids)) != len(ids):
            dup = sorted(q for q, c in Counter(ids).items() if c > 1)
            raise ValueError(f"step {step}: questions {dup} appear more than once")
        for r in records:
            if r.tags and (min(r.tags) < 0 or max(r.tags) >= self.num_tags):
                raise ValueError(
                    f"question {r.question_id!r}: tags {r.tags} outside [0, {self.num_tags})"
                )
            seen = self._latest.get(r.question_id)
            if seen is not None and seen.epoch > epoch:
                raise ValueError(
                    f"question {r.question_id!r} was seen in epoch {seen.epoch}, now epoch "
                    f"{epoch}: epochs must not go back (resumed from the wrong state?)"
                )
        metrics = step_metrics(records, self.num_tags)
        compared = changed = 0
        for r in records:
            seen = self._latest.get(r.question_id)
            if seen is not None and seen.epoch < epoch:
                self._previous[r.question_id] = seen
            reference = self._previous.get(r.question_id)
            if reference is not None:
                compared += 1
                changed += reference.record.mapping() != r.mapping()
            self._latest[r.question_id] = _Seen(epoch, step, replace(r, gap=None))
            for key, tag in zip(r.trace_keys, r.tags, strict=True):
                self._covered[tag].add((r.question_id, key))
                self._usage[tag] += 1
        if compared:
            metrics["matching/changed_fraction"] = changed / compared
        return metrics

    def coverage(self) -> list[int]:
        """Per tag index, how many distinct traces were ever matched to it."""
        return [len(s) for s in self._covered]

    def latest_coverage(self) -> list[int]:
        """Per tag index, traces matched to it in each question's LATEST assignment (with one
        pass over the data per epoch: the last epoch's matching, once it has settled)."""
        counts = np.zeros(self.num_tags, dtype=np.int64)
        for seen in self._latest.values():
            np.add.at(counts, np.asarray(seen.record.tags, dtype=np.int64), 1)
        return counts.tolist()

    def coverage_tag(self) -> int:
        """Tag INDEX with the largest coverage (the paper's Pass@1 tag); ties -> lowest.

        Before any update every coverage is 0, so this is 0 (``<think1>``, the tag the
        released model uses).
        """
        return int(np.argmax(self.coverage()))  # argmax returns the first maximum

    def tag_by_teacher(self) -> tuple[np.ndarray, list[str], np.ndarray] | None:
        """``(tag indices [N], teachers [T] sorted, counts int64 [N, T])`` over the latest
        assignment of each question; None when no record named a teacher."""
        return self._crosstab(lambda r: r.teachers)

    def tag_by_mode(self) -> tuple[np.ndarray, list[str], np.ndarray] | None:
        """Like ``tag_by_teacher`` for the traces' modes (strategies); None when no mode is
        known. Traces without a mode in a partly known set go to column ``"unknown"``."""
        return self._crosstab(lambda r: r.modes)

    def _crosstab(self, labels_of) -> tuple[np.ndarray, list[str], np.ndarray] | None:
        pairs = []
        for seen in self._latest.values():
            labels = labels_of(seen.record) or (None,) * len(seen.record.tags)
            pairs += zip(seen.record.tags, labels, strict=True)
        if all(label is None for _, label in pairs):
            return None
        pairs = [(tag, UNKNOWN if label is None else label) for tag, label in pairs]
        columns = sorted({label for _, label in pairs})
        where = {label: c for c, label in enumerate(columns)}
        counts = np.zeros((self.num_tags, len(columns)), dtype=np.int64)
        for tag, label in pairs:
            counts[tag, where[label]] += 1
        return np.arange(self.num_tags, dtype=np.int64), columns, counts

    def assignment_table(self) -> pa.Table:
        """One row per (question, trace) of each question's latest assignment, sorted by
        question id then trace order. ``tag`` is 1-based (``<think{tag}>``)."""
        rows: dict[str, list] = {k: [] for k in _TABLE_SCHEMA.names}
        for qid in sorted(self._latest):
            seen = self._latest[qid]
            r = seen.record
            for j, (key, tag) in enumerate(zip(r.trace_keys, r.tags, strict=True)):
                rows["question_id"].append(qid)
                rows["trace_key"].append(key)
                rows["teacher"].append(r.teachers[j] if r.teachers else None)
                rows["mode"].append(r.modes[j] if r.modes else None)
                rows["tag"].append(tag + 1)
                rows["epoch"].append(seen.epoch)
                rows["step"].append(seen.step)
        return pa.Table.from_pydict(rows, schema=_TABLE_SCHEMA)

    def summary(self) -> dict:
        """JSON for the checkpoint folder: the coverage rule's tag (1-based and index), coverage and
        usage per tag index; the tag strings are the caller's to add."""
        return {
            "num_tags": self.num_tags,
            "coverage_tag": self.coverage_tag() + 1,
            "coverage_tag_index": self.coverage_tag(),
            "coverage": self.coverage(),
            "coverage_last_epoch": self.latest_coverage(),
            "usage": self._usage.tolist(),
            "questions": len(self._latest),
        }

    def state_dict(self) -> dict:
        """Plain JSON types only; ``load_state_dict`` of it restores this tracker exactly."""

        def seen(s: _Seen) -> dict:
            r = s.record
            return {"epoch": s.epoch, "step": s.step, "tags": list(r.tags),
                    "trace_keys": list(r.trace_keys), "teachers": list(r.teachers),
                    "modes": list(r.modes)}  # fmt: skip

        return {
            "version": _STATE_VERSION,
            "num_tags": self.num_tags,
            "latest": {q: seen(s) for q, s in sorted(self._latest.items())},
            "previous": {q: seen(s) for q, s in sorted(self._previous.items())},
            "covered": [sorted([q, k] for q, k in s) for s in self._covered],
            "usage": self._usage.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != _STATE_VERSION or state["num_tags"] != self.num_tags:
            raise ValueError(
                f"state version {state.get('version')} / num_tags {state.get('num_tags')} does "
                f"not match this tracker (version {_STATE_VERSION}, num_tags {self.num_tags})"
            )

        def seen(q: str, d: dict) -> _Seen:
            record = AssignmentRecord(q, d["tags"], d["trace_keys"], d["teachers"], d["modes"])
            return _Seen(d["epoch"], d["step"], record)

        self._latest = {q: seen(q, d) for q, d in state["latest"].items()}
        self._previous = {q: seen(q, d) for q, d in state["previous"].items()}
        self._covered = [{(q, k) for q, k in s} for s in state["covered"]]
        self._usage = np.asarray(state["usage"], dtype=np.int64)


def heatmap(counts: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str):
    """A 6x4 in count heatmap (tags as rows, teachers / modes as columns), cells annotated.

    Built on an Agg canvas without pyplot, so no global figure registry fills up over a long
    run and no display is needed; the caller saves or logs the returned ``Figure``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(counts)
    if counts.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"counts {counts.shape} vs {len(row_labels)} row and {len(col_labels)} column labels"
        )
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", aspect="auto", vmin=0)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=30 if len(col_labels) > 3 else 0,
                  ha="right" if len(col_labels) > 3 else "center")  # fmt: skip
    ax.set_yticks(range(len(row_labels)), row_labels)
    dark = counts.max(initial=0) * 0.6  # white text on the dark cells
    size = 9 if counts.size <= 48 else 7
    for (i, j), value in np.ndenumerate(counts):
        ax.text(j, i, f"{value:g}", ha="center", va="center", fontsize=size,
                color="white" if value > dark else "black")  # fmt: skip
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="traces")
    fig.tight_layout()
    return fig
