#!/usr/bin/env bash
# The project's test suite, as `make test` and CI run it (assumes scripts/install.sh --test ran).
#  1. lint: `ruff check .` and `ruff format --check .` (pyproject.toml [tool.ruff]); `clang-format` on csrc/
#     when clang-format 14 (the version .clang-format is checked with) is present; any finding fails the run
#  2. the main suite (CPU), slow end-to-end tests included at a small size
#  3. the Triton kernels under the interpreter, in their own process (TRITON_INTERPRET=1 before import)
#  4. every csrc/**/*.cu compiled with nvcc -c for sm_80 and sm_90, when nvcc is present
# Arguments go to both pytest stages (e.g. `bash scripts/test.sh -x tests/mer`). A stage that cannot run
# here (no nvcc; Triton not importable) prints a `SKIPPED: ...` line and is counted in the summary at the
# end; any other failure, or a Triton stage that collects no tests, fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONHASHSEED=0 MPLBACKEND=Agg
# the tests on the real HTNet release copy (tests/mer/*/test_*release*.py) run when MER_HTNET_RELEASE points at
# it; CI keeps it beside the repository, in ../shared/data/htnet_release (the data is never committed)
if [[ -z "${MER_HTNET_RELEASE:-}" && -d ../shared/data/htnet_release ]]; then
    MER_HTNET_RELEASE=$(cd ../shared/data/htnet_release && pwd)
    export MER_HTNET_RELEASE
fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

summary=()  # one line per stage, printed at the end
n_skipped=0
skipped() {  # skipped <stage> <reason>
    echo "SKIPPED: $1: $2"
    summary+=("$1: SKIPPED ($2)")
    n_skipped=$((n_skipped + 1))
}
pytest_result() {  # the final "N passed, M skipped ... in Ts" line of a pytest log
    grep -E "^=* ?[0-9]+ (passed|failed|error|deselected|skipped)" "$1" | tail -1 | sed -E 's/^=+ //; s/ =+$//'
}

echo "== [1/4] lint: ruff check, ruff format --check, clang-format"
if ! $PY -m ruff --version >/dev/null 2>&1; then
    echo "ruff is not installed: run \`bash scripts/install.sh --test\` (pinned in requirements-test.txt)" >&2
    exit 1
fi
$PY -m ruff check .
$PY -m ruff format --check . || { echo "run \`ruff format .\` (CONTRIBUTING.md, Style)" >&2; exit 1; }
csrc_files=$(git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 2>/dev/null || find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu')
# `|| true`: without clang-format the pipeline fails (127) and, under pipefail + set -e, would end the run
cf_major=$(clang-format --version 2>/dev/null | sed -nE 's/.*version ([0-9]+).*/\1/p' || true)
if [[ "$cf_major" == 14 ]]; then
    # shellcheck disable=SC2086
    clang-format --dry-run --Werror $csrc_files || { echo "run \`clang-format -i\` on the files above" >&2; exit 1; }
    summary+=("lint: ruff check, ruff format, clang-format (csrc/) clean")
else
    echo "SKIPPED: clang-format check: needs clang-format 14 (found: ${cf_major:-none}); ruff ran"
    summary+=("lint: ruff check, ruff format clean; clang-format check SKIPPED (clang-format 14 not found)")
fi

echo "== [2/4] main test suite"
$PY -m pytest -q --durations=15 -m "not triton and not cuda" "$@" | tee "$logs/main"
summary+=("main suite: $(pytest_result "$logs/main")")
if [[ -n "${MER_HTNET_RELEASE:-}" ]]; then
    summary+=("  real HTNet release tests: on ($MER_HTNET_RELEASE)")
else
    summary+=("  real HTNet release tests: skipped (MER_HTNET_RELEASE unset, no ../shared/data/htnet_release)")
fi

echo "== [3/4] Triton kernels under TRITON_INTERPRET=1"
if ! err=$($PY -c "import triton" 2>&1); then
    skipped "Triton stage" "triton does not import: ${err##*$'\n'}"
else
    set +e
    TRITON_INTERPRET=1 $PY -m pytest -q -m triton "$@" | tee "$logs/triton"
    rc=${PIPESTATUS[0]}
    set -e
    if [[ $rc -eq 5 && $# -gt 0 ]]; then  # pytest: no tests collected; fine when the arguments select others
        skipped "Triton stage" "no Triton tests among the selected ($*)"
    elif [[ $rc -eq 5 ]]; then
        echo "error: the Triton stage collected no tests (-m triton): the Triton kernel tests are missing" >&2
        exit 1
    elif [[ $rc -ne 0 ]]; then
        exit "$rc"
    else
        summary+=("Triton stage: $(pytest_result "$logs/triton")")
    fi
fi

echo "== [4/4] nvcc compile check of csrc/**/*.cu"
set +e
bash scripts/check_cuda_compile.sh | tee "$logs/nvcc"
rc=${PIPESTATUS[0]}
set -e
if [[ $rc -eq 77 ]]; then  # check_cuda_compile.sh: skipped (no nvcc), it printed why
    n_skipped=$((n_skipped + 1))
    summary+=("nvcc check: SKIPPED ($(grep -m1 '^SKIPPED:' "$logs/nvcc" | sed 's/^SKIPPED: //'))")
elif [[ $rc -ne 0 ]]; then
    exit "$rc"
else
    summary+=("nvcc check: $(grep -c '^nvcc ok:' "$logs/nvcc") .cu files compile for sm_80 and sm_90")
fi

echo "== summary"
printf '  %s\n' "${summary[@]}"
if [[ $n_skipped -gt 0 ]]; then
    echo "PASSED, but $n_skipped of 4 stages SKIPPED (see above)"
else
    echo "PASSED: all 4 stages ran"
fi
