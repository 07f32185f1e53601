"""Ray-free pieces of the N x matching-cost sweep (``workflows.sweep``): its grid and its report.

The grid is a list of *variants*, plain dicts (Tune keeps them in its experiment state)::

    {"label": "ssft-n4-mean_nll-L16", "method": "ssft", "num_tags": 4,
     "cost": "mean_nll", "prefix_tokens": 16}

SSFT runs once per (N, cost, prefix L); each baseline (``ssft.method.table.BASELINES``)
runs once, at the base config's N, with its cost fields left as they are (they do not use
them: its row and its run's tags say ``n/a``, ``not_applicable``). ``apply_variant`` turns the
base config into a trial's config; labels are unique within a grid, so the report joins Tune
results and MLflow child runs on them.

The report is one row per trial (``ROW_FIELDS``): its training result, and with
``sweep.evaluate`` its evaluation's figures (``EVAL_COLUMNS``), ranked by the metric
``sweep.rank_by`` names (``rank_rows``: final_loss lowest first, the others highest first; ties
by final loss, then label; rows without the metric last). Written as Parquet (grid order, with
the rank) and Markdown (best first), with plots against N: one line per (cost, L), baselines
as horizontal lines, of the final training loss and of the ranked metric.
MLflow side: ``open_parent_run`` opens (or reopens, on a rerun) the sweep's parent run;
``summary_rows`` joins Tune's results (anything with ``.config``, ``.metrics``, ``.error``) with
the parent's child runs, closing runs that a dead or early-stopped trial left RUNNING;
``report_to_parent`` logs the table and plots, tags the parent with the best trial
(``sweep.best``, metric ``best_<metric>``) and each failed trial and its error
(``sweep.failed``, ``sweep.failure.<label>``; ``sweep.eval_failed``, ``sweep.eval_failure.<label>``
for failed evaluations) and closes it (FAILED if a training failed).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ssft.config import ExperimentConfig, SweepConfig
from ssft.method.table import COST_KIND_NAMES, get_method
from ssft.tracking import MLflowTracker, start_run

COSTS = COST_KIND_NAMES  # ssft.method.table
NA = "n/a"  # a setting the trial's method does not use
# Summary column -> the workflows.evaluate metric it shows (ssft.eval.metrics.summarize keys).
EVAL_COLUMNS = {
    "pass1": "pass1",  # Pass@1 under the chosen tag
    "cons_native": "cons_native",  # Cons@N: majority vote of one sample per tag
    "mode_purity": "mode_purity",  # share of a tag's samples in its dominant mode
    "per_question_purity": "question_tag_mode_purity",  # the same, question by question
    "tag_accuracy_min": "tag_accuracy_min",  # accuracy of the worst tag
}
RANK_METRICS = SweepConfig.RANK_METRICS  # the config's choices: EVAL_COLUMNS and final_loss
LOWER_IS_BETTER = frozenset({"final_loss"})
ROW_FIELDS = (
    "rank", "label", "method", "num_tags", "cost", "prefix_tokens", "status", "final_loss",
    *EVAL_COLUMNS, "steps", "trial_id", "mlflow_run_id", "error",
)  # fmt: skip
# Rows whose training finished: they rank by final_loss (an eval_error row still has it).
TRAINED = ("ok", "eval_error")
AXIS_LABELS = {
    "final_loss": "final training loss (per token)", "pass1": "Pass@1, chosen tag",
    "cons_native": "Cons@N (one sample per tag)", "mode_purity": "mode purity",
    "per_question_purity": "per-question mode purity", "tag_accuracy_min": "worst tag accuracy",
}  # fmt: skip


def variant_label(v: Mapping[str, Any]) -> str:
    if v["method"] != "ssft":
        return f"{v['method']}-n{v['num_tags']}" if v["method"] == "random" else v["method"]
    prefix = "all" if v["prefix_tokens"] is None else v["prefix_tokens"]
    return f"ssft-n{v['num_tags']}-{v['cost']}-L{prefix}"


def grid(
    num_tags: Sequence[int],
    costs: Sequence[str],
    prefixes: Sequence[int | None],
    baselines: Sequence[str],
    base: ExperimentConfig,
) -> list[dict[str, Any]]:
    """SSFT over num_tags x costs x prefixes, then each baseline once at ``base``'s N."""
    variants = [
        {"method": "ssft", "num_tags": n, "cost": c, "prefix_tokens": p}
        for n in num_tags
        for c in costs
        for p in prefixes
    ]
    mc = base.matching
    variants += [
        {"method": b, "num_tags": base.forking.num_tags, "cost": mc.cost,
         "prefix_tokens": mc.prefix_tokens}
        for b in baselines
    ]  # fmt: skip
    return [{"label": variant_label(v), **v} for v in variants]


