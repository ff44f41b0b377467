"""A bundle's run.sh: the board's one command (classify a source, or `--check` the bundle against its golden
outputs), POSIX sh, running the bundle's own tledge from lib/ and nothing from the current folder."""
from __future__ import annotations

from pathlib import Path

from tledge.devices.profiles import Family, Profile


RUN_SH = """#!/bin/sh
# Classify with tledge on this board ({device}). Usage: ./run.sh [SOURCE] [more tledge run options]
# SOURCE: a camera index (default 0), picamera2, an image, a folder, a video, a URL or a GStreamer pipeline.
# MODEL=<file in model/> ./run.sh ... picks another model file of this bundle (e.g. the CPU fallback).
# ./run.sh --check [--json] [--junit FILE]: every model file of the bundle against the Keras outputs stored
# at export (model/golden.npz); exit 0 = the board agrees, 1 = it disagrees, 2 = the bundle is not intact.
set -eu
SELF=$(readlink -f -- "$0" 2>/dev/null || echo "$0")  # run.sh through a symbolic link: the bundle is the target's
HERE=$(CDPATH= cd -- "$(dirname -- "$SELF")" && pwd)  # CDPATH: cd printed the folder, HERE got two lines
if [ -n "${{PYTHON:-}}" ]; then PY=$PYTHON
elif [ -x "$HERE/.venv/bin/python" ]; then PY="$HERE/.venv/bin/python"
else PY=python3; fi
# compiled code in the user's cache, never lib/__pycache__: --check hashes lib/'s sources, and a .pyc put beside them
# (a tampered tarball) ran instead of the source it names
# (no writable home cache: a folder of this user's own in the temporary folder, mode 700, else compiled each start)
if [ -z "${{PYTHONPYCACHEPREFIX:-}}" ]; then
  C=""  # no XDG_CACHE_HOME and no HOME (a service, env -i): no home cache (root could create any folder named)
  if [ -n "${{XDG_CACHE_HOME:-}}" ]; then C="$XDG_CACHE_HOME/tledge"; elif [ -n "${{HOME:-}}" ]; then C="$HOME/.cache/tledge"; fi
  T="${{TMPDIR:-/tmp}}/tledge-pycache-$(id -u)"
  if [ -n "$C" ] && mkdir -p "$C" 2>/dev/null && [ -w "$C" ]; then PYTHONPYCACHEPREFIX="$C/pycache"
  elif {{ mkdir -m 700 "$T" 2>/dev/null || true; }} && [ -d "$T" ] && [ ! -L "$T" ] && [ -O "$T" ] \
      && [ "$(ls -ld "$T" | cut -c5-10)" = "------" ]; then PYTHONPYCACHEPREFIX="$T"
  else PYTHONPYCACHEPREFIX=/nonexistent/tledge-pycache; PYTHONDONTWRITEBYTECODE=1; export PYTHONDONTWRITEBYTECODE; fi
fi
export PYTHONPYCACHEPREFIX
NOCWD="import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]"  # -c puts the current folder first
# tledge from lib/ (its path the first argument: PYTHONPATH split a folder named with a `:`), never from the current
# folder (`python -m tledge` in a folder holding a tledge/ checkout ran that)
TLEDGE="$NOCWD
sys.path.insert(0, sys.argv.pop(1))
from tledge.cli import main
sys.exit(main(sys.argv[1:]))"
given() {{  # whether the user's options ("$@" after $1) give option $1: then run.sh's own value of it is left out
  o=$1; shift
  for a in "$@"; do case "$a" in "$o"|"$o"=*) return 0 ;; esac; done
  return 1
}}
own() {{  # run.sh's options for tledge: the device profile and thread count, unless the user gives them
  OWN=""
  if [ -n "$DEVICE" ] && ! given --device "$@"; then OWN="--device $DEVICE"; fi
  if [ -n "$THREADS" ] && ! given --threads "$@"; then OWN="$OWN --threads $THREADS"; fi
}}
DEVICE={device}
THREADS={threads}
importable() {{  # LiteRT, else tflite-runtime (tledge runs on either)
  "$PY" -c "$NOCWD; import $1" 2>/dev/null \\
      || {{ [ "${{1#*ai_edge_litert}}" != "$1" ] && "$PY" -c "$NOCWD; import $(echo "$1" | sed 's/ai_edge_litert/tflite_runtime.interpreter/')" 2>/dev/null; }}
}}
need() {{
  if ! importable "$1"; then
    echo "run.sh: $1 cannot be imported by $PY; install the runtime (README.md):" >&2
    echo "  cd \\"$HERE\\" && {venv_line} && .venv/bin/pip install -r requirements.txt" >&2{board_hint}
    exit 2
  fi
}}
if [ "${{1:-}}" = "--check" ]; then
  shift
  # first the code against bundle.json (-I: nothing from lib/ runs before it is checked; no file added to lib/);
  # the model files are tledge parity's to check (model/manifest.json)
  "$PY" -I -c 'import hashlib, json, pathlib, sys
top = pathlib.Path(sys.argv[1])
try:
    listed = json.loads((top / "bundle.json").read_text())["sha256"]
    assert isinstance(listed, dict) and all(isinstance(h, str) for h in listed.values())
except (OSError, ValueError, KeyError, TypeError, AssertionError, RecursionError) as exc:
    sys.exit(f"run.sh: the bundle is not intact: bundle.json unreadable ({{type(exc).__name__}})")
bad = [f for f, h in sorted(listed.items()) if not f.startswith("model/") and (not (top / f).is_file()
       or hashlib.sha256((top / f).read_bytes()).hexdigest() != h)]
bad += [str(f.relative_to(top)) + (" (a link)" if f.is_symlink() else " (not in the bundle)")
        for f in sorted((top / "lib").rglob("*")) if f.is_symlink()
        or (f.is_file() and "__pycache__" not in f.parts and str(f.relative_to(top)) not in listed)]
if bad:
    sys.exit("run.sh: the bundle is not intact (changed, missing or added since tledge bundle): " + ", ".join(bad[:5]))' "$HERE" || exit 2
  need numpy
  ANY=""  # the files whose runtime is installed are checked, the others said (a Jetson venv without LiteRT)
  for m in {check_list}; do if importable "$m"; then ANY=1; fi; done
  [ -n "$ANY" ] || need "{check_modules}"
  own "$@"
  exec "$PY" -c "$TLEDGE" "$HERE/lib" parity --golden "$HERE" $OWN "$@"
fi
SOURCE=0  # options without a SOURCE (./run.sh --json) are options: camera 0
if [ $# -gt 0 ] && [ -z "$1" ]; then  # `./run.sh "$UNSET"` opened camera 0
  echo "run.sh: the source is empty (an unset shell variable?): pass a camera index, an image, a folder, a video, a URL or a pipeline" >&2
  exit 2
fi
case "${{1:-}}" in -*) ;; *) if [ $# -gt 0 ]; then
  SOURCE=$1; shift
  if given --source "$@"; then echo "run.sh: a SOURCE and --source: pass one of them" >&2; exit 2; fi
fi ;; esac
MODEL=${{MODEL:-{model}}}
case "$MODEL" in *.onnx) BACKEND=onnxruntime ;; *) BACKEND=ai_edge_litert ;; esac
{plain_file_case}
need "numpy, cv2, $BACKEND"
own "$@"
if ! given --source "$@"; then set -- --source "$SOURCE" "$@"; fi  # `./run.sh --json --source x.jpg`: x.jpg
exec "$PY" -c "$TLEDGE" "$HERE/lib" run "$HERE/model/$MODEL" $OWN "$@"
"""


