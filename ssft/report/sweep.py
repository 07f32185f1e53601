"""Ray-free pieces of the N x matching-cost sweep (``workflows.sweep``): its grid and its report.

The grid is a list of *variants*, plain dicts (Tune keeps them in its experiment state)::

    {"label": "ssft-n4-mean_nll-L16", "method": "ssft", "num_tags": 4,
     "cost": "mean_nll", "prefix_tokens": 16}

SSFT runs once per (N, cost, prefix L); each baseline (``ssft.method.table.BASELINES``)
runs once, at the base config's N, with its cost fields left as they are (they do not use
them). ``apply_variant`` turns the base config into a trial's config; labels are unique within
a grid, so the report joins Tune results and MLflow child runs on them.

The report is one row per trial (``ROW_FIELDS``), written as Parquet and Markdown, and a plot of
the final training loss against N: one line per (cost, L), baselines as horizontal lines.
MLflow side: ``open_parent_run`` opens (or reopens, on a rerun) the sweep's parent run;
``summary_rows`` joins Tune's results (anything with ``.config``, ``.metrics``, ``.error``) with
the parent's child runs, closing runs that a dead or early-stopped trial left RUNNING;
``report_to_parent`` logs the table and plot, tags the parent with each failed trial and its
error (``sweep.failed``, ``sweep.failure.<label>``) and closes it (FAILED if a trial failed).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ssft.config import ExperimentConfig
from ssft.method.table import COST_KIND_NAMES
from ssft.tracking import MLflowTracker, start_run

COSTS = COST_KIND_NAMES  # ssft.method.table
ROW_FIELDS = (
    "label", "method", "num_tags", "cost", "prefix_tokens", "status", "final_loss", "steps",
    "trial_id", "mlflow_run_id", "error",
)  # fmt: skip


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


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")[:120]


def summary_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of the rows, best final loss first (failed trials last)."""
    cols = [c for c in ROW_FIELDS if c not in ("mlflow_run_id",)]
    ordered = sorted(rows, key=_sort_key)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in ordered]
    return "\n".join(lines) + "\n"


def _sort_key(row: Mapping[str, Any]) -> tuple[int, float, str]:
    loss = row.get("final_loss")
    ok = row.get("status") == "ok" and loss is not None and math.isfinite(loss)
    return (0 if ok else 1, loss if ok else math.inf, str(row.get("label")))


