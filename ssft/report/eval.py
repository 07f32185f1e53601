"""What an evaluation leaves behind, for a person to look at rather than read.

Files under the evaluation folder: ``samples.parquet`` (one row per question, tag and
sample: the question and its gold answer, decoding, text, parsed answer, correct, strategy,
attributed teacher), ``tag_probabilities.parquet``, ``metrics.json``. Plots (PNG): per-tag
accuracy and answer length, tag x strategy (known-modes) and tag x teacher heat maps, pass@k
curves of one or several methods on one chart. In MLflow the samples are also a table the UI
shows (``eval/samples.json``, ``sample_table``): the Parquet file cannot be previewed there.
MLflow metric keys are made safe here ("pass@4" -> "pass_at_4", "<think2>" -> "think2").

With self-selected samples (``eval.self_selected``: the model picks its tag) also
``self_selected.md``, a short Markdown section (self-selected Pass@1, Cons@N, tag entropy
against ln N, per tag p(tag), drawn share and accuracy beside the fixed-tag accuracy), and in
MLflow the per-question tag distribution as a table (``eval/tag_distribution.json``,
``tag_distribution_table``), which says per question how peaked the model's choice is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ssft.atomic_io import write_atomic
from ssft.eval import metrics as eval_metrics
from ssft.train.matching_stats import heatmap


def mlflow_key(key: str) -> str:
    return key.replace("@", "_at_").replace("<", "").replace(">", "").replace("#", "_")


def write_table_atomic(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows as Parquet; columns are every key of any row, in order of first appearance (a
    column only some rows have, e.g. self-selected rows' ``p_tag``, is null in the others)."""
    rows = list(rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = pa.table({c: [r.get(c) for r in rows] for c in columns}) if rows else pa.table({})
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def _figure(width: float = 7.0, height: float = 3.5, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def per_tag_figure(metrics: Mapping[str, float], title: str):
    """Accuracy and mean answer length for every tag (bars), the chosen tag included: the
    ``pass1/<tag>`` and ``length_mean/<tag>`` of the metrics (``eval_metrics.summarize``)."""
    tags = sorted(
        (k.removeprefix("pass1/") for k in metrics if k.startswith("pass1/")),
        key=eval_metrics.tag_sort_key,
    )
    fig, (acc, length) = _figure(ncols=2, width=9)
    acc.bar(tags, [metrics[f"pass1/{t}"] for t in tags], color="tab:blue")
    acc.set_ylim(0, 1)
    acc.set_title("accuracy per tag")
    length.bar(tags, [metrics[f"length_mean/{t}"] for t in tags], color="tab:orange")
    length.set_title("mean answer length (tokens)")
    for ax in (acc, length):
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def label_figure(rows: Sequence[Mapping[str, Any]], label: str, title: str):
    """Tag x label (strategy or attributed teacher) counts as a heat map; None if unlabelled."""
    tags, labels, counts = eval_metrics.tag_label_counts(rows, label)
    return heatmap(counts, list(tags), list(labels), title) if len(labels) else None


def sampled(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows of the sampling protocol (not the greedy answers)."""
    return [r for r in rows if r.get("decoding", "sampled") == "sampled"]


def pass_at_k_figure(curves: Mapping[str, Mapping[int, float]], title: str):
    """pass@k against k (log2 axis), one line per method or run."""
    fig, (ax,) = _figure(width=6, height=4)
    for label, values in curves.items():
        ks = sorted(values)
        ax.plot(ks, [values[k] for k in ks], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def pass_at_k_curve(metrics: Mapping[str, float]) -> dict[int, float]:
    return {int(k.split("@")[1]): v for k, v in metrics.items() if k.startswith("pass@")}


def write_eval_outputs(
    out_dir: Path, rows, prob_rows, metrics: Mapping[str, float], info: Mapping[str, Any]
) -> None:
    write_table_atomic(out_dir / "samples.parquet", rows)
    write_table_atomic(out_dir / "tag_probabilities.parquet", prob_rows)
    blob = json.dumps({"metrics": dict(metrics), "model": dict(info)}, indent=1)
    (out_dir / "metrics.json").write_text(blob, encoding="utf-8")
    section = self_selected_markdown(metrics)
    (out_dir / SELF_SELECTED_MD).unlink(missing_ok=True)  # none from an earlier evaluation
    if section:
        (out_dir / SELF_SELECTED_MD).write_text(section, encoding="utf-8")


SELF_SELECTED_MD = "self_selected.md"
TAG_DISTRIBUTION_TABLE = "eval/tag_distribution.json"


def _self_tags(metrics: Mapping[str, float]) -> list[str]:
    return sorted((k.removeprefix("self/drawn/") for k in metrics
                   if k.startswith("self/drawn/")), key=eval_metrics.tag_sort_key)  # fmt: skip


def self_selected_markdown(metrics: Mapping[str, float]) -> str:
    """The self-selected section of the report ("" without self-selected metrics): Pass@1,
    Cons@N, tag entropy against its maximum ln N, and per tag p(tag) (mean over questions),
    the share of draws, the accuracy when drawn and the fixed-tag accuracy (``pass1/<tag>``)."""
    if "self/pass1" not in metrics:
        return ""

    def cell(key: str) -> str:
        return f"{metrics[key]:.3f}" if key in metrics else "–"

    lines = ["## Self-selected tags", "",
             "The model draws its own tag from p(tag | prompt) renormalised over the tags.", "",
             f"- Pass@1: {cell('self/pass1')} (fixed tag: {cell('pass1')})",
             f"- Cons@N (vote of N draws): {cell('self/cons_k')}; over all draws: "
             f"{cell('self/cons_all')}"]  # fmt: skip
    if "self/tag_entropy" in metrics:
        lines.append(f"- tag entropy: {cell('self/tag_entropy')} nats of at most "
                     f"{cell('self/tag_entropy_max')} (ln N)")  # fmt: skip
    lines += ["", "| tag | p(tag) mean | drawn | accuracy when drawn | fixed-tag accuracy |",
              "|---|---|---|---|---|"]  # fmt: skip
    for t in _self_tags(metrics):
        lines.append(f"| {t} | {cell(f'self/p/{t}')} | {cell(f'self/drawn/{t}')} | "
                     f"{cell(f'self/pass1/{t}')} | {cell(f'pass1/{t}')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def self_selected_line(metrics: Mapping[str, float]) -> str | None:
    """The console summary of the self-selected figures, None without them."""
    if "self/pass1" not in metrics:
        return None
    line = f"self-selected pass1 {metrics['self/pass1']:.3f} | cons_N {metrics['self/cons_k']:.3f}"
    if "self/tag_entropy" in metrics:
        line += (f" | tag entropy {metrics['self/tag_entropy']:.3f} of "
                 f"{metrics['self/tag_entropy_max']:.3f} nats")  # fmt: skip
    return line


def tag_distribution_table(
    prob_rows: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> dict[str, list]:
    """Per question, for ``tracker.log_table``: question_id, ``p/<tag>`` (renormalised over the
    tags) for every tag, entropy (nats), ``drawn/<tag>`` (how many of its self-selected
    samples drew the tag) and ``self_accuracy`` (their share correct; None without any)."""
    dist: dict[str, dict[str, float]] = {}
    for r in prob_rows:
        dist.setdefault(r["question_id"], {})[r["tag"]] = r["p_among_tags"]
    tags = sorted({t for d in dist.values() for t in d}, key=eval_metrics.tag_sort_key)
    chosen: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("decoding") == "self_selected":
            chosen.setdefault(r["question_id"], []).append(r)
    table: dict[str, list] = {"question_id": list(dist)}
    for t in tags:
        table[f"p/{t}"] = [dist[q].get(t) for q in dist]
    table["entropy"] = [eval_metrics.tag_entropy(dist[q].values()) for q in dist]
    for t in tags:
        table[f"drawn/{t}"] = [sum(r["tag"] == t for r in chosen.get(q, [])) for q in dist]
    table["self_accuracy"] = [
        sum(bool(r["correct"]) for r in chosen[q]) / len(chosen[q]) if chosen.get(q) else None
        for q in dist
    ]
    return table


SAMPLE_TABLE = "eval/samples.json"
# The sample table's columns, in this order. The labels (strategy: a mode classifier's;
# teacher: the model folder's teacher profiles') only when some row has one.
SAMPLE_TABLE_COLUMNS = (
    "question_id", "question", "gold_answer", "decoding", "tag", "sample_index", "text",
    "parsed_answer", "correct", "strategy", "teacher", "num_tokens",
)  # fmt: skip
_LABEL_COLUMNS = ("strategy", "teacher")


def sample_table(rows: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """The samples as columns for ``tracker.log_table``: question id and text, gold answer,
    decoding, tag, sample index, the sample's text, parsed answer, correct, strategy (mode),
    attributed teacher, length in tokens (and after the tag, for self-selected samples,
    ``p_tag``: the drawn tag's probability); long texts are cut by the tracker."""
    columns = [c for c in SAMPLE_TABLE_COLUMNS
               if c not in _LABEL_COLUMNS or any(r.get(c) is not None for r in rows)]  # fmt: skip
    if any(r.get("p_tag") is not None for r in rows):  # self-selected: the drawn tag's p
        columns.insert(columns.index("tag") + 1, "p_tag")
    return {c: [r.get(c) for r in rows] for c in columns}


def log_eval(
    tracker, out_dir: Path, rows, metrics: Mapping[str, float], label: str, prob_rows=None
) -> None:
    """Metrics, output files, the sample table and the plots; with self-selected rows also
    their Markdown section and, given ``prob_rows``, the per-question tag distribution."""
    tracker.log_metrics({mlflow_key(k): v for k, v in metrics.items()}, step=0)
    for name in ("samples.parquet", "tag_probabilities.parquet", "metrics.json"):
        tracker.log_artifact(out_dir / name, "eval")
    tracker.log_table(sample_table(rows), SAMPLE_TABLE)  # what the UI can show of the samples
    if section := self_selected_markdown(metrics):
        tracker.log_text(section, f"eval/{SELF_SELECTED_MD}")
        if prob_rows:
            tracker.log_table(tag_distribution_table(prob_rows, rows), TAG_DISTRIBUTION_TABLE)
    tracker.log_figure(per_tag_figure(metrics, label), "plots/per_tag.png")
    for column in eval_metrics.LABEL_KEYS:  # tag x strategy (known-modes), tag x teacher
        fig = label_figure(sampled(rows), column, f"{label}: tag x {column}")
        if fig is not None:
            tracker.log_figure(fig, f"plots/tag_by_{column}.png")
    tracker.log_figure(
        pass_at_k_figure({label: pass_at_k_curve(metrics)}, label), "plots/pass_at_k.png"
    )