def venv_flag_of(profile: Profile) -> str:
    """The board's venv sees the system's packages (picamera2 and libcamera from apt; JetPack's OpenCV, CUDA)."""
    return " --system-site-packages" if profile.family in (Family.RPI, Family.JETSON) else ""


def venv_line(profile: Profile) -> str:
    """How the bundle's .venv is made: the profile's own line where it makes it with another Python than the
    system's python3 (the Jetson Nano's is 3.6: pyenv's 3.11), else python3 -m venv."""
    for ln in profile.install:
        if "-m venv" in ln and not ln.lstrip().startswith("python3 -m venv"):
            return ln.split("#")[0].strip().replace("~/tledge-venv", ".venv")
    return f"python3 -m venv{venv_flag_of(profile)} .venv"


def run_sh(profile: Profile, model: str, threads: int | None = None, models: tuple[str, ...] = ()) -> str:
    """threads: only when chosen explicitly at bundle time (the profile's own count comes with --device).
    models: every model file the bundle ships (their backends must import for `--check`)."""
    plain = ""
    if any(t.delegates for t in profile.targets):  # a plain file must not ask for the accelerator's delegate
        plain = 'case "$MODEL" in *_edgetpu.tflite) ;; *) DEVICE="" ;; esac'
    kinds = {Path(m).suffix for m in (models or (model,))}
    check = ", ".join(mod for suffix, mod in ((".tflite", "ai_edge_litert"), (".onnx", "onnxruntime"))
                      if suffix in kinds)
    hint = ("\n    echo \"  (onnxruntime-gpu and OpenCV come from JetPack / the Jetson Zoo wheel, not from pip: "
            "README.md)\" >&2") if profile.family is Family.JETSON and "onnxruntime" not in profile.pip else ""
    return RUN_SH.format(device=profile.name, model=model, threads=int(threads) if threads else '""',
                         plain_file_case=plain,
                         check_modules=check or "ai_edge_litert", check_list=check.replace(",", "") or "ai_edge_litert",
                         venv_line=venv_line(profile), board_hint=hint)