def apply_variant(
    base: ExperimentConfig, variant: Mapping[str, Any], name: str
) -> ExperimentConfig:
    """``base`` with the variant's method, N, cost and prefix, named ``name``; validated."""
    return dataclasses.replace(
        base,
        name=name,
        method=variant["method"],
        forking=dataclasses.replace(base.forking, num_tags=variant["num_tags"]),
        matching=dataclasses.replace(
            base.matching, cost=variant["cost"], prefix_tokens=variant["prefix_tokens"]
        ),
    ).validate()


def not_applicable(method: str) -> dict[str, str]:
    """The settings ``method`` does not use, each as ``n/a``: a method without the matching
    cost pass (``Method.needs_cost`` false: the baselines) has no cost kind and no prefix L."""
    return {} if get_method(method).needs_cost else {"cost": NA, "prefix_tokens": NA}


# --- ranking ----------------------------------------------------------------------------------


def metric_value(row: Mapping[str, Any], metric: str) -> float | None:
    """The row's ``metric`` when it can rank: a finite number, of a finished training (and,
    for an evaluation metric, a finished evaluation); else None."""
    value = row.get(metric)
    statuses = TRAINED if metric in LOWER_IS_BETTER else ("ok",)
    if row.get("status") not in statuses or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _rank_key(row: Mapping[str, Any], metric: str) -> tuple:
    """Ranked rows first (best first; ties: lower final loss, then label); then trained rows
    without the metric, then the rest, each by label."""
    value = metric_value(row, metric)
    label = str(row.get("label"))
    if value is None:
        return (1 if row.get("status") in TRAINED else 2, 0.0, 0.0, label)
    loss = metric_value(row, "final_loss")
    tie = math.inf if loss is None or metric in LOWER_IS_BETTER else loss
    return (0, value if metric in LOWER_IS_BETTER else -value, tie, label)


