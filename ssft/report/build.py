"""What a trace-building run records in MLflow, so a person can judge the data at a glance.

Params: the whole config (flattened) plus the YAML as an artifact, logged when the run opens
(``log_build_config``; the run then spans the build, and ``shards_done`` grows as shards
finish). At the end (``log_build_report``), metrics: counts of
questions and traces, per-teacher accuracy (correct / sampled) and yield (kept / sampled),
per-teacher questions with >= 2 / >= 4 distinct correct samples of its own, questions by the
number of distinct teachers among their traces, drop counts by reason, the distribution of
traces per question. Artifacts: the trace-set Parquet, the rejected-questions table, every
rejected sample (Parquet), the summary, and a histogram PNG of traces per
question (plus distinct modes per question on the known-modes benchmark).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ssft.config import ExperimentConfig, config_to_yaml, flatten_config
from ssft.data.trace_building import ShardStats
from ssft.data.trace_set import TraceSet
from ssft.errors import InputError


def build_metrics(sets: Sequence[TraceSet], totals: ShardStats) -> dict[str, float]:
    """Flat metric dict for a finished build."""
    metrics: dict[str, float] = {
        "questions": totals.questions,
        "questions_with_traces": totals.questions_with_traces,
        "rejected_questions": len(totals.rejected),
        "traces": totals.traces,
        "traces_per_question_mean": totals.traces / max(1, totals.questions_with_traces),
    }
    for name, sampled in totals.samples_by_teacher.items():
        metrics[f"teacher/{name}/samples"] = sampled
        metrics[f"teacher/{name}/correct"] = totals.correct_by_teacher[name]
        metrics[f"teacher/{name}/kept"] = totals.kept_by_teacher[name]
        metrics[f"teacher/{name}/accuracy"] = totals.correct_by_teacher[name] / max(1, sampled)
        metrics[f"teacher/{name}/yield"] = totals.kept_by_teacher[name] / max(1, sampled)
        metrics[f"teacher/{name}/questions_2plus"] = totals.questions_2plus_by_teacher[name]
        metrics[f"teacher/{name}/questions_4plus"] = totals.questions_4plus_by_teacher[name]
    for k, count in totals.questions_by_teacher_count.items():
        metrics[f"questions_with_teachers/{k}"] = count
    for reason, count in totals.drops.items():
        metrics[f"dropped/{reason}"] = count
    for size, count in Counter(len(s.traces) for s in sets).items():
        metrics[f"traces_per_question/{size}"] = count
    return metrics


def _histograms(sets: Sequence[TraceSet]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [len({t.mode for t in s.traces if t.mode is not None}) for s in sets]
    panels = [("traces per question", [len(s.traces) for s in sets])]
    if any(modes):
        panels.append(("distinct modes per question", modes))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        top = max(values, default=0)
        ax.hist(values, bins=[b - 0.5 for b in range(0, top + 2)], rwidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("count")
        ax.set_ylabel("questions")
    fig.tight_layout()
    return fig


def log_build_config(tracker, cfg: ExperimentConfig) -> None:
    """The build's config, as params and ``config.yaml``; logged when its run opens."""
    tracker.log_params(flatten_config(cfg))
    tracker.log_text(config_to_yaml(cfg), "config.yaml")


def log_build_report(
    tracker, sets: Sequence[TraceSet], totals: ShardStats, build_dir: Path
) -> dict[str, float]:
    """Log the metrics, plots and artifacts of a finished build; returns the metrics."""
    metrics = build_metrics(sets, totals)
    tracker.log_metrics(metrics, step=0)
    for name in (
        "trace_sets.parquet",
        "rejected_questions.json",
        "rejected_samples.parquet",
        "summary.json",
    ):
        if (build_dir / name).exists():
            tracker.log_artifact(build_dir / name, "traces")
    if sets:
        import matplotlib.pyplot as plt

        fig = _histograms(sets)
        tracker.log_figure(fig, "plots/traces_per_question.png")
        plt.close(fig)
    return metrics


class EmptyBuild(InputError):
    """No question got a trace: nothing to train on. The message says why, per teacher."""


def yield_report(totals: ShardStats, build_dir: Path) -> str:
    """Per-teacher sampled / correct / kept, and the commonest reasons questions got none."""
    lines = []
    for teacher, sampled in sorted(totals.samples_by_teacher.items()):
        correct, kept = totals.correct_by_teacher[teacher], totals.kept_by_teacher[teacher]
        lines.append(
            f"  {teacher}: {sampled} sampled, {correct} graded correct "
            f"({correct / max(1, sampled):.1%}), {kept} kept"
        )
    if not totals.samples_by_teacher:
        lines.append("  no teacher returned a sample")
    reasons = Counter(r["reason"] for r in totals.rejected).most_common(3)
    if reasons:
        lines.append("  top reasons a question got no trace: " + "; ".join(
            f"{reason!r} x{count}" for reason, count in reasons
        ))  # fmt: skip
    lines.append(f"  every sample not kept, with its parsed answer and reason: "
                 f"{build_dir / 'rejected_samples.parquet'}")  # fmt: skip
    return "\n".join(lines)
