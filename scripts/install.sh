#!/usr/bin/env bash
# Install everything the project needs on a fresh machine, then build agentattn._C in place.
#   bash scripts/install.sh          runtime deps + build
#   bash scripts/install.sh --test   also the test deps
# torch: if missing, the pinned CPU build torch==2.13.0 is installed first, so that no dependency
# resolution ever pulls a multi-GB CUDA torch. An existing torch (e.g. a CUDA build on a GPU box) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check -q"
if ! $PY -c "import torch" >/dev/null 2>&1; then
    echo "[install] torch missing: installing torch==2.13.0 (CPU build)"
    $PIP torch==2.13.0
fi
$PIP -r requirements.txt
if [[ "${1:-}" == "--test" ]]; then
    $PIP -r requirements-test.txt
    # the MTCNN landmark tests (landmarks="mtcnn", mer/data/htnet_landmarks.py): the release's version, without
    # its dependencies (it pins an old torch; the torchvision op it needs is supplied by mer)
    $PIP --no-deps facenet-pytorch==2.5.2
fi
# build tools for --no-build-isolation (an old setuptools, e.g. a fresh venv's 65.x, lacks bdist_wheel)
$PIP "setuptools>=70.1" wheel
# editable install: builds agentattn._C next to the sources, installs the `mer` command
$PIP --no-build-isolation --no-deps -e .
$PY -c "import agentattn; print('[install] agentattn backends:', agentattn.backends())"
