"""The GPU path in one call: every GPU figure the project claims, written to one folder.

    python benchmarks/gpu_check.py --out gpu-results             # a GPU machine, ~6 min
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/smoke  # CPU, tiny shapes (CI)

Made for a GPU lent for minutes (README "Performance"): its Python has torch, transformers,
scipy and pyarrow but not Ray or MLflow, so this runs the Ray-free ``ssft`` library directly,
tracking off, from the checkout (no install); ``ops/gpu_wheels.sh`` downloads the few small
wheels it needs besides (math-verify, PyYAML, pytest). Steps, each timed, each logged to
``<out>/<step>.log``, a failure recorded and the next step run anyway:

1. ``tests`` -- ``pytest -m gpu`` on the device: bf16 autocast against float32, the
   prompt-cached cost against the recomputed one, packed rows against padded ones, the
   non-finite skip on the device (``tests/test_gpu.py``).
2. ``step_cost`` -- ``benchmarks/step_cost.py`` on random-init Qwen2.5-shaped 0.5B and 1.5B
   models at 4k tokens, N = 6, M = 4, L = 256: SSFT/SFT step-time ratio beside the FLOP
   model, tokens/s, MFU, peak memory SSFT/SFT, each checked against the issue's targets.
3. ``known_modes`` -- the known-modes GPU preset, shortened to a few hundred steps, through
   the Ray-free loop (build without Ray, ``ssft.train.loop.train``, held-out evaluation):
   Pass@1, Cons@N, purity.
4. ``vllm`` -- the trained model evaluated through the vLLM backend, only if vLLM imports
   (else a note).

``<out>/results.json`` holds every figure (with the device name, torch version and date),
``<out>/results.md`` the same as tables. The exit code is 1 when a step failed or a target
was missed. ``--cpu-smoke`` runs the same steps on the CPU with tiny shapes, so that the
script is exercised by the test suite (``tests/test_gpu_check.py``) and cannot rot; its
figures mean nothing and no target is checked.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `ssft` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

ROOT = Path(__file__).resolve().parents[1]

# The targets (README "Performance"): SSFT/SFT step time, and against the FLOP model;
# peak memory SSFT/SFT; MFU of the SFT step per model; SSFT's MFU relative to SFT's.
TARGETS = {
    "ratio": 1.15, "ratio_over_flops": 1.05, "mem_ratio": 1.05,
    "sft_mfu": {"qwen2.5-0.5b": 0.45, "qwen2.5-1.5b": 0.50}, "ssft_mfu_rel": 0.95,
}  # fmt: skip


class _Tee(io.TextIOBase):
    """Writes to the console and to a step's log file."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
            s.flush()
        return len(text)


