"""Comparing evaluated runs: tables and one pass@k chart, intervals over seeds.

Input: evaluation folders (each holds ``metrics.json`` with the metrics and the model's
``ssft_tags.json`` summary). Runs are grouped (by the pipeline's variant name, else by
method, with N when methods are trained at several N) and aggregated per group: mean, and
a 95% interval from the t distribution over seeds (mean +- t * sd / sqrt(n); one seed, no
interval).

Methods are compared at EQUAL sample counts: pass@k and Cons@k are shown at the largest k
that every run drew (N = 6 tags x 4 samples gives 24 samples, N = 4 gives 16: both are
shown at k = 16, pass@16 of the 24 samples through the unbiased estimator). Columns say
which figure they are, so "Pass@1 under the chosen tag" and "mean accuracy over tags" are
not confused.

The Pass@1 rules (``ssft.eval.tag_selection``) are audited on the test set: for every run, the
tag each rule picked, that tag's test accuracy, and whether it was the run's best tag.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scipy import stats as scipy_stats

from ssft.errors import InputError
from ssft.method.table import METHODS, uses_shared_tag

# (metric key, column title); "{k}" is filled with the common sample count.
ACCURACY_COLUMNS = (
    ("pass1", "Pass@1 (chosen tag)"),
    ("pass1_coverage", "Pass@1, coverage tag (paper)"),
    ("tag_accuracy_mean", "accuracy, mean over tags"),
    ("tag_accuracy_min", "accuracy, worst tag"),
    ("tag_accuracy_min_usable", "worst usable tag"),
    ("cons_native", "Cons@N (1 per tag)"),
    ("cons_native_usable", "Cons@N usable tags"),
    ("cons@{k}", "Cons@{k}"),
    ("pass@{k}", "pass@{k}"),
    ("greedy_accuracy_mean", "greedy accuracy, mean over tags"),
)
MODE_COLUMNS = (
    ("mode_purity", "mode purity"),
    ("question_tag_mode_purity", "per-question purity"),
    ("distinct_strategies", "distinct strategies (T=0.7)"),
    ("distinct_strategies_greedy", "distinct strategies (greedy)"),
    ("teacher_purity", "teacher purity"),
    ("question_tag_teacher_purity", "per-question teacher purity"),
    ("distinct_teachers", "distinct teachers (T=0.7)"),
    ("distinct_teachers_greedy", "distinct teachers (greedy)"),
)

# With eval.self_selected (the model draws its own tag): beside the fixed-tag figures.
SELF_SELECTED_COLUMNS = (
    ("self/pass1", "Pass@1, self-selected tag"),
    ("pass1", "Pass@1, chosen tag"),
    ("pass1_best_tag", "Pass@1, best tag on the test set"),
    ("pass1_coverage", "Pass@1, coverage tag"),
    ("tag_accuracy_mean", "mean over tags"),
    ("self/cons_k", "Cons@N, self-selected"),
    ("self/tag_entropy", "tag entropy (nats)"),
)


def load_eval(path: str | Path, label: str | None = None) -> dict[str, Any]:
    """``{"label", "method", "metrics", "model"}`` of one evaluation folder.

    A folder that does not exist, or whose ``metrics.json`` is missing or not JSON, is an
    ``InputError`` naming the file."""
    path = Path(path)
    file = path / "metrics.json"
    if not file.is_file():
        what = "does not exist" if not path.exists() else "has no metrics.json"
        raise InputError(f"evaluation folder {str(path)!r} {what}: give folders written by "
                         "workflows.evaluate (they hold metrics.json).")  # fmt: skip
    try:
        blob = json.loads(file.read_text(encoding="utf-8"))
        metrics, model = dict(blob["metrics"]), dict(blob["model"])
        method = model["method"]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{str(file)!r} is not an evaluation's metrics file ({err}); rerun "
                         "workflows.evaluate for that folder.") from None  # fmt: skip
    # Pass@1 under each rule's tag (``pass1_<rule>``), so the paper's coverage heuristic gets
    # its own column; a shared-tag model has one tag, which every rule picks.
    candidates = (model.get("tag_selection") or {}).get("candidates", {})
    if method in METHODS and METHODS[method].after_ssft:  # no matching: no coverage to rank by
        candidates = {r: t for r, t in candidates.items() if not r.startswith("coverage")}
    for rule, tag in candidates.items():
        if f"pass1/{tag}" in metrics:
            metrics[f"pass1_{rule}"] = metrics[f"pass1/{tag}"]
    per_tag = [v for k, v in metrics.items() if k.startswith("pass1/") and k.count("/") == 1]
    if per_tag:  # the oracle: the tag that answers best on these very questions
        metrics["pass1_best_tag"] = max(per_tag)
    return {"label": label, "dir": str(path), "method": method, "metrics": metrics, "model": model}


def label_runs(evals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every run without a label its method (with N when a method has several N)."""
    ns: dict[str, set] = {}
    for e in evals:
        ns.setdefault(e["method"], set()).add(e["metrics"].get("num_tags"))
    for e in evals:
        if not e["label"]:
            n = e["metrics"].get("num_tags")
            several = len(ns[e["method"]]) > 1
            e["label"] = f"{e['method']} N={n:g}" if several and n else e["method"]
    return evals


def interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t interval; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def common_k(evals: Sequence[dict[str, Any]]) -> int | None:
    """The largest k with pass@k in every run (None without pass@k metrics)."""
    sets = [{int(k[5:]) for k in e["metrics"] if k.startswith("pass@")} for e in evals]
    shared = set.intersection(*sets) if sets else set()
    return max(shared) if shared else None


