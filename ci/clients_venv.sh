#!/usr/bin/env bash
# MediaPipe Tasks as an app developer has it, on tledge files: a venv with `pip install -e .[runtime,clients]
# pytest` (mediapipe brings opencv-contrib-python, a second `cv2` that must not share a venv with the main
# one's opencv-python-headless; no TensorFlow), running tests/test_clients_mediapipe.py against a real export:
# the hymenoptera MobileNet 0.25 with every TFLite precision, made with TensorFlow in the main venv by
# ci/arm64_ref.py --all-tflite and cached under ${TLEDGE_CLIENTS_CACHE:-~/.cache/tledge-clients}, keyed by
# the code (any tledge/*.py change re-exports: training + export, a few minutes).
#
#   ci/clients_venv.sh            (PYTHON: the main venv's python, default .venv/bin/python)
#
# The venv is cached under ${TLEDGE_VENV_CACHE:-~/.cache/tledge-venvs}, keyed by pyproject.toml's sha256.
# Warm (venv and export cached): 39 s measured; cold about 9 min at load 4-6. Exit: 0 passed, or a SKIP: line (pip cannot reach the
# registry; no shared assets or no TensorFlow for the export: then only the tests that need no export run);
# 1 failed.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TLEDGE_VENV_CACHE:-$HOME/.cache/tledge-venvs}
REF=${TLEDGE_CLIENTS_CACHE:-$HOME/.cache/tledge-clients}/ref
ASSETS=${TLEDGE_SHARED_ASSETS:-$REPO/../shared/assets}
MAIN_PY=${PYTHON:-$REPO/.venv/bin/python}
BASE_PY=${BASE_PYTHON:-python3}
KEY=$(sha256sum "$REPO/pyproject.toml" | cut -c1-12)
t0=$(date +%s)

log() { echo "clients_venv: $*" >&2; }
# shellcheck source=ci/venv.sh
. "$REPO/ci/venv.sh"

reference_export() {  # the export folder on stdout, or nothing (with a SKIP: line) when it cannot be made
  if [ ! -d "$ASSETS/hymenoptera_data" ] || [ ! -d "$ASSETS/keras_imagenet_weights" ]; then
    echo "SKIP: shared assets not available at $ASSETS: MediaPipe checked on probe models only" >&2; return 0
  fi
  if ! "$MAIN_PY" -c "import tensorflow" 2>/dev/null; then
    echo "SKIP: no TensorFlow in $MAIN_PY to make the export: MediaPipe checked on probe models only" >&2; return 0
  fi
  mkdir -p "$REF"
  local ref_log=$REF/../ref.log  # TensorFlow's chatter while it trains and exports
  if ! PYTHONPATH="$REPO" "$MAIN_PY" "$REPO/ci/arm64_ref.py" --assets "$ASSETS" --out "$REF" --all-tflite \
      2>"$ref_log" | tail -n 1; then
    tail -20 "$ref_log" >&2; return 1
  fi
  grep -E "^(reusing|reference export)" "$ref_log" | sed 's/^/clients_venv: /' >&2 || true
}

rc=0
py=$(cached_venv clients -e "$REPO[runtime,clients]" pytest) || rc=$?
if [ "$rc" -eq 3 ]; then echo "SKIP: pip cannot reach the package registry: no MediaPipe venv"; exit 0; fi
[ "$rc" -eq 0 ] || exit 1
"$py" - <<'PY' || { log "the clients venv is not as it must be"; exit 1; }
import importlib.util, sys
bad = [m for m in ("tensorflow", "keras") if importlib.util.find_spec(m)]
missing = [m for m in ("mediapipe", "ai_edge_litert") if not importlib.util.find_spec(m)]
sys.exit(f"clients venv has {bad}, lacks {missing}" if bad or missing else 0)
PY
export_dir=$(reference_export) || { log "reference export failed"; exit 1; }
t1=$(date +%s)
cd "$REPO"
TLEDGE_CLIENTS_EXPORT="$export_dir" PYTHONPATH="$REPO" "$py" -m pytest -q -p no:cacheprovider tests/test_clients_mediapipe.py
log "MediaPipe tests $(( $(date +%s) - t1 )) s; in all $(( $(date +%s) - t0 )) s (export: ${export_dir:-none})"
