#!/usr/bin/env bash
# The one command a GPU session runs for the agent-attention GPU kernels (docs/gpu_kernels.md):
#   1. build agentattn._C with the CUDA kernels (in place, for this GPU's arch)
#   2. the GPU test suite: CUDA and Triton backends vs the fp64 reference, opcheck, torch.compile;
#      the Triton tests of the CPU suite, compiled for the GPU this time
#   3. compute-sanitizer (memcheck + racecheck) on small forward+backward calls of the CUDA kernels
#      (M = N, M < N, M > N; a NaN key and an all -inf bias row)
#   4. the GPU benchmarks (benchmarks/suites/agent_attention_gpu.py, flow_patch_embed.py --device cuda)
# Everything is written to benchmarks/results/<device>-<date>-gpu_check-* (and copied to $OUT when set,
# as the device tool provides). Usage:
#   bash scripts/gpu_check.sh            # all four steps
#   bash scripts/gpu_check.sh build test # a subset: build | test | sanitize | bench | quickbench
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
steps=("$@"); [[ ${#steps[@]} -eq 0 ]] && steps=(build test sanitize bench)

if ! command -v nvidia-smi >/dev/null 2>&1 || ! $PY -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no NVIDIA GPU visible to $PY (torch.cuda.is_available() is False); nothing to do" >&2
    exit 2
fi
dev=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_' | tr -cd 'A-Za-z0-9_.-')
stamp=$(date -u +%Y-%m-%d)
prefix="benchmarks/results/${dev}-${stamp}-gpu_check"
mkdir -p benchmarks/results
summary="${prefix}-summary.txt"
{
    echo "gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} | tee "$summary"
arch=$($PY -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}')")
status=0
# each summary line ends with the seconds the step took (a 15-minute GPU lease is planned from these;
# t_step is reset at the start of each step and after each record)
record() { echo "$1: $2 [$((SECONDS - t_step)) s]" | tee -a "$summary"; [[ "$2" == ok* ]] || status=1; t_step=$SECONDS; }
# the GPU tests in parallel processes when pytest-xdist is there: most of their time is Triton compiling
# (and autotuning) kernels, which is CPU work (2026-12-04, H200 machine, 16 cores: 31 of 168 tests in 170 s
# in one process)
xdist=()
$PY -c "import xdist" >/dev/null 2>&1 && xdist=(-n "${GPU_TEST_WORKERS:-8}")

for step in "${steps[@]}"; do
t_step=$SECONDS
case "$step" in
build)
    echo "== build (sm_${arch})"
    if AGENTATTN_BUILD_CUDA=1 AGENTATTN_CUDA_ARCHS="$arch" MAX_JOBS=${MAX_JOBS:-16} \
        $PY setup.py build_ext --inplace >"${prefix}-build.log" 2>&1 \
        && $PY -c "import agentattn; b = agentattn.backends(); print(b); assert b['cuda_kernels_built'], b" >>"${prefix}-build.log" 2>&1; then
        record build "ok ($(tail -1 "${prefix}-build.log"))"
    else
        tail -30 "${prefix}-build.log"; record build "FAILED (see ${prefix}-build.log)"
    fi ;;
test)
    echo "== GPU tests"
    $PY -m pytest -v -rfEs -m "cuda or triton" -p no:cacheprovider "${xdist[@]}" --durations=15 \
        tests/agentattn/ops/test_agent_attention_cuda.py tests/agentattn/ops/test_agent_attention_triton.py \
        tests/agentattn/ops/test_flow_patch_embed_cuda.py tests/agentattn/ops/test_flow_patch_embed_triton.py \
        2>&1 | tee "${prefix}-tests.log"
    rc=${PIPESTATUS[0]}
    record tests "$([[ $rc -eq 0 ]] && echo ok || echo FAILED) ($(tail -1 "${prefix}-tests.log"))" ;;
sanitize)
    echo "== compute-sanitizer"
    # self-attention, fewer keys than queries (PVT sr), more keys (cross-attention, several key splits),
    # then fp32 with a NaN key and a fully -inf bias row (the non-finite paths of the online softmax)
    small='import torch, agentattn
g = torch.Generator(device="cuda").manual_seed(0)
def case(dt, N, M, poison=False):
    mk = lambda *s: torch.randn(*s, device="cuda", dtype=dt, generator=g)
    q, k, v, a = mk(2, 2, N, 48), mk(2, 2, M, 48), mk(2, 2, M, 48), mk(2, 2, 9, 48)
    b1, b2 = mk(1, 2, 9, M), mk(2, 2, N, 9)
    if poison:
        k[1, 1, M // 2, 3] = float("nan"); b1[0, 0, 4, :] = float("-inf")
    xs = [t.requires_grad_() for t in (q, k, v, a, b1, b2)]
    agentattn.agent_attention(*xs, backend="cuda").sum().backward()
for dt in (torch.float32, torch.float16, torch.bfloat16):
    for N, M in ((77, 77), (77, 13), (20, 300)):
        case(dt, N, M)
case(torch.float32, 77, 77, poison=True); case(torch.float32, 20, 300, poison=True)
torch.cuda.synchronize(); print("sanitizer cases done")'
    : >"${prefix}-sanitizer.log"
    ok=1
    for tool in memcheck racecheck; do
        if command -v compute-sanitizer >/dev/null 2>&1; then
            compute-sanitizer --tool "$tool" --error-exitcode 7 $PY -c "$small" >>"${prefix}-sanitizer.log" 2>&1 || ok=0
        else
            echo "compute-sanitizer not found" >>"${prefix}-sanitizer.log"; ok=0
        fi
        grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "${prefix}-sanitizer.log" | tail -1
    done
    record sanitizer "$([[ $ok -eq 1 ]] && echo ok || echo FAILED) ($(grep -cE 'ERROR SUMMARY: 0|RACECHECK SUMMARY: 0' "${prefix}-sanitizer.log") clean summaries)" ;;
bench|quickbench)
    echo "== benchmark"
    extra=(); [[ "$step" == quickbench ]] && extra=(--quick)
    if $PY benchmarks/suites/agent_attention_gpu.py "${extra[@]}" --out "benchmarks/results/${dev}-${stamp}-agent_attention_gpu" \
        >"${prefix}-bench.log" 2>&1; then
        record bench "ok (benchmarks/results/${dev}-${stamp}-agent_attention_gpu.{json,md})"
    else
        tail -30 "${prefix}-bench.log"; record bench "FAILED (see ${prefix}-bench.log)"
    fi
    if $PY benchmarks/suites/flow_patch_embed.py --device cuda "${extra[@]}" \
        --out "benchmarks/results/${dev}-${stamp}-flow_patch_embed" >>"${prefix}-bench.log" 2>&1; then
        record bench_flow_patch_embed "ok (benchmarks/results/${dev}-${stamp}-flow_patch_embed.{json,md})"
    else
        tail -30 "${prefix}-bench.log"; record bench_flow_patch_embed "FAILED (see ${prefix}-bench.log)"
    fi ;;
*) echo "unknown step $step (build | test | sanitize | bench | quickbench)" >&2; exit 2 ;;
esac
done

if [[ -n "${OUT:-}" && -d "${OUT}" ]]; then
    cp benchmarks/results/"${dev}-${stamp}"-* "$OUT"/ 2>/dev/null || true
fi
echo "== summary (${summary})"; cat "$summary"
exit $status
