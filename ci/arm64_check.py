"""Parity on the target: one export's bundle run by its own run.sh inside the arm64 root and on this host.

    python ci/arm64_check.py EXPORT --images DIR --arm64 ci/arm64.sh [--n 30] [--work DIR] [--json FILE]

Makes `tledge bundle EXPORT --device rpi5`, unpacks it, adds the export's other model files
(fp32/int8 TFLite and ONNX) to its model/ folder and onnxruntime to its requirements, installs those
in the root's venv (`arm64.sh install`), then runs `MODEL=<file> ./run.sh photos --json --top-k K`
for every model file inside the root (`arm64.sh run`) and on this host (PYTHON=this interpreter),
and compares per image: top-1 label and every class score. Prints a table (file, images,
agreement, max score diff, s/image arm64 and host) and exits 1 when a label differs or a score
differs by more than the file's tolerance (TOL below).

Tolerances, from the first run (MobileNet v1 0.25 at 224, 30 hymenoptera photos, every label agreed):
OpenCV 5.0's INTER_AREA resize gives +-1 pixel values on aarch64 vs x86 on 10 of 30 photos (decoding
is identical), which moves fp32 scores by up to 1.3e-4; fed identical inputs, fp32 TFLite differs by
3.8e-6, and int8 TFLite by up to 0.031 (8 output steps of 1/256), most likely XNNPACK's int8
kernels rounding differently on ARM and x86 layer after layer. Second measurement (2026-12-01, the
`warp-linear` resize of the export, 30 photos): int8 ONNX up to 0.063 (16 output steps; onnxruntime's ARM
and x86 int8 kernels), int8 TFLite 0.039 and one top-1 that differs on an exact tie (0.500 / 0.500 on
arm64, 0.516 / 0.484 on x86): int8 tolerance 0.06 -> 0.08, and a differing top-1 on a near-tie (either
side's two best scores within the tolerance) is reported but not failed (`compare`). Under qemu XNNPACK's cpuinfo cannot read
/sys ("Error in cpuinfo") and LiteRT then runs no XNNPACK delegate at all: the int8 TFLite differences above
were LiteRT's builtin kernels on arm64 against XNNPACK on x86. With TLEDGE_ARM64_CPU set (arm64.sh), the root
gets the /sys CPU lists, XNNPACK runs, and int8 TFLite is bit-exact vs x86 on identical pixels (ninth session,
docs/int8-fidelity.md "ARM kernel paths").

When the bundle's run.sh knows `--check` (golden outputs shipped in the bundle), that runs too,
inside the root, and its exit code counts.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

TOL = {"fp32": 5e-4, "fp16": 2e-3, "dynamic": 0.05, "int8": 0.08}


def pick_images(folder: Path, n: int) -> list[Path]:
    """n images taken in turn from each class folder (sorted), so every class is there."""
    from tledge.images import iter_image_files

    classes = sorted(p for p in folder.iterdir() if p.is_dir()) or [folder]
    per = [sorted(iter_image_files(c)) for c in classes]
    out: list[Path] = []
    i = 0
    while len(out) < n and any(i < len(p) for p in per):
        out += [p[i] for p in per if i < len(p)]
        i += 1
    return [Path(p) for p in out[:n]]


def make_bundle_dir(export: Path, work: Path, images: list[Path]) -> tuple[Path, list[str]]:
    from tledge.devices.bundle import make_bundle, requirement_lines

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    res = make_bundle(export, "rpi5", work / "bundle.tar.gz")
    with tarfile.open(res.path) as tar:
        tar.extractall(work, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(work)
    top = work / res.top
    models = [res.model] + [f.name for f in sorted(export.iterdir())
                            if f.suffix in (".tflite", ".onnx") and f.name != res.model]
    for name in models[1:]:
        shutil.copy2(export / name, top / "model" / name)
    # the export's whole manifest, so run.sh --check vouches for (and golden-checks) every model file added
    shutil.copy2(export / "manifest.json", top / "model" / "manifest.json")
    reqs = (top / "requirements.txt").read_text()
    if any(m.endswith(".onnx") for m in models) and "onnxruntime" not in reqs:
        reqs += "\n".join(requirement_lines(["onnxruntime"])) + "\n"
    (work / "requirements-arm64.txt").write_text(reqs)
    photos = top / "photos"
    photos.mkdir()
    for i, p in enumerate(images):
        shutil.copy2(p, photos / f"{i:03d}_{p.parent.name}_{p.name}")
    return top, models


def precision(name: str) -> str:
    for p in ("int8", "fp16", "dynamic", "fp32"):
        if p in name:
            return p
    return "fp32"


# what the process sees of its CPU: on aarch64 the kernel's HWCAP bits (qemu-user sets them from the CPU it
# emulates, TLEDGE_ARM64_CPU; /proc/cpuinfo is the host's there), elsewhere numpy's own detection
CPU_PROBE = r"""import ctypes, os, platform
bits1 = {1: "asimd", 10: "asimdhp", 20: "asimddp", 22: "sve"}
bits2 = {1: "sve2", 13: "i8mm", 14: "bf16", 23: "sme"}
feats = []
if platform.machine() == "aarch64":
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype = ctypes.c_ulong
    h1, h2 = getauxval(16), getauxval(26)
    feats = [n for b, n in bits1.items() if h1 >> b & 1] + [n for b, n in bits2.items() if h2 >> b & 1]
else:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as f
    except ImportError:
        from numpy.core._multiarray_umath import __cpu_features__ as f
    feats = [k.lower() for k in ("AVX2", "AVX512F", "AVX512VNNI", "AVXVNNI") if f.get(k)]
# cpuinfo (XNNPACK, onnxruntime) needs these; without them LiteRT runs no XNNPACK delegate
lists = all(os.path.exists("/sys/devices/system/cpu/" + n) for n in ("possible", "present"))
print(platform.machine(), os.environ.get("QEMU_CPU") or "-", " ".join(feats) or "none",
      "(/sys CPU lists: " + ("yes" if lists else "no: no XNNPACK") + ")")
"""

LOOP = r"""#!/bin/sh
# runs each model file through run.sh; output per file in out/
mkdir -p out
"${PYTHON:-python3}" cpu_probe.py > out/cpu.txt 2>&1
for m in "$@"; do
  s=$(date +%s.%N)
  MODEL=$m ./run.sh photos --json --top-k 5 > "out/$m.jsonl" 2> "out/$m.err"
  echo $? > "out/$m.rc"
  e=$(date +%s.%N)
  echo "$s $e" > "out/$m.time"
done
PYTHONPATH=lib "${PYTHON:-python3}" -m tledge doctor > out/doctor.txt 2>&1
if grep -q -- '--check' run.sh; then ./run.sh --check > out/check.txt 2>&1; echo $? > out/check.rc; fi
"""


def corrupted_check(top: Path, arm64: str, env: dict) -> int:
    """`run.sh --check` inside the root on a copy of the bundle whose golden outputs have each row's two
    largest scores swapped and whose manifest vouches for the edited file: the board must say it disagrees."""
    import hashlib

    import numpy as np

    bad = top.with_name(top.name + "-corrupted")
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(top, bad, ignore=shutil.ignore_patterns("out", "photos"))
    g = bad / "model" / "golden.npz"
    with np.load(g, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    ref = arrays["reference"].copy()
    order = np.argsort(ref, axis=1)
    rows = np.arange(len(ref))
    ref[rows, order[:, -1]], ref[rows, order[:, -2]] = ref[rows, order[:, -2]], ref[rows, order[:, -1]]
    arrays["reference"] = ref
    with open(g, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    manifest = bad / "model" / "manifest.json"
    m = json.loads(manifest.read_text())
    data = g.read_bytes()
    for e in m["files"]:
        if e["file"] == "golden.npz":
            e["sha256"], e["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    manifest.write_text(json.dumps(m, indent=2))
    return subprocess.run([arm64, "run", str(bad), "--", "./run.sh", "--check"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def run_loop(folder: Path, models: list[str], arm64: str | None, env: dict) -> Path:
    (folder / "loop.sh").write_text(LOOP)
    (folder / "cpu_probe.py").write_text(CPU_PROBE)
    os.chmod(folder / "loop.sh", 0o755)
    if arm64:
        cmd = [arm64, "run", str(folder), "--", "./loop.sh", *models]
        subprocess.run(cmd, check=True, env=env)
        root = Path(os.environ.get("TLEDGE_ARM64_ROOT", Path.home() / ".cache/tledge-arm64/bookworm"))
        return root / "work" / folder.name / "out"
    subprocess.run(["./loop.sh", *models], cwd=folder, check=True, env=env)
    return folder / "out"


def read_out(out: Path, model: str) -> tuple[dict, float, int]:
    rows = {}
    jl = out / f"{model}.jsonl"
    for line in jl.read_text().splitlines() if jl.is_file() else []:
        d = json.loads(line)
        rows[Path(d["source"]).name] = d
    rc = int((out / f"{model}.rc").read_text().strip() or 1) if (out / f"{model}.rc").is_file() else 1
    t = (out / f"{model}.time").read_text().split() if (out / f"{model}.time").is_file() else ["0", "0"]
    return rows, float(t[1]) - float(t[0]), rc


def cpu_line(arm_out: Path, host_out: Path) -> str:
    """One line: which CPU qemu emulated and the features each side's process saw."""
    def seen(out: Path) -> list[str]:
        f = out / "cpu.txt"
        parts = f.read_text().strip().split(maxsplit=2) if f.is_file() else []
        return parts + ["?"] * (3 - len(parts))

    arm, host = seen(arm_out), seen(host_out)
    cpu = os.environ.get("TLEDGE_ARM64_CPU") or "qemu's default (max)"
    return f"emulated CPU: {cpu}; the arm64 process saw {arm[0]} with {arm[2]}; this host: {host[0]} with {host[2]}"


