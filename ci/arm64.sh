#!/usr/bin/env bash
# Run things in a Raspberry Pi OS Bookworm 64-bit userland (Debian bookworm arm64) on an x86 CI host,
# through qemu-user-static. Needs root (debootstrap, chroot, mounts). No network at run time of the
# command itself is required; building the root and installing wheels needs Debian's mirror and PyPI.
#
#   ci/arm64.sh setup                    tools + binfmt + the cached root (build it when missing)
#   ci/arm64.sh install REQUIREMENTS     a venv in the root (/opt/tledge-venv) with those requirements;
#                                        cached by the file's sha256 (an unchanged file costs nothing)
#   ci/arm64.sh run DIR -- CMD...        copy DIR to /work/<name> in the root, run CMD there (chroot),
#                                        exit with CMD's exit code
#   ci/arm64.sh check EXPORT [N]         tledge bundle EXPORT --device rpi5, then the bundle's run.sh on N
#                                        hymenoptera val photos (default 30) inside the root and on this
#                                        host, per model file; a table file / agreement / max score diff
#                                        (and $CACHE/check.json: figures, per-photo top-1, the CPU line)
#   ci/arm64.sh ci [N]                   `check` on the cached reference export (ci/arm64_ref.py makes it)
#
# Skips: where something cannot work here (not root, no qemu-aarch64 binfmt and no way to get it, no
# debootstrap, no network to build the root, no shared photos), prints one "SKIP: reason" line and
# exits 0, or exits 77 when TLEDGE_ARM64_REQUIRED=1. Other exit codes: 0 passed, 1 a difference found
# or the command failed, 2 bad usage.
#
# Environment: TLEDGE_ARM64_ROOT (default ~/.cache/tledge-arm64/bookworm), TLEDGE_ARM64_MIRROR
# (default http://deb.debian.org/debian), PYTHON (host python with tledge's runtime; default
# .venv/bin/python, else python3), TLEDGE_SHARED_ASSETS (default ../shared/assets),
# TLEDGE_ARM64_CPU (the CPU qemu emulates for everything run in the root, one of
# `qemu-aarch64-static -cpu help`: cortex-a72 = a Pi 4's features (no dot product), cortex-a76 = a Pi 5's
# (dotprod), max = all qemu knows (dotprod, i8mm, SVE, SME); properties as qemu takes them, e.g.
# max,sme=off; unset = qemu's default, max). Under max with SME, XNNPACK's int8 path gives wrong outputs on
# qemu 7.2 (measured, docs/int8-fidelity.md "ARM kernel paths"): use max,sme=off there. It reaches the
# emulated processes as QEMU_CPU in the root's environment (binfmt starts a new qemu at every exec);
# when set, the root also gets a /sys with the CPU lists only, so XNNPACK initialises (see mount_root).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${TLEDGE_ARM64_CACHE:-$HOME/.cache/tledge-arm64}
ROOT=${TLEDGE_ARM64_ROOT:-$CACHE/bookworm}
MIRROR=${TLEDGE_ARM64_MIRROR:-http://deb.debian.org/debian}
ASSETS=${TLEDGE_SHARED_ASSETS:-$REPO/../shared/assets}
VENV=/opt/tledge-venv
# what the root holds besides minbase: Pi OS Bookworm's Python 3.11 and venv (OpenCV's headless wheel needs
# no system libraries). Changing this list rebuilds the cached root.
PKGS=python3,python3-venv,python3-pip,ca-certificates

log() { echo "arm64: $*" >&2; }
skip() {
  echo "SKIP: $*"
  if [ "${TLEDGE_ARM64_REQUIRED:-0}" = 1 ]; then exit 77; fi
  exit 0
}
die() { echo "arm64: error: $1" >&2; exit "${2:-1}"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

host_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"
  else echo python3; fi
}

# ---- tools and binfmt ------------------------------------------------------------------------------
binfmt_ok() { [ -r /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; }

ensure_tools() {
  [ "$(id -u)" = 0 ] || skip "not root (debootstrap, chroot and binfmt registration need root)"
  [ "$(uname -m)" = x86_64 ] || [ "$(uname -m)" = aarch64 ] || skip "host $(uname -m) is neither x86_64 nor aarch64"
  mkdir -p "$CACHE"
  if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
    if command -v apt-get >/dev/null; then
      log "installing qemu-user-static and debootstrap (apt-get)"
      (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static debootstrap) \
        >"$CACHE/apt.log" 2>&1 || skip "apt-get install qemu-user-static debootstrap failed (see $CACHE/apt.log)"
    else
      skip "qemu-user-static and debootstrap are not installed and there is no apt-get"
    fi
  fi
}

ensure_binfmt() {
  [ "$(uname -m)" = aarch64 ] && return 0  # native: nothing to emulate
  binfmt_ok && return 0
  if [ ! -w /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
      || skip "binfmt_misc is not mounted and cannot be mounted here (a container without privileges?)"
  fi
  local interp=/usr/libexec/qemu-binfmt/aarch64-binfmt-P
  [ -x "$interp" ] || interp=$(command -v qemu-aarch64-static)
  # the F flag opens the interpreter now, so it works inside the chroot without a copy of qemu there
  local magic='\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
  local mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
  local flags=OCF
  [ "$interp" = /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] && flags=OPF
  echo ":qemu-aarch64:M::$magic:$mask:$interp:$flags" >/proc/sys/fs/binfmt_misc/register 2>/dev/null \
    || skip "cannot register the qemu-aarch64 binfmt handler"
  binfmt_ok || skip "qemu-aarch64 binfmt handler registered but not enabled"
  log "registered qemu-aarch64 in binfmt_misc ($interp)"
}

# ---- the root --------------------------------------------------------------------------------------
ensure_root() {
  if [ -f "$ROOT/.tledge-root-ready" ] && grep -qxF "packages $PKGS" "$ROOT/.tledge-root-ready"; then
    log "reusing $ROOT ($(head -1 "$ROOT/.tledge-root-ready"))"
    return 0
  fi
  local tmp="$ROOT.building" t0
  t0=$(now)
  rm -rf "$tmp"
  mkdir -p "$(dirname "$ROOT")"
  log "building a Debian bookworm arm64 root in $ROOT (debootstrap --variant=minbase, a few minutes)"
  if ! debootstrap --arch=arm64 --variant=minbase --include="$PKGS" bookworm "$tmp" "$MIRROR" \
      >"$CACHE/debootstrap.log" 2>&1; then
    umount_all "$tmp"
    if grep -qiE 'resolv|connect|download|Failed getting release' "$CACHE/debootstrap.log"; then
      skip "debootstrap could not reach $MIRROR (see $CACHE/debootstrap.log)"
    fi
    tail -5 "$CACHE/debootstrap.log" >&2
    # not the product's fault (a container that cannot mknod or chroot, a broken mirror): say so, skip
    skip "debootstrap failed on this host (see $CACHE/debootstrap.log)"
  fi
  umount_all "$tmp"
  rm -rf "$ROOT"
  printf 'built %s in %s s, %s\npackages %s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(since "$t0")" \
    "$(chroot "$tmp" python3 --version 2>&1)" "$PKGS" >"$tmp/.tledge-root-ready"
  mv "$tmp" "$ROOT"
  log "$(head -1 "$ROOT/.tledge-root-ready")"
}

umount_all() {  # everything mounted under $1, deepest first
  local r
  r=$(realpath "$1" 2>/dev/null) || return 0
  awk -v r="$r" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

mount_root() {
  trap 'umount_all "$ROOT"' EXIT
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc" || skip "cannot mount /proc in the arm64 root here"
  mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev" || skip "cannot bind-mount /dev in the arm64 root here"
  # no /sys: XNNPACK's cpuinfo then says "Error in cpuinfo: failed to parse ... /sys/devices/system/cpu/present"
  # and goes on; with the host's /sys mounted it crashes under qemu (SIGSEGV, measured)
  if [ -n "${TLEDGE_ARM64_CPU:-}" ]; then
    # a /sys holding only the CPU lists: cpuinfo (XNNPACK's, onnxruntime's) then initialises and picks kernels
    # by the emulated CPU's HWCAP, as on a board. Without it LiteRT creates no XNNPACK delegate at all and
    # runs its builtin kernels (measured: no "Created TensorFlow Lite XNNPACK delegate" line under qemu)
    mkdir -p "$CACHE/sys/devices/system/cpu"
    echo 0-3 >"$CACHE/sys/devices/system/cpu/possible"
    echo 0-3 >"$CACHE/sys/devices/system/cpu/present"
    mountpoint -q "$ROOT/sys" || mount --bind "$CACHE/sys" "$ROOT/sys" || skip "cannot bind-mount /sys in the arm64 root here"
  fi
  mkdir -p "$ROOT/etc/ssl/certs"
  # the host's CA bundle (a TLS-inspecting proxy's CA is in it) and resolver, for pip
  [ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/tledge-host-ca.crt"
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
}

in_root() {  # in_root WORKDIR CMD...: run CMD in the root with a clean environment
  local wd=$1 cpu=()
  shift
  # QEMU_CPU in the environment of every exec (an empty QEMU_CPU is an error to qemu: only when set)
  [ -n "${TLEDGE_ARM64_CPU:-}" ] && cpu=("QEMU_CPU=$TLEDGE_ARM64_CPU")
  env ${cpu[@]+"${cpu[@]}"} chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=$VENV/bin:/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/tledge-host-ca.crt SSL_CERT_FILE=/etc/ssl/certs/tledge-host-ca.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 TLEDGE_THREADS="${TLEDGE_THREADS:-}" ${cpu[@]+"${cpu[@]}"} \
    /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$wd" "$@"
}

check_cpu() {  # TLEDGE_ARM64_CPU must be a CPU this qemu knows (exit 2 otherwise); nothing to do natively
  local cpu=${TLEDGE_ARM64_CPU:-}
  [ -n "$cpu" ] || return 0
  if [ "$(uname -m)" = aarch64 ]; then
    log "TLEDGE_ARM64_CPU=$cpu ignored: native aarch64, nothing is emulated"
    unset TLEDGE_ARM64_CPU
    return 0
  fi
  local known  # (the whole list first: grep -q would stop reading, and pipefail would count qemu's SIGPIPE)
  known=$(qemu-aarch64-static -cpu help 2>/dev/null | awk 'NR > 1 { print $1 }') || true
  grep -qxF -- "${cpu%%,*}" <<<"$known" \
    || die "TLEDGE_ARM64_CPU=$cpu is not a CPU qemu-aarch64 knows (qemu-aarch64-static -cpu help)" 2
}

setup() {
  ensure_tools
  check_cpu
  mkdir -p "$CACHE"
  ensure_binfmt
  ensure_root
}

# ---- commands --------------------------------------------------------------------------------------
cmd_install() {
  local reqs=$1 sum t0
  [ -f "$reqs" ] || die "requirements file not found: $reqs" 2
  setup
  mount_root
  sum=$(sha256sum "$reqs" | cut -c1-16)
  if [ -f "$ROOT$VENV/.reqs-$sum" ]; then
    log "venv already has $reqs ($sum)"
    return 0
  fi
  t0=$(now)
  cp "$reqs" "$ROOT/tmp/requirements.txt"
  [ -x "$ROOT$VENV/bin/python" ] || in_root / python3 -m venv "$VENV"
  if ! in_root / "$VENV/bin/pip" install -q -r /tmp/requirements.txt >"$CACHE/pip.log" 2>&1; then
    tail -5 "$CACHE/pip.log" >&2
    if grep -qiE 'connection|resolve|SSL|timed out' "$CACHE/pip.log"; then
      skip "pip in the arm64 root could not reach PyPI (see $CACHE/pip.log)"
    fi
    die "pip install -r $reqs failed in the arm64 root (see $CACHE/pip.log)"
  fi
  rm -f "$ROOT$VENV"/.reqs-*
  touch "$ROOT$VENV/.reqs-$sum"
  log "installed $reqs in $(since "$t0") s: $(in_root / "$VENV/bin/pip" freeze 2>/dev/null | tr '\n' ' ')"
}

cmd_run() {
  local dir=$1 name rc=0
  shift
  [ "${1:-}" = -- ] && shift
  [ -d "$dir" ] || die "folder not found: $dir" 2
  [ $# -gt 0 ] || die "usage: ci/arm64.sh run DIR -- CMD..." 2
  setup
  mount_root
  name=$(basename "$(realpath "$dir")")
  rm -rf "$ROOT/work/$name"
  mkdir -p "$ROOT/work"
  cp -a "$dir" "$ROOT/work/$name"
  in_root "/work/$name" "$@" || rc=$?
  return $rc
}

cmd_check() {
  local export=$1 n=${2:-30} py
  [ -f "$export/tledge.json" ] || die "not an export folder (no tledge.json): $export" 2
  [ -d "$ASSETS/hymenoptera_data/val" ] || skip "shared photos not available: $ASSETS/hymenoptera_data/val"
  setup
  py=$(host_python)
  TLEDGE_ARM64_ROOT="$ROOT" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$py" "$HERE/arm64_check.py" "$export" --images "$ASSETS/hymenoptera_data/val" \
    --n "$n" --arm64 "$0" --work "$CACHE/check" --json "$CACHE/check.json"
}

cmd_ci() {
  local n=${1:-30} py export
  [ -d "$ASSETS/hymenoptera_data/val" ] || skip "shared photos not available: $ASSETS/hymenoptera_data"
  setup
  py=$(host_python)
  # the folder is the last stdout line (converters print their own chatter to stdout)
  export=$(PYTHONPATH="$REPO" "$py" "$HERE/arm64_ref.py" --assets "$ASSETS" --out "$CACHE/ref" | tail -n 1) \
    || die "reference export failed"
  cmd_check "$export" "$n"
}

main() {
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case "$cmd" in
    setup) setup ;;
    install) [ $# = 1 ] || die "usage: ci/arm64.sh install REQUIREMENTS" 2; cmd_install "$1" ;;
    run) [ $# -ge 2 ] || die "usage: ci/arm64.sh run DIR -- CMD..." 2; cmd_run "$@" ;;
    check) [ $# -ge 1 ] || die "usage: ci/arm64.sh check EXPORT [N]" 2; cmd_check "$@" ;;
    ci) cmd_ci "$@" ;;
    *) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" >&2; exit 2 ;;
  esac
}

main "$@"
