"""Family sweep: does `tledge export --int8` survive a Keras 3 model of every backbone family tledge offers?

For each family representative (tledge/backbones.py) this trains a small classifier the way `tledge train`
does (the CLI itself: `--weights none`, a small input, the backbone's preprocessing baked in, a few head
epochs on a 2-class subset of hymenoptera_data), saves model.keras, then runs the real int8 export
(`tledge export MODEL --int8 --calib DIR --val DIR --fidelity 0.999 --repair-time inf`: every rung of the
fidelity ladder runs; `--defaults`: the user's command, the default --fidelity and --repair-time) and
records per model: exit code, traceback, every attempts row with an "error" (internal errors start with
"internal error:"), the rung kept per int8 file, each rung's seconds, parity.json's step seconds, and seconds.

This is a CRASH sweep, not an accuracy benchmark: the backbones are random-init and frozen, the head
is trained for a few epochs on a few dozen photos, so the outputs are near chance and the fidelity
figures mean nothing. Each model runs under `nice -n 19` with a timeout (2 shared cores).

    python benchmarks/family_sweep.py [--only densenet121,xception] [--work /tmp/tledge-family-sweep]
                                      [--timeout 1500] [--json results.json] [--defaults]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"
HYM = ASSETS / "hymenoptera_data"
if not HYM.is_dir():
    HYM = Path("/work/shared/assets/hymenoptera_data")

# backbone -> input size (the smallest round size each application accepts with weights=None)
FAMILIES = {
    "mobilenet_v3_large": 64, "efficientnet_v2_b0": 64, "resnet50_v2": 64, "densenet121": 64,
    "inception_v3": 96, "xception": 96, "nasnet_mobile": 64, "convnext_tiny": 64, "vgg16": 64,
    "inception_resnet_v2": 96,
}
PER_CLASS = {"train": 24, "val": 12}  # photos per class


@dataclass
class Row:
    model: str
    size: int
    train_exit: int | None = None
    exit: int | None = None
    seconds: float = 0.0
    kept: dict = field(default_factory=dict)  # int8 file -> kept rung
    errors: list = field(default_factory=list)  # attempts rows with an error
    rungs: dict = field(default_factory=dict)  # int8 file -> {rung: seconds} (None: skipped or not timed)
    steps: dict = field(default_factory=dict)  # parity.json "seconds": export step -> seconds
    traceback: str = ""
    note: str = ""


def subset(work: Path) -> Path:
    """train/ and val/ with PER_CLASS photos per class (symlinks, sorted, no GIF placeholder)."""
    data = work / "data"
    if data.is_dir():
        return data
    for split, n in PER_CLASS.items():
        for cls in sorted(p.name for p in (HYM / split).iterdir() if p.is_dir()):
            dst = data / split / cls
            dst.mkdir(parents=True)
            files = sorted(p for p in (HYM / split / cls).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
            for f in files[:n]:
                (dst / f.name).symlink_to(f)
    return data


def _run(cmd: list[str], timeout: float, log: Path) -> tuple[int | None, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        p = subprocess.run(["nice", "-n", "19", sys.executable, "-m", "tledge", *cmd], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        log.write_text(f"TIMEOUT after {timeout}s\n{exc.stdout or ''}\n{exc.stderr or ''}")
        return None, ""
    log.write_text(f"$ {' '.join(cmd)}\nexit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    return p.returncode, p.stderr


def _traceback(stderr: str) -> str:
    """The exception line of the first traceback on the terminal (stderr), or ''."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            return next((x for x in lines[i + 1:] if x and not x.startswith(" ")), "traceback")
    return ""


def sweep_one(name: str, size: int, work: Path, data: Path, timeout: float, retrain: bool,
              defaults: bool = False) -> Row:
    row = Row(name, size)
    run = work / name
    model = run / "model.keras"
    if retrain or not model.is_file():
        shutil.rmtree(run, ignore_errors=True)
        row.train_exit, err = _run(["train", str(data), "--backbone", name, "--weights", "none", "--size", str(size),
                                    "--epochs", "4", "--fine-tune-epochs", "0", "--no-augment", "--batch", "16",
                                    "--patience", "0", "--out", str(run), "-q"], timeout, work / f"{name}.train.log")
        if row.train_exit != 0 or not model.is_file():
            row.note, row.traceback = "training failed (see the log)", _traceback(err)
            return row
    out = work / f"{name}_export"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    ladder = [] if defaults else ["--fidelity", "0.999", "--repair-time", "inf"]
    row.exit, err = _run(["export", str(model), "--int8", "--calib", str(data / "train"), "--val", str(data / "val"),
                          *ladder, "--out", str(out)], timeout, work / f"{name}.export.log")
    row.seconds = round(time.perf_counter() - start, 1)
    row.traceback = _traceback(err)
    if row.exit is None:
        row.note = f"timeout {timeout:.0f}s"
    report = out / "parity.json"
    if report.is_file():
        rep = json.loads(report.read_text())
        attempts = rep.get("fidelity") or []
        row.errors = [{"file": a["file"], "rung": a["rung"], "error": a["error"]} for a in attempts if "error" in a]
        row.kept = {a["file"]: "fallback" for a in attempts}  # no kept row: the float file ships instead
        row.kept.update({a["file"]: a["rung"] for a in attempts if a.get("kept")})
        for a in attempts:
            row.rungs.setdefault(a["file"], {})[a["rung"]] = a.get("seconds")
        row.steps = rep.get("seconds") or {}
    return row


def table(rows: list[Row]) -> str:
    lines = [f"{'model':22} {'px':>3} {'exit':>4} {'internal':>8} {'other err':>9} {'s':>6}  kept per int8 file",
             "-" * 100]
    for r in rows:
        internal = sum(e["error"].startswith("internal error") for e in r.errors)
        kept = ", ".join(f"{Path(f).name}={k}" for f, k in sorted(r.kept.items())) or r.note or "-"
        lines.append(f"{r.model:22} {r.size:>3} {str(r.exit):>4} {internal:>8} {len(r.errors) - internal:>9} "
                     f"{r.seconds:>6.0f}  {kept}")
    for r in rows:
        for e in r.errors:
            lines.append(f"  {r.model}: {Path(e['file']).name} `{e['rung']}`: {e['error'][:300]}")
        if r.traceback:
            lines.append(f"  {r.model}: TRACEBACK: {r.traceback[:300]}")
        for f, rungs in sorted(r.rungs.items()):
            lines.append(f"  {r.model}: {Path(f).name} rung s: " + ", ".join(f"{k}={v}" for k, v in rungs.items()))
        if r.steps:
            lines.append(f"  {r.model}: steps s: " + ", ".join(f"{k}={v}" for k, v in r.steps.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma list of backbones (default: every family representative)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tledge-family-sweep"))
    ap.add_argument("--timeout", type=float, default=1500.0, help="seconds per train and per export")
    ap.add_argument("--retrain", action="store_true", help="train again even where model.keras exists")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--defaults", action="store_true",
                    help="the user's default export (no --fidelity 0.999 --repair-time inf)")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(FAMILIES)
    args.work.mkdir(parents=True, exist_ok=True)
    data = subset(args.work)
    rows = []
    for name in names:
        rows.append(sweep_one(name, FAMILIES.get(name, 64), args.work, data, args.timeout, args.retrain,
                              args.defaults))
        print(f"[{time.strftime('%H:%M:%S')}] {name}: exit {rows[-1].exit}, {rows[-1].seconds:.0f} s", flush=True)
        if args.json:
            args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