def top1(rows: dict) -> dict:
    return {k: [v["top"][0]["index"], v["top"][0]["score"]] for k, v in rows.items() if v.get("top")}


def p50_ms(out: Path, model: str) -> float | None:
    """run.sh's summary line: 'inference p50 X ms' (the model alone, without process start)."""
    import re

    err = out / f"{model}.err"
    m = re.search(r"inference p50 ([\d.]+) ms", err.read_text()) if err.is_file() else None
    return float(m.group(1)) if m else None


def compare(a: dict, b: dict, tol: float = 0.0) -> tuple[float, float, int, int]:
    """(top-1 agreement, max abs score difference over the top-k classes of both, images compared, real
    flips). A top-1 that differs where either side's two best scores are within `tol` of each other is a
    near-tie the allowed score difference already explains (seen: 0.500 / 0.500 on arm64, 0.516 / 0.484 on
    x86): it lowers the agreement but is not a real flip."""
    names = sorted(set(a) & set(b))
    agree, diff, flips = 0, 0.0, 0
    for n in names:
        ta, tb = a[n].get("top") or [], b[n].get("top") or []
        if ta and tb and ta[0]["index"] == tb[0]["index"]:
            agree += 1
        elif not (ta and tb and min(_margin(ta), _margin(tb)) <= tol):
            flips += 1
        sa = {p["index"]: p["score"] for p in ta}
        sb = {p["index"]: p["score"] for p in tb}
        for k in set(sa) & set(sb):
            diff = max(diff, abs(sa[k] - sb[k]))
    return (agree / len(names) if names else 0.0), diff, len(names), flips


