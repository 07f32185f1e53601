"""Compare evaluated runs in one table and one pass@k chart (intervals over seeds).

    python -m workflows.compare runs/eval/tiny-ssft-s0 runs/eval/tiny-mixed-s0 ... \
        [--out runs/compare/tiny] [--experiment tiny-cpu]

Writes comparison.md (README-ready), comparison.json and pass_at_k.png to --out and logs
them to an MLflow run "compare-<out folder name>".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssft.atomic_io import write_together
from ssft.comparison import aggregate, load_eval, markdown_table, pass_at_k_curves
from ssft.eval_report import mlflow_key, pass_at_k_figure
from ssft.tracking import start_run
from workflows.cli import preflight, run_main


def compare(eval_dirs: list[str], out: Path, experiment: str) -> str:
    """Table, chart and MLflow run for ``eval_dirs``; returns the Markdown table."""
    preflight({"--out": out})
    evals = [load_eval(d) for d in eval_dirs]
    agg = aggregate(evals)
    table = markdown_table(agg)
    fig = pass_at_k_figure(pass_at_k_curves(evals), "pass@k, mean over seeds")
    blob = json.dumps({"runs": evals, "by_method": agg}, indent=1)
    write_together({
        out / "comparison.md": lambda p: p.write_text(table, encoding="utf-8"),
        out / "comparison.json": lambda p: p.write_text(blob, encoding="utf-8"),
        out / "pass_at_k.png": lambda p: fig.savefig(p, dpi=120, format="png"),
    })  # fmt: skip
    with start_run(experiment, f"compare-{out.name}", tags={"stage": "compare"},
                   local_dir=out, offline_ok=True) as tracker:  # fmt: skip
        for method, metrics in agg.items():
            tracker.log_metrics({mlflow_key(f"{method}/{k}"): v[0] for k, v in metrics.items()})
        for name in ("comparison.md", "comparison.json", "pass_at_k.png"):
            tracker.log_artifact(out / name, "comparison")
    print(table, flush=True)
    print(f"[compare] written to {out}", flush=True)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dirs", nargs="+", help="evaluation folders (with metrics.json)")
    parser.add_argument("--out", default="runs/compare/latest", help="where the outputs go")
    parser.add_argument("--experiment", default="ssft", help="MLflow experiment to log to")
    args = parser.parse_args(argv)
    run_main(lambda: compare(args.eval_dirs, Path(args.out), args.experiment))


if __name__ == "__main__":
    main()
