#!/usr/bin/env bash
# Compile every CUDA source with `nvcc -c` for sm_80 and sm_90, without ATen CUDA headers, so that the
# kernels are proven to compile on CPU-only machines too. Torch glue (*_binding.cu / *.cpp in csrc/cuda)
# is compiled only in real CUDA builds (setup.py) and is skipped here.
# Exit status: 0 every file compiled; 77 not run (no nvcc on PATH: prints a `SKIPPED: ...` line, which
# scripts/test.sh counts in its summary); anything else a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1; then
    echo "SKIPPED: nvcc not found on PATH: the csrc/**/*.cu compile check did not run"
    exit 77
fi
shopt -s nullglob globstar
files=()
for f in csrc/**/*.cu; do [[ "$f" == *_binding.cu ]] || files+=("$f"); done
if [[ ${#files[@]} -eq 0 ]]; then echo "error: no csrc/**/*.cu files found to compile" >&2; exit 1; fi
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
for f in "${files[@]}"; do
    for arch in 80 90; do
        nvcc -c -std=c++17 -O3 -Icsrc -gencode "arch=compute_${arch},code=sm_${arch}" "$f" -o "$out/$(basename "$f").sm${arch}.o"
    done
    echo "nvcc ok: $f (sm_80, sm_90)"
done