def rank_rows(rows: Sequence[Mapping[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Copies of ``rows`` in their order, each with ``rank``: 1 = best by ``metric``
    (``_rank_key``), None for a row without the metric (a failed training or evaluation)."""
    if metric not in RANK_METRICS:
        raise ValueError(f"unknown sweep metric {metric!r}; choices: {', '.join(RANK_METRICS)}")
    out = [dict(r) for r in rows]
    order = sorted(range(len(out)), key=lambda i: _rank_key(out[i], metric))
    for place, i in enumerate(order, 1):
        out[i]["rank"] = place if metric_value(out[i], metric) is not None else None
    return out


def best_row(rows: Sequence[Mapping[str, Any]], metric: str) -> Mapping[str, Any] | None:
    """The row ranked first by ``metric``; None when no row has it."""
    ranked = [r for r in rows if metric_value(r, metric) is not None]
    return min(ranked, key=lambda r: _rank_key(r, metric)) if ranked else None


# --- the table ----------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")[:120]


def _prefix_text(row: Mapping[str, Any]) -> str:
    """prefix_tokens as the table shows it: ``all`` (the whole trace), L, or ``n/a``."""
    value = row.get("prefix_tokens")
    return "all" if value is None else str(value)


def _metric_columns(rows: Sequence[Mapping[str, Any]], metric: str) -> list[str]:
    """The ranked metric, then the other figures any row has (final_loss always)."""
    others = [c for c in (*EVAL_COLUMNS, "final_loss") if c != metric]
    shown = [c for c in others if c == "final_loss" or any(r.get(c) is not None for r in rows)]
    return [metric, *shown]


def summary_markdown(rows: Sequence[Mapping[str, Any]], metric: str = "final_loss") -> str:
    """A Markdown table of the rows, best ``metric`` first (``rank_rows``): the ranked metric
    beside the other figures (Cons@N, purity, ...), rows without it last."""
    ranked = rank_rows(rows, metric)
    ordered = sorted(ranked, key=lambda r: _rank_key(r, metric))
    cols = ["rank", "label", "method", "num_tags", "cost", "prefix_tokens", "status",
            *_metric_columns(rows, metric), "steps", "trial_id", "error"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in ordered:
        cells = [_prefix_text(r) if c == "prefix_tokens" else r.get(c) for c in cols]
        lines.append("| " + " | ".join(_cell(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(
    rows: Sequence[Mapping[str, Any]], out_dir: str | Path, metric: str = "final_loss"
) -> list[Path]:
    """``summary.parquet`` (grid order, with each row's rank by ``metric``) and ``summary.md``;
    ``loss_vs_n.png`` when a training finished and ``<metric>_vs_n.png`` when a row has the
    ranked evaluation metric."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    types = {"rank": pa.int64(), "num_tags": pa.int64(), "steps": pa.int64(),
             "final_loss": pa.float64(), **dict.fromkeys(EVAL_COLUMNS, pa.float64())}  # fmt: skip
    schema = pa.schema([(k, types.get(k, pa.string())) for k in ROW_FIELDS])
    ranked = rank_rows(rows, metric)
    records = [{**{k: r.get(k) for k in ROW_FIELDS}, "prefix_tokens": _prefix_text(r)}
               for r in ranked]  # fmt: skip
    paths = [out / "summary.parquet", out / "summary.md"]
    pq.write_table(pa.Table.from_pylist(records, schema=schema), paths[0])
    paths[1].write_text(summary_markdown(rows, metric))
    for shown in dict.fromkeys(("final_loss", metric)):
        figure = metric_vs_n_figure(rows, shown)
        if figure is not None:
            paths.append(out / ("loss_vs_n.png" if shown == "final_loss" else f"{shown}_vs_n.png"))
            figure.savefig(paths[-1], dpi=120, bbox_inches="tight")
            import matplotlib.pyplot as plt

            plt.close(figure)
    return paths


def metric_vs_n_figure(rows: Sequence[Mapping[str, Any]], metric: str = "final_loss"):
    """``metric`` vs N: a line per (cost, L) for SSFT, a dashed line per baseline.

    None when no row has the metric. Colours follow the cost kind, line styles the prefix L.
    """
    done = [r for r in rows if metric_value(r, metric) is not None]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ssft = [r for r in done if r["method"] == "ssft"]
    prefixes = sorted({r["prefix_tokens"] or 0 for r in ssft})
    styles = ["-", "--", ":", "-."]
    for ci, cost in enumerate(COSTS):
        for pi, prefix in enumerate(prefixes):
            line = sorted(
                (r["num_tags"], r[metric]) for r in ssft
                if r["cost"] == cost and (r["prefix_tokens"] or 0) == prefix
            )  # fmt: skip
            if line:
                xs, ys = zip(*line, strict=True)
                label = f"ssft {cost}, L={prefix or 'all'}"
                style = {"ls": styles[pi % 4], "marker": "osD^"[pi % 4], "color": f"C{ci}"}
                ax.plot(xs, ys, label=label, **style)
    for bi, row in enumerate(r for r in done if r["method"] != "ssft"):
        ax.axhline(row[metric], color=f"C{bi + 2}", ls="--", lw=1, label=row["label"])
    if ssft:
        ax.set_xticks(sorted({r["num_tags"] for r in ssft}))
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    ax.set_xlabel("N (forking tokens)")
    ax.set_ylabel(f"{AXIS_LABELS[metric]} ({better} is better)")
    ax.set_title(f"SSFT sweep: {metric} vs N")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def loss_vs_n_figure(rows: Sequence[Mapping[str, Any]]):
    """Final training loss vs N (``metric_vs_n_figure``); None when no trial finished."""
    return metric_vs_n_figure(rows, "final_loss")


def open_parent_run(
    cfg: ExperimentConfig, uri: str, tags: dict, local_dir: Path | None = None
) -> tuple[MLflowTracker, bool]:
    """The sweep's parent run, reopened when this sweep ran before (finished or not).

    ``local_dir``: where calls that could not be logged are recorded (the sweep's folder).
    """
    parent = start_run(
        cfg.experiment, cfg.name, tracking_uri=uri, tags=tags, resume_key=f"sweep:{cfg.name}",
        local_dir=local_dir, reopen_finished=True,
    )  # fmt: skip
    parent.resumed = False  # whole-sweep figures, no replayed steps: a rerun's values replace
    return parent, parent.reopened


def error_text(error: BaseException) -> str:
    """``Type: message`` of the root error, on one line, without terminal colours, cut short."""
    cause = getattr(error, "cause", None) or error  # a RayTaskError wraps the real one
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(cause).__name__}: {cause}")
    return " ".join(text.split())[:300]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def summary_rows(results, parent: MLflowTracker) -> list[dict]:
    """One summary row per trial; child runs a dead or stopped trial left open are closed.

    A trial that evaluated reported ``eval_status`` ("ok" or "error"), ``eval_error`` and
    ``eval/<column>`` (``EVAL_COLUMNS``) with its last training figures (``workflows.sweep``)."""
    try:
        runs = parent.child_runs()
    except Exception as err:  # MLflow died during the sweep: the summary comes from Tune alone
        print(f"[sweep] MLflow unreachable ({type(err).__name__}); child runs not joined",
              flush=True)  # fmt: skip
        runs = []
    # The trials' runs; the others are evaluations' (sweep.evaluate), which a worker that died
    # mid-evaluation left RUNNING: every trial has ended by now.
    children = {run.data.tags["sweep.label"]: run for run in runs if "sweep.label" in run.data.tags}
    for run in runs:
        if "sweep.label" not in run.data.tags and run.info.status == "RUNNING":
            try:
                parent.close_run(run.info.run_id, "FAILED")
            except Exception as err:  # best effort
                print(f"[sweep] could not close run {run.info.run_id}: {err}")
    rows = []
    for result in results:
        variant, metrics = result.config["variant"], result.metrics or {}
        child = children.get(variant["label"])
        status = "error" if result.error else "ok"
        if child is not None and child.info.status == "RUNNING":
            status = "error" if result.error else "stopped"  # stopped = ended by ASHA
            try:
                parent.close_run(child.info.run_id, "FAILED" if result.error else "KILLED")
            except Exception as err:  # best effort: the row still says what happened
                print(f"[sweep] could not close child run {child.info.run_id}: {err}")
        error = error_text(result.error) if result.error else None
        if status == "ok" and metrics.get("eval_status") == "error":
            status, error = "eval_error", metrics.get("eval_error") or "evaluation failed"
        rows.append({
            **{k: variant[k] for k in ("label", "method", "num_tags", "cost", "prefix_tokens")},
            **not_applicable(variant["method"]),
            "status": status, "final_loss": metrics.get("loss"), "steps": metrics.get("step"),
            **{c: _number(metrics.get(f"eval/{c}")) for c in EVAL_COLUMNS},
            "trial_id": metrics.get("trial_id") or (child and child.data.tags.get("trial_id")),
            "mlflow_run_id": child.info.run_id if child else None, "error": error,
        })  # fmt: skip
    return rows


# (row status, parent tag listing those trials, tag prefix of each one's error + its label)
FAILURES = (("error", "sweep.failed", "sweep.failure."),
            ("eval_error", "sweep.eval_failed", "sweep.eval_failure."))  # fmt: skip
FAILURE_TAGS = tuple(prefix for _, _, prefix in FAILURES)


def _drop_stale_failure_tags(parent: MLflowTracker, current: set[str]) -> None:
    """A rerun that fixed a trial removes the failure tag the earlier run left (best effort)."""
    try:
        parent.delete_tags(keep=lambda key: not key.startswith(FAILURE_TAGS) or key in current)
    except Exception as err:  # MLflow down: the stale tag stays, sweep.failed is still right
        print(f"[sweep] could not clear old failure tags: {type(err).__name__}", flush=True)


def report_to_parent(
    parent: MLflowTracker, rows: list[dict], out_dir: Path, metric: str = "final_loss"
) -> None:
    """Summary table (Parquet, Markdown) and plots on the parent, the best trial by ``metric``
    (tag ``sweep.best``, metric ``best_<metric>``); FAILED if a training failed (a failed
    evaluation is tagged, and leaves the parent FINISHED: a rerun does not repeat it)."""
    statuses = ("ok", "error", "stopped", "eval_error")
    counts = {s: sum(r["status"] == s for r in rows) for s in statuses}
    parent.set_tags({f"sweep.{s}": n for s, n in counts.items()} | {"sweep.trials": len(rows)})
    # Which trials failed and why, on the parent itself: visible in the runs list, searchable.
    failure_tags = {}
    for status, listed, prefix in FAILURES:
        bad = [r for r in rows if r["status"] == status]
        parent.set_tags({listed: ",".join(r["label"] for r in bad) or "none"})
        failure_tags |= {f"{prefix}{r['label']}": r.get("error") or "unknown" for r in bad}
    parent.set_tags(failure_tags)
    _drop_stale_failure_tags(parent, set(failure_tags))
    best = best_row(rows, metric)
    parent.set_tags({"sweep.rank_by": metric, "sweep.best": best["label"] if best else "none"})
    if best is not None:
        parent.log_metrics({f"best_{metric}": best[metric]})
    for path in write_summary(rows, out_dir, metric):
        parent.log_artifact(path, "summary")
    print(f"[sweep] {counts['ok']} ok, {counts['error']} failed, {counts['stopped']} stopped "
          f"early, {counts['eval_error']} evaluation(s) failed; ranked by {metric}; summary in "
          f"{out_dir}\n{summary_markdown(rows, metric)}", flush=True)  # fmt: skip
    if counts["error"]:
        print("[sweep] rerun the same command to resume the failed trials", flush=True)
    parent.finish("FAILED" if counts["error"] else "FINISHED")
