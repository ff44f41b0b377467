#!/usr/bin/env bash
# The runtime as a Raspberry Pi gets it: a venv with only `pip install -e .[runtime] pytest` (no
# TensorFlow), at the lowest versions pyproject.toml declares (ci/minimums.txt), then the tests that need
# no TensorFlow (marker `runtime_only`, plus the runtime / contract / device test files whose TensorFlow
# parts skip). A second venv has tflite-runtime 2.14 +
# numpy<2 + OpenCV and no ai-edge-litert: `tledge run` on Coral's cat.bmp there.
#
#   ci/runtime_venv.sh            all three
#   ci/runtime_venv.sh runtime    the [runtime] venv and its tests only
#   ci/runtime_venv.sh tflite     the tflite-runtime venv check only
#   ci/runtime_venv.sh wheel      the built wheel installed with [runtime] in a venv of its own, run outside the checkout
#
# Venvs are cached under ${TLEDGE_VENV_CACHE:-~/.cache/tledge-venvs}, keyed by pyproject.toml's sha256:
# a few seconds when cached, about a minute to build. Exit: 0 passed (or SKIP: line), 1 failed.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TLEDGE_VENV_CACHE:-$HOME/.cache/tledge-venvs}
ASSETS=${TLEDGE_SHARED_ASSETS:-$REPO/../shared/assets}
BASE_PY=${BASE_PYTHON:-python3}
KEY=$(sha256sum "$REPO/pyproject.toml" | cut -c1-12)
# test files the runtime-only venv runs: on the committed tests/assets/tiny export, no TensorFlow needed
RUNTIME_TESTS=(tests/test_runtime_only.py tests/test_doctor.py tests/test_cold_start.py tests/test_ci_scripts.py tests/test_contract.py tests/test_runtime_core.py tests/test_runtime_library.py tests/test_cli_run.py
               tests/test_runtime_sources.py tests/test_live_sources.py tests/test_devices.py tests/test_devices_edgetpu.py tests/test_bundle.py tests/test_bundle_e2e.py
               tests/test_golden.py tests/test_run_sources_outputs.py tests/test_parity_ci_files.py tests/test_hostile_side_files.py
               tests/test_runtime_api_args.py tests/test_info_folder.py tests/test_non_utf8_names.py
               tests/test_foreign_tflite_output.py tests/test_score_calibration.py tests/test_phone_photos.py
               tests/test_run_at_scale.py tests/test_runtime_service.py tests/test_parity_ci_strict.py tests/test_outputs_strict.py
               tests/test_tflite_scales.py tests/test_portability.py tests/test_edgetpu_fallback.py
               tests/test_header_evasions.py tests/test_memory_limits.py tests/test_source_text.py
               tests/test_public_api_types.py tests/test_bench_figures.py tests/test_trt_engine_cache.py
               tests/test_images_labels.py tests/test_parity_stats.py)

log() { echo "runtime_venv: $*" >&2; }
# shellcheck source=ci/venv.sh
. "$REPO/ci/venv.sh"

no_tensorflow() {  # the venv must not have TensorFlow or LiteRT's converter stack in it
  "$1" - <<'PY'
import importlib.util, sys
bad = [m for m in ("tensorflow", "keras", "tf_keras", "tf2onnx", "onnx") if importlib.util.find_spec(m)]
if bad:
    sys.exit(f"runtime venv has {bad}: it must not")
PY
}

labels_as_keras() {  # labels_as_keras PYTHON JSONL: `tledge run --json` output labels the tiny export's images as Keras did
  "$1" - "$2" "$REPO/tests/assets/tiny/reference.json" <<'PY'
import json, sys
from pathlib import Path
ref = json.loads(Path(sys.argv[2]).read_text())
rows = [json.loads(x) for x in Path(sys.argv[1]).read_text().splitlines()]
want = {k: ref["labels"][max(range(len(v)), key=v.__getitem__)] for k, v in ref["keras_probabilities"].items()}
got = {Path(r["source"]).name: r["top"][0]["label"] for r in rows if r["status"] == "ok"}
sys.exit(0 if got == want else f"labels {got} != {want}")
PY
}

runtime() {
  local py t0
  t0=$(date +%s)
  # `|| return 1` on each step: `runtime || rc=1` below runs this function with set -e off, so a failing
  # pytest went on to the log line and the step "passed" (a failure in the runtime venv was lost that way)
  # at the declared minimums (ci/minimums.txt): numpy 1.x as on a board, an older onnxruntime (a venv of its own key)
  local KEY
  KEY=$(cat "$REPO/pyproject.toml" "$REPO/ci/minimums.txt" | sha256sum | cut -c1-12)
  py=$(cached_venv runtime-min -c "$REPO/ci/minimums.txt" -e "$REPO[runtime]" pytest) || return 1
  no_tensorflow "$py" || return 1
  cd "$REPO"
  # -p no:cacheprovider: the shared checkout is not written to
  PYTHONPATH="$REPO" "$py" -m pytest -q -p no:cacheprovider -m "not slow" "${RUNTIME_TESTS[@]}" || return 1
  log "runtime tests without TensorFlow: $(( $(date +%s) - t0 )) s"
}

