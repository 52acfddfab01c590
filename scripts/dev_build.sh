#!/usr/bin/env bash
# Rebuild agentattn._C in place after editing csrc/ (after one `bash scripts/install.sh`). Serialised
# with a lock so that parallel sessions never build at the same time. Prints the log only on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>/tmp/agentattn-build.lock
flock 9
log=$(mktemp)
if ! MAX_JOBS=${MAX_JOBS:-2} ${PYTHON:-python3} setup.py -q build_ext --inplace >"$log" 2>&1; then
    grep -E "error|Error" -A3 "$log" | head -60; echo "BUILD FAILED (full log: $log)"; exit 1
fi
rm -f "$log"
${PYTHON:-python3} -c "import agentattn; print('built:', agentattn.backends())"
