"""Compare evaluated runs in one table and one pass@k chart (intervals over seeds).

    python -m workflows.compare runs/eval/tiny-ssft-s0 runs/eval/tiny-mixed-s0 ... \
        [--out runs/compare/tiny] [--experiment tiny-cpu]

Writes comparison.md (README-ready: accuracy and modes tables at equal sample counts, the
Pass@1 rules audited on the test set, each run's chosen tag), comparison.json and
pass_at_k.png to --out and logs them to an MLflow run "compare-<out folder name>". Runs are
grouped by method (and N, when a method was trained at several); the pipeline groups them
by its variants and logs the same outputs on its own run (no separate compare run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssft.atomic_io import write_together
from ssft.report.comparison import (
    aggregate,
    label_runs,
    load_eval,
    pass1_rule_audit,
    pass_at_k_curves,
    report,
)
from ssft.report.eval import mlflow_key, pass_at_k_figure
from ssft.tracking import NullTracker, start_run
from workflows.cli import preflight, run_main


def compare(
    eval_dirs: list[str], out: Path, experiment: str, labels: list[str] | None = None,
    tracker: NullTracker | None = None,
) -> str:  # fmt: skip
    """Tables, chart and MLflow run for ``eval_dirs``; returns the Markdown report.

    ``labels[i]`` groups ``eval_dirs[i]`` (the pipeline's variant names); None groups by
    method. ``tracker``: an open run to log onto (the pipeline's); None opens a run
    ``compare-<out folder name>``."""
    preflight({"--out": out})
    labels = labels or [None] * len(eval_dirs)
    evals = label_runs([load_eval(d, label) for d, label in zip(eval_dirs, labels, strict=True)])
    agg = aggregate(evals)
    table = report(evals)
    fig = pass_at_k_figure(pass_at_k_curves(evals), "pass@k, mean over seeds")
    audit, _ = pass1_rule_audit(evals)
    blob = json.dumps({"runs": evals, "by_group": agg, "pass1_rules": audit}, indent=1)
    write_together({
        out / "comparison.md": lambda p: p.write_text(table, encoding="utf-8"),
        out / "comparison.json": lambda p: p.write_text(blob, encoding="utf-8"),
        out / "pass_at_k.png": lambda p: fig.savefig(p, dpi=120, format="png"),
    })  # fmt: skip
    if tracker is not None:
        _log_comparison(tracker, agg, out)
    else:
        with start_run(experiment, f"compare-{out.name}", tags={"stage": "compare"},
                       local_dir=out, offline_ok=True) as own:  # fmt: skip
            own.log_params({"eval_dirs": ",".join(map(str, eval_dirs))})
            _log_comparison(own, agg, out)
    print(table, flush=True)
    print(f"[compare] written to {out}", flush=True)
    return table


def _log_comparison(tracker: NullTracker, agg: dict, out: Path) -> None:
    """Each group's mean metrics (``<group>/<metric>``) and the written outputs."""
    for method, metrics in agg.items():
        tracker.log_metrics({mlflow_key(f"{method}/{k}"): v[0] for k, v in metrics.items()})
    for name in ("comparison.md", "comparison.json", "pass_at_k.png"):
        tracker.log_artifact(out / name, "comparison")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dirs", nargs="+", help="evaluation folders (with metrics.json)")
    parser.add_argument("--out", default="runs/compare/latest", help="where the outputs go")
    parser.add_argument("--experiment", default="ssft", help="MLflow experiment to log to")
    args = parser.parse_args(argv)
    run_main(lambda: compare(args.eval_dirs, Path(args.out), args.experiment))


if __name__ == "__main__":
    main()
