#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.py needs on a GPU machine besides what its Python has
# (torch, transformers, scipy, pyarrow): math-verify (grading) with its parser, PyYAML
# (configs) and pytest (the gpu tests). Downloaded here, for the GPU machine's Python 3.12
# on x86-64 Linux, into .gpu-wheels/ (git-ignored), then carried there and installed
# without an index:
#
#   ops/gpu_wheels.sh                     # here, once (a few MB)
#   pip install --no-index --no-deps .gpu-wheels/*.whl && \
#       python benchmarks/gpu_check.py --out "$OUT/gpu"     # there
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.gpu-wheels
rm -rf "$dest" && mkdir -p "$dest"
pip download --quiet --dest "$dest" --only-binary=:all: --no-deps \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    "math-verify==0.9.0" "latex2sympy2_extended==1.11.0" "antlr4-python3-runtime==4.13.2" \
    "PyYAML==6.0.3" "pytest==9.0.3" "pluggy==1.6.0" "iniconfig==2.3.0" "packaging==25.0" "Pygments==2.20.0"
du -sh "$dest"
ls "$dest"
