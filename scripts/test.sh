#!/usr/bin/env bash
# Provision (scripts/provision.sh) and run the whole test suite with the provisioned Python.
#   bash scripts/test.sh                 # everything under tests/
#   bash scripts/test.sh tests/e2e -k 1_source_to_3   # any pytest arguments
# Environment: see scripts/provision.sh (IMAGPOSE_CACHE_DIR, COMFYUI_PATH).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

started=$SECONDS
# the browser e2e tests need Debian's chromium: installed when they are among the tests to run
PROVISION_OPTS=()
if [[ $# -eq 0 ]]; then PROVISION_OPTS=(--browser); fi
for arg in "$@"; do
    case "$arg" in tests|tests/|tests/e2e*|*browser*) PROVISION_OPTS=(--browser) ;; esac
done
bash "$REPO/scripts/provision.sh" "${PROVISION_OPTS[@]}"
CACHE="${IMAGPOSE_CACHE_DIR:-$HOME/.cache/imagpose-comfyui}"
# shellcheck disable=SC1091
source "$CACHE/env.sh"   # IMAGPOSE_CACHE_DIR, COMFYUI_PATH, IMAGPOSE_PYTHON
export IMAGPOSE_CACHE_DIR COMFYUI_PATH IMAGPOSE_PYTHON
export COMFYUI_PYTHON="$IMAGPOSE_PYTHON"   # the Python the e2e tests start ComfyUI with
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
echo "[test] provisioned in $((SECONDS - started)) s; ComfyUI at $COMFYUI_PATH"

if [[ $# -eq 0 ]]; then set -- tests; fi
set +e
"$IMAGPOSE_PYTHON" -m pytest -p no:cacheprovider --durations=15 "$@"
code=$?
set -e
echo "[test] pytest exit code $code; total $((SECONDS - started)) s"
if [[ $code -eq 5 ]]; then
    echo "[test] ERROR: pytest collected no tests" >&2
fi
exit $code