tflite() {
  local py img model labels t0 out rc=0
  t0=$(date +%s)
  model="$ASSETS/coral_tflite_classifiers/mobilenet_v2_1.0_224_quant.tflite"  # (the 0.25 / 128 file: a near-tie)
  img="$ASSETS/coral_tflite_classifiers/test_images/cat.bmp"
  labels="$ASSETS/coral_tflite_classifiers/imagenet_labels.txt"
  py=$(cached_venv tflite214 -e "$REPO" "tflite-runtime==2.14.0" "numpy<2" "opencv-python-headless<4.11") || return 1
  "$py" -c "import ai_edge_litert" 2>/dev/null && { echo "tflite venv has ai_edge_litert: it must not" >&2; return 1; }
  cd "$REPO"
  # (1) a file made elsewhere (no tledge metadata): Coral's MobileNet on cat.bmp
  if [ ! -f "$model" ]; then
    echo "SKIP: shared asset not available: $model"
  elif out=$(PYTHONPATH="$REPO" "$py" -m tledge run "$model" --source "$img" --labels "$labels" 2>&1) \
      && grep -q "Egyptian cat" <<<"$out"; then
    log "tflite-runtime 2.14: tledge run labels cat.bmp 'Egyptian cat'"
  else
    echo "$out" >&2; log "tflite-runtime 2.14: tledge run on Coral's cat.bmp FAILED"; rc=1
  fi
  # (2) a tledge export (contract embedded as metadata): the committed tiny model on its images
  if out=$(PYTHONPATH="$REPO" "$py" -m tledge run tests/assets/tiny/model_int8.tflite --source tests/assets/tiny/images \
      --json 2>&1 >/tmp/tledge-tflite214.jsonl) && labels_as_keras "$py" /tmp/tledge-tflite214.jsonl
  then
    log "tflite-runtime 2.14: tledge run labels the tiny export's images as Keras does"
  else
    echo "$out" | tail -3 >&2; log "tflite-runtime 2.14: tledge run on tests/assets/tiny/model_int8.tflite FAILED"; rc=1
  fi
  # (3) a deploy bundle as a board with tflite-runtime (no LiteRT) runs it: run.sh --check and run.sh on a folder
  # (run.sh asked for ai_edge_litert alone and refused, exit 2, although tledge runs on tflite-runtime)
  out=$(mktemp -d)
  if PYTHONPATH="$REPO" "$py" -m tledge bundle tests/assets/tiny --device rpi5 --out "$out/b.tar.gz" -q >/dev/null 2>&1 \
      && tar -xzf "$out/b.tar.gz" -C "$out" && PYTHON="$py" sh "$out"/*/run.sh --check >"$out/check.log" 2>&1 \
      && PYTHON="$py" sh "$out"/*/run.sh tests/assets/tiny/images --json >"$out/run.jsonl" 2>/dev/null \
      && labels_as_keras "$py" "$out/run.jsonl"; then
    log "tflite-runtime 2.14: a bundle's run.sh --check passes and run.sh labels the images as Keras does"
  else
    tail -3 "$out/check.log" >&2 2>/dev/null || true; log "tflite-runtime 2.14: the bundle's run.sh FAILED"; rc=1
  fi
  rm -rf "$out"
  log "tflite-runtime 2.14 venv checks: $(( $(date +%s) - t0 )) s"
  return $rc
}

wheel() {  # the wheel as a board installs it (`pip install 'tledge-*.whl[runtime]'`), run from outside the checkout:
  # catches a module, package or data file the wheel leaves out, which the editable installs above never see
  local py tmp whl t0 out rc=0
  t0=$(date +%s)
  tmp=$(mktemp -d)
  rm -rf "$REPO/build"  # setuptools reuses build/: a module deleted since would still be in the wheel
  if ! "$BASE_PY" -m pip wheel -q --no-deps -w "$tmp/dist" "$REPO" >"$tmp/build.log" 2>&1; then
    if ! "$BASE_PY" -m pip index versions setuptools --retries 1 --timeout 30 >/dev/null 2>&1; then
      echo "SKIP: the wheel check: no package registry to build the wheel with (setuptools)"; rm -rf "$tmp"; return 0
    fi
    cat "$tmp/build.log" >&2; log "building the wheel FAILED"; rm -rf "$tmp"; return 1
  fi
  whl=$(ls "$tmp"/dist/tledge-*.whl)
  py=$(cached_venv wheel "$whl[runtime]") || rc=$?  # the dependencies are cached; the wheel is reinstalled each run
  if [ "$rc" = 3 ]; then echo "SKIP: the wheel check: pip cannot reach the package registry"; rm -rf "$tmp"; return 0; fi
  if [ "$rc" != 0 ]; then rm -rf "$tmp"; return 1; fi
  "$(dirname "$py")/pip" install -q --no-deps --force-reinstall "$whl" >&2
  no_tensorflow "$py"
  cd "$tmp"
  "$py" - <<'PY' || rc=1
import pathlib, sys, tledge
here = pathlib.Path(tledge.__file__).parent
if "site-packages" not in here.parts:
    sys.exit(f"tledge imported from {here}, not from the installed wheel")
missing = [n for n in ("py.typed", "runtime/backends.py", "contract.py", "cli/run.py") if not (here / n).exists()]
if missing:
    sys.exit(f"the wheel leaves out {missing}")
PY
  if out=$("$(dirname "$py")/tledge" run "$REPO/tests/assets/tiny/model_int8.tflite" --source "$REPO/tests/assets/tiny/images" \
      --json 2>&1 >"$tmp/run.jsonl") && labels_as_keras "$py" "$tmp/run.jsonl" \
      && out=$("$(dirname "$py")/tledge" info "$REPO/tests/assets/tiny/model_int8.onnx" 2>&1); then
    log "the wheel ($(basename "$whl")): tledge run and info work from outside the checkout"
  else
    echo "$out" | tail -3 >&2; log "the installed wheel: tledge run / info FAILED"; rc=1
  fi
  cd "$REPO"; rm -rf "$tmp"
  log "wheel check: $(( $(date +%s) - t0 )) s"
  return $rc
}

case "${1:-all}" in
  runtime) runtime ;;
  tflite) tflite ;;
  wheel) wheel ;;
  all) rc=0; runtime || rc=1; tflite || rc=1; wheel || rc=1; exit $rc ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