def aggregate(evals: Sequence[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """group label -> metric -> (mean, 95% half-width, number of runs); groups in order."""
    by_label: dict[str, list[dict[str, float]]] = {}
    for e in label_runs(list(evals)):
        by_label.setdefault(e["label"], []).append(e["metrics"])
    out = {}
    for label, runs in by_label.items():
        keys = set.intersection(*(set(r) for r in runs))
        numeric = [k for k in sorted(keys) if all(isinstance(r[k], int | float) for r in runs)]
        out[label] = {k: (*interval([r[k] for r in runs]), len(runs)) for k in numeric}
    return out


def _table(agg, columns, k: int | None) -> str:
    cols = [(key.format(k=k), name.format(k=k)) for key, name in columns]
    cols = [(key, name) for key, name in cols if any(key in m for m in agg.values())]
    lines = ["| run | seeds | " + " | ".join(name for _, name in cols) + " |"]
    lines.append("|---|---|" + "---|" * len(cols))
    for label, metrics in agg.items():
        runs = next(iter(metrics.values()))[2] if metrics else 0
        cells = []
        for key, _ in cols:
            if key not in metrics:
                cells.append("–")
                continue
            mean, half, _ = metrics[key]
            cells.append(f"{mean:.3f} ± {half:.3f}" if runs > 1 else f"{mean:.3f}")
        lines.append(f"| {label} | {runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(agg, k: int | None = None) -> str:
    """The README-ready accuracy table, then the modes table (mean ± 95% interval)."""
    text = _table(agg, ACCURACY_COLUMNS, k) + "\n" + _table(agg, MODE_COLUMNS, k)
    if any("self/pass1" in m for m in agg.values()):
        text += "\n" + _table(agg, SELF_SELECTED_COLUMNS, k)
    return text


def pass1_rule_audit(evals: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Per run with forking tokens: each rule's tag and its test accuracy vs the best tag's.

    Returns the rows and a Markdown summary: per rule, how often it picked a best tag (ties
    count) and its mean shortfall from the best tag's test accuracy.
    """
    rows = []
    for e in label_runs(list(evals)):
        selection, tags = e["model"].get("tag_selection"), e["model"].get("tags", [])
        if not selection or uses_shared_tag(e["method"]) or len(tags) < 2:
            continue
        acc = {t: e["metrics"][f"pass1/{t}"] for t in tags if f"pass1/{t}" in e["metrics"]}
        best = max(acc.values())
        row = {"run": e["label"], "dir": e["dir"], "best_test_accuracy": best,
               "chosen_rule": selection["rule"], "chosen_tag": selection["pass1_tag"]}  # fmt: skip
        for rule, tag in selection["candidates"].items():
            row[rule] = {"tag": tag, "test_accuracy": acc[tag], "best": acc[tag] >= best}
        rows.append(row)
    if not rows:
        return rows, ""
    rules = [r for r in ("coverage", "coverage_last_epoch", "validation") if r in rows[0]]
    lines = ["| Pass@1 rule | picked a best tag | mean shortfall from the best tag |",
             "|---|---|---|"]  # fmt: skip
    for rule in rules:
        picks = [r[rule] for r in rows if rule in r]
        hits = sum(p["best"] for p in picks)
        gap = sum(r["best_test_accuracy"] - r[rule]["test_accuracy"] for r in rows if rule in r)
        lines.append(f"| {rule} | {hits} of {len(picks)} runs | {gap / len(picks):.3f} |")
    return rows, "\n".join(lines) + "\n"


def pass_at_k_curves(evals: Sequence[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """group label -> k -> mean pass@k over that group's runs."""
    curves: dict[str, dict[int, list[float]]] = {}
    for e in label_runs(list(evals)):
        for key, value in e["metrics"].items():
            if key.startswith("pass@"):
                curves.setdefault(e["label"], {}).setdefault(int(key[5:]), []).append(value)
    return {m: {k: sum(v) / len(v) for k, v in ks.items()} for m, ks in curves.items()}


def chosen_tags(evals: Sequence[dict[str, Any]]) -> str:
    """One line per run: the Pass@1 tag and why (the model folder's tag selection)."""
    lines = []
    for e in label_runs(list(evals)):
        selection = e["model"].get("tag_selection") or {}
        tag = e["model"].get("pass1_tag")
        why = f"rule {selection['rule']}" if selection else "no selection recorded"
        if selection.get("validation_accuracy"):
            why += f", validation accuracy {selection['validation_accuracy'][tag]:.3f}"
        usable = e["model"].get("usable_tags")
        if usable and usable != e["model"].get("tags") and not uses_shared_tag(e["method"]):
            why += f", usable tags {', '.join(usable)}"
        lines.append(f"- {e['label']} ({Path(e['dir']).name}): {tag} ({why})")
    return "\n".join(lines) + "\n"


def report(evals: Sequence[dict[str, Any]]) -> str:
    """The whole comparison as Markdown: accuracy and modes tables, rule audit, chosen tags."""
    evals = label_runs(list(evals))
    k = common_k(evals)
    parts = [markdown_table(aggregate(evals), k)]
    _, audit = pass1_rule_audit(evals)
    if audit:
        parts.append("Pass@1 rules on the test set (every rule's pick, per run):\n\n" + audit)
    parts.append("Pass@1 tag of each run:\n\n" + chosen_tags(evals))
    return "\n".join(parts)
