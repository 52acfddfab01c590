#!/usr/bin/env bash
# Rebuild agentattn._C in place after editing csrc/ (after one `bash scripts/install.sh`). Serialised
# with a lock so that parallel sessions never build at the same time.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>/tmp/agentattn-build.lock
flock 9
MAX_JOBS=${MAX_JOBS:-2} ${PYTHON:-python3} setup.py -q build_ext --inplace 2>&1 | grep -vE "^(running|copying|creating)" || true
${PYTHON:-python3} -c "import agentattn; print('built:', agentattn.backends())"
