#!/usr/bin/env bash
# One device call on a lent GPU (a lease here is 15 minutes of device time, start-up included; one call
# may run 10): the kernel checks and a slice of the full-size HTNet run side by side, then the benchmark
# alone. Written from the first lease (H200, 2026-12-04; benchmarks/NOTES.md "First GPU lease").
#
#   bash scripts/gpu_lease.sh RELEASE_DIR RUN_DIR [TRAIN_S] [CHECK_S] [BENCH_S]
#
#   0. with PROFILE_S > 0 (env), first and alone on the GPU: scripts/profile_batched_step.py --trace (a GEMM
#      probe: is TF32 in effect; one training step of the 17 stacked folds in parts, and the alternatives),
#      capped at PROFILE_S seconds;
#      PROFILE_VARIANTS (env) picks them, e.g. "base,compile" (the script's header lists them).
#   1. background: scripts/gpu_release_loso.py --release RELEASE_DIR --out RUN_DIR [--folds $FOLDS],
#      stopped after TRAIN_S seconds (default 480; a group of 17 folds took 230 s alone on an H200, 351 s
#      beside step 2). A cap that ends mid-group loses that group, so give each lease its own slice of
#      17 folds: FOLDS=51-67 (folds 0-50 were done on 2026-12-04); commit the slice's metrics.json (no
#      per-sample files: they carry the release's labels) and pool the slices with
#      scripts/pool_partial_runs.py.
#   2. foreground, at the same time: scripts/gpu_check.sh build test sanitize, capped at CHECK_S (400):
#      the build and the Triton compiles are CPU work, the training keeps the GPU busy.
#   3. when both are done: scripts/gpu_check.sh quickbench alone on the GPU, capped at BENCH_S (90; 0
#      skips it), so that its timings are not shared with the training.
#   4. with OUT set (the device tool's output folder): RUN_DIR, the logs and the result files packed into
#      $OUT/lease.tgz, and a summary printed last.
# Device call: run(command="FOLDS=51-67 bash scripts/gpu_lease.sh .devrun/htnet_release .devrun/rel",
#                  carry=[".devrun"], timeout_s=590)   # .devrun/ ignored via .git/info/exclude
# With the profile: "PROFILE_S=100 FOLDS=51-67 bash scripts/gpu_lease.sh ... .devrun/rel 440 380 0" (the
# caps add up to 540 s, under the 590 s call). A second call on the still-warm machine can train another
# slice alone: "FOLDS=... bash scripts/gpu_lease.sh ... .devrun/rel2 415 1 0" (2026-12-04: 236 s).
set -uo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { sed -n 2,20p "$0"; exit 2; }
release=$1 run=$2 train_s=${3:-480} check_s=${4:-400} bench_s=${5:-90}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
logs=$(mktemp -d)
t0=$SECONDS
touch "$logs/.start"  # result files newer than this are this call's
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } >"$logs/summary.txt" 2>&1
if [[ ${PROFILE_S:-0} -gt 0 ]]; then
    timeout -k 5 "$PROFILE_S" python3 scripts/profile_batched_step.py --trace --out "$logs" \
        ${PROFILE_VARIANTS:+--variants "$PROFILE_VARIANTS"} >"$logs/profile.log" 2>&1
    echo "profile_batched_step: rc $? after $((SECONDS - t0)) s" >>"$logs/summary.txt"
    grep -E "^(gemm probe|[a-z_0-9]+): (step|FAILED|[0-9])" "$logs/profile.log" >>"$logs/summary.txt"
fi

(
    timeout -k 10 -s INT "$train_s" python3 scripts/gpu_release_loso.py --release "$release" --out "$run" --progress \
        ${FOLDS:+--folds "$FOLDS"} >"$logs/train.log" 2>&1
    echo "train: rc $? after $((SECONDS - t0)) s" >>"$logs/summary.txt"
) &
train_pid=$!
(
    while kill -0 "$train_pid" 2>/dev/null; do
        echo "$((SECONDS - t0)) s: $(ls "$run"/folds/*/result.json 2>/dev/null | wc -l) folds finished;" \
            "$(nvidia-smi --query-gpu=memory.used,utilization.gpu,clocks.sm --format=csv,noheader)"
        sleep 15
    done
) >"$logs/monitor.log" 2>&1 &

OUT='' timeout -k 5 "$check_s" bash scripts/gpu_check.sh build test sanitize >"$logs/gpu_check.log" 2>&1
echo "gpu_check build test sanitize: rc $? after $((SECONDS - t0)) s" >>"$logs/summary.txt"
wait "$train_pid"
if [[ $bench_s -gt 0 ]]; then
    OUT='' timeout -k 5 "$bench_s" bash scripts/gpu_check.sh quickbench >"$logs/bench.log" 2>&1
    echo "gpu_check quickbench: rc $? after $((SECONDS - t0)) s" >>"$logs/summary.txt"
fi

grep -hE "^(build|tests|sanitizer|bench|bench_flow_patch_embed):" "$logs/gpu_check.log" "$logs"/bench.log* >>"$logs/summary.txt" 2>/dev/null
tail -2 "$logs/monitor.log" >>"$logs/summary.txt"
if [[ -n "${OUT:-}" && -d "$OUT" ]]; then
    find benchmarks/results -maxdepth 1 -type f -newer "$logs/.start" -exec cp {} "$logs/" \;
    tar czf "$OUT/lease.tgz" -C "$(dirname "$run")" "$(basename "$run")" -C "$logs" . 2>>"$logs/summary.txt"
fi
cat "$logs/summary.txt"