def _step(out: Path, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one step with its output teed to ``<out>/<name>.log``; never raises."""
    print(f"[gpu_check] {name} ...", flush=True)
    start = time.perf_counter()
    with (out / f"{name}.log").open("w", encoding="utf-8") as log:
        tee = _Tee(sys.stdout, log)
        try:
            with contextlib.redirect_stdout(tee):
                found = fn()
                result = {"status": "skipped" if "skipped" in found else "ok", **found}
        except Exception as err:  # recorded; the next step still runs
            log.write(traceback.format_exc())
            result = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(f"[gpu_check] {name}: {result['status']} in {result['seconds']}s", flush=True)
    return result


def run_tests(device: str, out: Path) -> dict[str, Any]:
    """``pytest -m gpu tests/test_gpu.py`` on ``device`` (a subprocess: its own process)."""
    env = {**os.environ, "SSFT_TEST_DEVICE": device, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           "tests/test_gpu.py", f"--junitxml={out / 'tests.xml'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    print(proc.stdout[-4000:] + proc.stderr[-2000:])
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode != 0:
        raise RuntimeError(f"pytest -m gpu exited {proc.returncode}: {summary}")
    return {"summary": summary}


def run_step_cost(models: list[str], device: str, smoke: bool) -> dict[str, Any]:
    """step_cost.py per model: SFT and SSFT rows, and the targets each meets or misses."""
    from benchmarks import step_cost

    figures: dict[str, Any] = {}
    for model in models:
        argv = ["--model", model, "--device", device, "--variants", "sft,ssft",
                "--tags", "6", "--traces", "4"]  # fmt: skip
        if smoke:
            argv += ["--warmup", "1", "--steps", "1", "--threads", "1"]
        else:
            argv += ["--dtype", "bfloat16", "--prefix", "256", "--warmup", "2", "--steps", "5"]
        rows = {r["variant"]: r for r in step_cost.main(argv)}
        sft, ssft = rows["sft"], rows["ssft"]
        entry = {
            "sft_step_s": sft["step_s"], "ssft_step_s": ssft["step_s"],
            "ratio": ssft["ratio"], "flop_ratio": ssft["flop_ratio"],
            "ratio_over_flops": ssft["ratio"] / ssft["flop_ratio"],
            "sft_tokens_per_s": sft["tokens_per_s"], "ssft_tokens_per_s": ssft["tokens_per_s"],
            "mem_ratio": ssft["mem_ratio"], "sft_mfu": sft["mfu"], "ssft_mfu": ssft["mfu"],
            "sft_peak_gib": sft["peak_bytes"] / 2**30 if sft["peak_bytes"] else None,
        }  # fmt: skip
        if not smoke:
            entry["targets"] = _targets(model, entry)
        figures[model] = entry
    return {"models": figures}


def _targets(model: str, e: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target: the measured value, the bound, and whether it is met."""

    def check(value, bound, at_most: bool) -> dict[str, Any]:
        met = value is not None and (value <= bound if at_most else value >= bound)
        return {"value": value, "bound": bound, "met": met}

    rel = e["ssft_mfu"] / e["sft_mfu"] if e["sft_mfu"] and e["ssft_mfu"] else None
    return {
        "ratio": check(e["ratio"], TARGETS["ratio"], True),
        "ratio_over_flops": check(e["ratio_over_flops"], TARGETS["ratio_over_flops"], True),
        "mem_ratio": check(e["mem_ratio"], TARGETS["mem_ratio"], True),
        "sft_mfu": check(e["sft_mfu"], TARGETS["sft_mfu"][model], False),
        "ssft_mfu_rel": check(rel, TARGETS["ssft_mfu_rel"], False),
    }


def _known_modes_config(smoke: bool, out: Path):
    from ssft.config.presets import known_modes_gpu, tiny_test

    if smoke:  # a few steps of the test suite's tiny model on a small trace set
        cfg = tiny_test()
        cfg.build.num_questions, cfg.train.max_steps, cfg.train.questions_per_step = 24, 3, 8
        cfg.eval.num_questions, cfg.eval.samples_per_tag, cfg.eval.max_new_tokens = 4, 1, 16
    else:  # the GPU preset (256 wide, 6 layers), 1,000 questions and 300 steps
        cfg = known_modes_gpu()
        cfg.build.num_questions, cfg.train.max_steps = 1000, 300
        cfg.eval.num_questions = 128
    cfg.tag_selection.validation_questions, cfg.tag_selection.pass1_rule = 0, "coverage"
    cfg.train.checkpoint_every = 0  # no Ray Train here: the loop's own final model only
    cfg.data.train_path = str(out / "trace_sets.parquet")
    return cfg


def run_known_modes(device: str, smoke: bool, out: Path) -> dict[str, Any]:
    """Build (no Ray), train on the device through the Ray-free loop, evaluate held out."""
    from ssft.data.question_sources import held_out_questions, load_questions
    from ssft.data.trace_building import build_shard
    from ssft.data.trace_set import write_trace_sets
    from ssft.eval.evaluation import compute_metrics, evaluate_questions, load_eval_model
    from ssft.final_model import read_model_tags
    from ssft.train.loop import TrainContext, train

    folder = out / "known_modes"
    folder.mkdir(exist_ok=True)
    cfg = _known_modes_config(smoke, folder).validate()
    t0 = time.perf_counter()
    sets, stats, _ = build_shard(load_questions(cfg.build), cfg.build, cfg.seed)
    write_trace_sets(cfg.data.train_path, sets)
    built = time.perf_counter()
    result = train(cfg, TrainContext(device=device, final_dir=folder / "final_model"))
    trained = time.perf_counter()
    questions, _ = held_out_questions(cfg.build, cfg.eval)
    model, tokenizer = load_eval_model(result.final_dir)
    rows = evaluate_questions(result.final_dir, questions, cfg.eval, cfg.data, cfg.seed,
                              model=model, tokenizer=tokenizer)  # fmt: skip
    metrics = compute_metrics(rows, read_model_tags(result.final_dir), cfg.eval)
    keys = ("pass1", "cons_native", "tag_accuracy_min", "mode_purity", "per_question_purity")
    return {
        "questions": len(sets), "traces": stats.traces, "steps": result.steps,
        "loss_first": result.losses[0], "loss_last": result.losses[-1],
        "eval_questions": len(questions),
        "metrics": {k: metrics[k] for k in keys if k in metrics},
        "seconds_build": round(built - t0, 1), "seconds_train": round(trained - built, 1),
        "seconds_eval": round(time.perf_counter() - trained, 1),
        "final_model": str(result.final_dir),
    }  # fmt: skip


def run_vllm(smoke: bool, out: Path, model_dir: str | None) -> dict[str, Any]:
    """The vLLM evaluation backend on the trained model, if vLLM imports here."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vllm is not importable on this machine"}
    if model_dir is None:
        return {"skipped": "no trained model (the known_modes step failed)"}
    from ssft.data.question_sources import held_out_questions
    from ssft.eval.evaluation import compute_metrics, evaluate_questions
    from ssft.final_model import read_model_tags

    cfg = _known_modes_config(smoke, out / "known_modes")
    cfg.eval.backend, cfg.eval.num_questions = "vllm", 32
    questions, _ = held_out_questions(cfg.build, cfg.eval)
    rows = evaluate_questions(model_dir, questions, cfg.eval, cfg.data, cfg.seed)
    metrics = compute_metrics(rows, read_model_tags(model_dir), cfg.eval)
    return {"eval_questions": len(questions), "pass1": metrics.get("pass1")}


def _markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [f"# GPU check, {env['date']}", "",
             f"{env['device']} | torch {env['torch']} | Python {env['python']} | "
             f"mode {env['mode']}", "",
             "| step | status | seconds | note |", "|---|---|---|---|"]  # fmt: skip
    for name, r in results["steps"].items():
        note = r.get("error") or r.get("skipped") or r.get("summary") or ""
        lines.append(f"| {name} | {r['status']} | {r['seconds']} | {note} |")
    for model, e in results["steps"].get("step_cost", {}).get("models", {}).items():
        lines += ["", f"## step_cost {model}", "", "| figure | value | target | met |",
                  "|---|---|---|---|"]  # fmt: skip
        for key, t in e.get("targets", {}).items():
            value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
            lines.append(f"| {key} | {value} | {t['bound']} | {t['met']} |")
        for key in ("sft_step_s", "ssft_step_s", "flop_ratio", "sft_tokens_per_s", "sft_peak_gib"):
            if e.get(key) is not None:
                lines.append(f"| {key} | {e[key]:.4g} | | |")
    km = results["steps"].get("known_modes", {})
    if km.get("metrics"):
        lines += ["", "## known_modes", ""] + [f"- {k}: {v:.3f}" for k, v in km["metrics"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="results folder (created)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (CI)")
    parser.add_argument("--skip", default="", help="comma-separated steps to skip")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --cpu-smoke")
    device = "cpu" if smoke else "cuda"
    models = ["tiny"] if smoke else ["qwen2.5-0.5b", "qwen2.5-1.5b"]
    skip = set(filter(None, args.skip.split(",")))
    env = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor()
        or "cpu", "torch": torch.__version__, "python": platform.python_version(),
        "mode": "cpu-smoke" if smoke else "gpu",
    }  # fmt: skip
    steps: dict[str, Any] = {}
    plan = {
        "tests": lambda: run_tests(device, out),
        "step_cost": lambda: run_step_cost(models, device, smoke),
        "known_modes": lambda: run_known_modes(device, smoke, out),
        "vllm": lambda: run_vllm(smoke, out, steps.get("known_modes", {}).get("final_model")),
    }
    for name, fn in plan.items():
        if name in skip:
            steps[name] = {"status": "skipped", "seconds": 0.0, "skipped": "--skip"}
            continue
        steps[name] = _step(out, name, fn)
        _write(out, {"environment": env, "steps": steps})  # partial results survive a kill
    results = {"environment": env, "steps": steps}
    _write(out, results)
    missed = [f"{m}.{k}" for m, e in steps.get("step_cost", {}).get("models", {}).items()
              for k, t in e.get("targets", {}).items() if not t["met"]]  # fmt: skip
    failed = [n for n, r in steps.items() if r["status"] == "failed"]
    print(f"[gpu_check] results in {out}: failed steps {failed or 'none'}; "
          f"missed targets {missed or 'none'}", flush=True)  # fmt: skip
    return 1 if failed or missed else 0


def _write(out: Path, results: dict[str, Any]) -> None:
    for name, text in (("results.json", json.dumps(results, indent=1, default=str)),
                       ("results.md", _markdown(results))):  # fmt: skip
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)


if __name__ == "__main__":
    raise SystemExit(main())
