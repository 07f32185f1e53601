"""Comparing evaluated runs: one table, one pass@k chart, intervals over seeds.

Input: evaluation folders (each holds ``metrics.json`` with the metrics and the model's
method). Runs of the same method (different seeds) are aggregated: mean, and a 95% interval
from the t distribution over seeds (mean +- t * sd / sqrt(n); with one seed, no interval).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scipy import stats as scipy_stats

COLUMNS = (
    ("pass1", "Pass@1"),
    ("tag_accuracy_min", "min tag acc"),
    ("cons_native", "Cons@N"),
    ("cons_k", "Cons@k"),
    ("pass@1", "pass@1"),
    ("pass@max", "pass@n"),
    ("mode_purity", "mode purity"),
    ("distinct_strategies", "distinct strategies"),
)


def load_eval(path: str | Path) -> dict[str, Any]:
    """``{"label", "method", "metrics"}`` of one evaluation folder."""
    path = Path(path)
    blob = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    metrics = dict(blob["metrics"])
    ks = [int(k.split("@")[1]) for k in metrics if k.startswith("pass@")]
    if ks:
        metrics["pass@max"] = metrics[f"pass@{max(ks)}"]
        metrics["n_max"] = max(ks)
    return {"label": path.name, "method": blob["model"]["method"], "metrics": metrics}


def interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t interval; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def aggregate(evals: Sequence[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """method -> metric -> (mean, 95% half-width, number of runs)."""
    by_method: dict[str, list[dict[str, float]]] = {}
    for e in evals:
        by_method.setdefault(e["method"], []).append(e["metrics"])
    out = {}
    for method, runs in by_method.items():
        keys = set.intersection(*(set(r) for r in runs))
        out[method] = {k: (*interval([r[k] for r in runs]), len(runs)) for k in sorted(keys)}
    return out


def markdown_table(agg: dict[str, dict[str, tuple[float, float, int]]]) -> str:
    """A README-ready table: one row per method, mean +- 95% interval over seeds."""
    cols = [(k, name) for k, name in COLUMNS if any(k in m for m in agg.values())]
    lines = ["| method | runs | " + " | ".join(name for _, name in cols) + " |"]
    lines.append("|---|---|" + "---|" * len(cols))
    for method, metrics in agg.items():
        runs = next(iter(metrics.values()))[2] if metrics else 0
        cells = []
        for key, _ in cols:
            if key not in metrics:
                cells.append("–")
                continue
            mean, half, _ = metrics[key]
            cells.append(f"{mean:.3f} ± {half:.3f}" if runs > 1 else f"{mean:.3f}")
        lines.append(f"| {method} | {runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pass_at_k_curves(evals: Sequence[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """method -> k -> mean pass@k over that method's runs."""
    curves: dict[str, dict[int, list[float]]] = {}
    for e in evals:
        for key, value in e["metrics"].items():
            if key.startswith("pass@") and key != "pass@max":
                curves.setdefault(e["method"], {}).setdefault(int(key[5:]), []).append(value)
    return {m: {k: sum(v) / len(v) for k, v in ks.items()} for m, ks in curves.items()}