def _margin(top: list) -> float:
    return top[0]["score"] - top[1]["score"] if len(top) > 1 else float("inf")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", type=Path)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--arm64", default=str(Path(__file__).with_name("arm64.sh")))
    p.add_argument("--work", type=Path, default=Path.home() / ".cache/tledge-arm64/check")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args(argv)
    images = pick_images(a.images, a.n)
    t0 = time.time()
    top, models = make_bundle_dir(a.export, a.work, images)
    print(f"bundle {top.name}: {', '.join(models)}; {len(images)} photos", flush=True)
    env = dict(os.environ)
    t = time.time()
    inst = subprocess.run([a.arm64, "install", str(a.work / "requirements-arm64.txt")], env=env,
                          stdout=subprocess.PIPE, text=True)
    skipped = [ln for ln in inst.stdout.splitlines() if ln.startswith("SKIP:")]
    if skipped or inst.returncode == 77:
        print("\n".join(skipped) or "SKIP: arm64 root not usable")
        return inst.returncode
    if inst.returncode:
        print(inst.stdout, end="")
        return inst.returncode
    install_s = time.time() - t
    arm_out = run_loop(top, models, a.arm64, env)
    host_out = run_loop(top, models, None, {**env, "PYTHON": sys.executable})
    rows, failed, per_image = [], False, {}
    cpu = cpu_line(arm_out, host_out)
    print(cpu, flush=True)
    for m in models:
        ra, ta, rca = read_out(arm_out, m)
        rh, th, rch = read_out(host_out, m)
        per_image[m] = {"arm64": top1(ra), "host": top1(rh)}
        tol = TOL[precision(m)]
        agree, diff, n, flips = compare(ra, rh, tol)
        ok = rca == 0 and rch == 0 and n == len(images) and flips == 0 and diff <= tol
        failed |= not ok
        rows.append({"file": m, "images": n, "agreement": agree, "real_flips": flips, "max_score_diff": diff,
                     "arm64_s_per_image": ta / max(1, len(images)), "host_s_per_image": th / max(1, len(images)),
                     "arm64_p50_ms": p50_ms(arm_out, m), "host_p50_ms": p50_ms(host_out, m),
                     "arm64_rc": rca, "host_rc": rch, "ok": ok})
        if rca:
            print(f"--- {m} in the arm64 root exited {rca}:\n" + (arm_out / f"{m}.err").read_text()[-1500:])
    if (arm_out / "doctor.txt").is_file():
        print("tledge doctor in the arm64 root:\n" + (arm_out / "doctor.txt").read_text()[-3000:])
    check = None
    if (arm_out / "check.rc").is_file():
        check = int((arm_out / "check.rc").read_text().strip() or 1)
        print(f"run.sh --check in the arm64 root: exit {check}\n" + (arm_out / "check.txt").read_text()[-1500:])
        failed |= check != 0
    if check == 0:  # the same check must fail on golden outputs that disagree with the files
        bad_rc = corrupted_check(top, a.arm64, env)
        print(f"run.sh --check in the arm64 root on golden outputs edited to disagree (manifest re-hashed): "
              f"exit {bad_rc} (expected 1)")
        failed |= bad_rc != 1
    print("\n| file | images | top-1 agreement | max score diff (tolerance) | run.sh s/image arm64 (qemu) / x86 "
          "| inference p50 ms arm64 / x86 | ok |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['file']} | {r['images']} | {r['agreement']:.3f} ({r['real_flips']} not near-ties) | "
              f"{r['max_score_diff']:.1e} "
              f"({TOL[precision(r['file'])]:.0e}) | {r['arm64_s_per_image']:.2f} / {r['host_s_per_image']:.3f} | "
              f"{r['arm64_p50_ms'] or 0:.0f} / {r['host_p50_ms'] or 0:.1f} | {'yes' if r['ok'] else 'NO'} |")
    total = time.time() - t0
    print(f"\nrequirements install {install_s:.0f} s; whole check {total:.0f} s; "
          f"{'FAILED' if failed else 'passed'}", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"cpu": cpu, "rows": rows, "check_rc": check, "install_s": install_s,
                                      "total_s": total, "passed": not failed, "top1": per_image}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