def write_summary(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> list[Path]:
    """``summary.parquet`` and ``summary.md`` (and ``loss_vs_n.png`` when a trial finished)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [("label", pa.string()), ("method", pa.string()), ("num_tags", pa.int64()),
         ("cost", pa.string()), ("prefix_tokens", pa.int64()), ("status", pa.string()),
         ("final_loss", pa.float64()), ("steps", pa.int64()), ("trial_id", pa.string()),
         ("mlflow_run_id", pa.string()), ("error", pa.string())]
    )  # fmt: skip
    table = pa.Table.from_pylist([{k: r.get(k) for k in ROW_FIELDS} for r in rows], schema=schema)
    paths = [out / "summary.parquet", out / "summary.md"]
    pq.write_table(table, paths[0])
    paths[1].write_text(summary_markdown(rows))
    figure = loss_vs_n_figure(rows)
    if figure is not None:
        paths.append(out / "loss_vs_n.png")
        figure.savefig(paths[-1], dpi=120, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(figure)
    return paths


def _finished(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [
        r for r in rows
        if r.get("status") == "ok" and r.get("final_loss") is not None
        and math.isfinite(r["final_loss"])
    ]  # fmt: skip


def loss_vs_n_figure(rows: Sequence[Mapping[str, Any]]):
    """Final training loss vs N: a line per (cost, L) for SSFT, a dashed line per baseline.

    None when no trial finished. Colours follow the cost kind, line styles the prefix L.
    """
    done = _finished(rows)
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
                (r["num_tags"], r["final_loss"]) for r in ssft
                if r["cost"] == cost and (r["prefix_tokens"] or 0) == prefix
            )  # fmt: skip
            if line:
                xs, ys = zip(*line, strict=True)
                label = f"ssft {cost}, L={prefix or 'all'}"
                style = {"ls": styles[pi % 4], "marker": "osD^"[pi % 4], "color": f"C{ci}"}
                ax.plot(xs, ys, label=label, **style)
    for bi, row in enumerate(r for r in done if r["method"] != "ssft"):
        ax.axhline(row["final_loss"], color=f"C{bi + 2}", ls="--", lw=1, label=row["label"])
    if ssft:
        ax.set_xticks(sorted({r["num_tags"] for r in ssft}))
    ax.set_xlabel("N (forking tokens)")
    ax.set_ylabel("final training loss (per token)")
    ax.set_title("SSFT sweep: final loss vs N")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


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


def _error_text(error: BaseException) -> str:
    """``Type: message`` of the root error, on one line, without terminal colours, cut short."""
    cause = getattr(error, "cause", None) or error  # a RayTaskError wraps the real one
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(cause).__name__}: {cause}")
    return " ".join(text.split())[:300]


def summary_rows(results, parent: MLflowTracker) -> list[dict]:
    """One summary row per trial; child runs a dead or stopped trial left open are closed."""
    try:
        children = {run.data.tags.get("sweep.label"): run for run in parent.child_runs()}
    except Exception as err:  # MLflow died during the sweep: the summary comes from Tune alone
        print(f"[sweep] MLflow unreachable ({type(err).__name__}); child runs not joined",
              flush=True)  # fmt: skip
        children = {}
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
        error = _error_text(result.error) if result.error else None
        rows.append({
            **{k: variant[k] for k in ("label", "method", "num_tags", "cost", "prefix_tokens")},
            "status": status, "final_loss": metrics.get("loss"), "steps": metrics.get("step"),
            "trial_id": metrics.get("trial_id") or (child and child.data.tags.get("trial_id")),
            "mlflow_run_id": child.info.run_id if child else None, "error": error,
        })  # fmt: skip
    return rows


def _drop_stale_failure_tags(parent: MLflowTracker, current: set[str]) -> None:
    """A rerun that fixed a trial removes the failure tag the earlier run left (best effort)."""
    try:
        parent.delete_tags(keep=lambda key: not key.startswith("sweep.failure.") or key in current)
    except Exception as err:  # MLflow down: the stale tag stays, sweep.failed is still right
        print(f"[sweep] could not clear old failure tags: {type(err).__name__}", flush=True)


def report_to_parent(parent: MLflowTracker, rows: list[dict], out_dir: Path) -> None:
    """Summary table (Parquet, Markdown) and plot on the parent; FAILED if a trial failed."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "error", "stopped")}
    parent.set_tags({f"sweep.{s}": n for s, n in counts.items()} | {"sweep.trials": len(rows)})
    failed = [r for r in rows if r["status"] == "error"]
    # Which trials failed and why, on the parent itself: visible in the runs list, searchable.
    parent.set_tags({"sweep.failed": ",".join(r["label"] for r in failed) or "none"})
    parent.set_tags({f"sweep.failure.{r['label']}": r.get("error") or "unknown" for r in failed})
    _drop_stale_failure_tags(parent, {f"sweep.failure.{r['label']}" for r in failed})
    finished = [r for r in rows if r["status"] == "ok" and r["final_loss"] is not None]
    if finished:
        best = min(finished, key=lambda r: r["final_loss"])
        parent.set_tags({"sweep.best": best["label"]})
        parent.log_metrics({"best_final_loss": best["final_loss"]})
    for path in write_summary(rows, out_dir):
        parent.log_artifact(path, "summary")
    print(f"[sweep] {counts['ok']} ok, {counts['error']} failed, {counts['stopped']} stopped "
          f"early; summary in {out_dir}\n{summary_markdown(rows)}", flush=True)  # fmt: skip
    if counts["error"]:
        print("[sweep] rerun the same command to resume the failed trials", flush=True)
    parent.finish("FAILED" if counts["error"] else "FINISHED")
