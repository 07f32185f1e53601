"""``benchmarks/gpu_check.py --cpu-smoke``: the GPU machine's one command, run on the CPU with
tiny shapes and with Ray and MLflow unimportable (the GPU machine has neither), so that it
cannot rot between the rare calls on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Ray and MLflow made unimportable, as on the GPU machine, then the script as __main__.
RUN = (
    "import runpy, sys\n"
    "for name in ('ray', 'mlflow'):\n"
    "    sys.modules[name] = None\n"
    "sys.argv = ['benchmarks/gpu_check.py', *sys.argv[1:]]\n"
    "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')\n"
)


@pytest.mark.slow  # ~1.5 min: the gpu tests, two step_cost variants, a tiny end-to-end run
def test_cpu_smoke_runs_every_step_without_ray_or_mlflow(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run(
        [sys.executable, "-c", RUN, "--cpu-smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    steps = results["steps"]
    assert [steps[s]["status"] for s in ("tests", "step_cost", "known_modes")] == ["ok"] * 3
    assert "4 passed" in steps["tests"]["summary"]
    tiny = steps["step_cost"]["models"]["tiny"]
    assert tiny["sft_step_s"] > 0 and tiny["flop_ratio"] > 1  # SSFT adds the cost pass
    km = steps["known_modes"]
    assert km["steps"] == 3 and km["traces"] > 0 and 0 <= km["metrics"]["pass1"] <= 1
    assert steps["vllm"]["status"] in ("skipped", "ok")
    assert results["environment"]["mode"] == "cpu-smoke"
    assert "| known_modes | ok |" in (out / "results.md").read_text()
    assert (out / "tests.xml").exists() and (out / "known_modes.log").stat().st_size > 0


def test_without_cuda_the_gpu_mode_refuses_with_the_fix(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "pass --cpu-smoke" in proc.stderr
