#!/usr/bin/env bash
# Demo: provision (scripts/provision.sh), then run "workflows/IMAGPose 1 - one photo to three poses.json" on a real
# ComfyUI server with a bundled photo and three target poses. Arguments go to scripts/demo.py
# (--help lists them). Trained weights: $IMAGPOSE_MODELS or <repo>/models (see README); without them the
# demo runs with random weights and says so.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/provision.sh"
CACHE="${IMAGPOSE_CACHE_DIR:-$HOME/.cache/imagpose-comfyui}"
# shellcheck disable=SC1091
source "$CACHE/env.sh"
export IMAGPOSE_CACHE_DIR COMFYUI_PATH IMAGPOSE_PYTHON
export COMFYUI_PYTHON="$IMAGPOSE_PYTHON"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
exec "$IMAGPOSE_PYTHON" "$REPO/scripts/demo.py" "$@"
