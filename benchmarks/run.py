"""All of tledge's benchmarks in one run: one set of tables (Markdown) and one JSON file.

Sections (each one runs in its own Python process, so TensorFlow imported by one section cannot
slow down or bloat the next, and a crash in one is reported, not fatal):

  export         benchmarks/export_bench.py: the issue's MobileNet v1 0.25 on hymenoptera_data -
                 export time per format, file sizes, batch-1 latency and batch throughput per
                 format (Keras predict, TFLite fp32/fp16/dynamic/int8, ONNX fp32/int8), parity and
                 accuracy of every file on the val photos
  runtime        benchmarks/runtime_bench.py: overhead of EdgeModel.predict/classify over a bare
                 interpreter, folder throughput against the slower stage, process start time and
                 peak memory of the runtime against TensorFlow/Keras
  int8_fidelity  benchmarks/int8_fidelity.py: int8 agreement/accuracy before and after the repairs
                 (slow, ~10 min cold; cached in /tmp/tledge-int8-cache, ~3-4 min warm)

Sections whose shared assets (../shared/assets) or packages are missing are skipped with a reason.
Results: --json FILE (default benchmarks/results/latest.json, or quick.json with --quick) and the
same tables as Markdown next to it (FILE with .md), both written atomically; per-section logs in
FILE's folder (<stem>-<section>.log).

    .venv/bin/python benchmarks/run.py                      # everything (~8 min warm, ~25 min cold, 2 cores)
    .venv/bin/python benchmarks/run.py --quick              # smoke run of every section (~5 min warm)
    .venv/bin/python benchmarks/run.py --skip int8_fidelity --json /tmp/bench.json
    .venv/bin/python benchmarks/run.py --render benchmarks/results/latest.json   # tables again, no run
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # report.py beside this script
from report import _f, render_markdown, targets  # noqa: E402,F401  (targets: used by callers)
REPO = HERE.parent
DEFAULT_ASSETS = Path(os.environ.get("TLEDGE_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
WEIGHTS = "keras_imagenet_weights/mobilenet_2_5_224_tf_no_top.h5"
HYMENOPTERA = ("hymenoptera_data/train", "hymenoptera_data/val")


@dataclass(frozen=True)
class Section:
    name: str
    script: str
    title: str
    assets: tuple[str, ...]  # relative to the assets folder
    modules: tuple[str, ...]  # importable modules it needs
    quick_args: tuple[str, ...] = ("--quick",)


SECTIONS = (
    Section("export", "export_bench.py", "export time, size, latency, throughput, parity per format",
            HYMENOPTERA + (WEIGHTS,), ("tensorflow", "keras", "tf2onnx", "onnxruntime", "ai_edge_litert")),
    Section("runtime", "runtime_bench.py", "runtime overhead, folder throughput, process start / memory",
            HYMENOPTERA, ("tensorflow", "keras", "ai_edge_litert", "cv2")),
    Section("int8_fidelity", "int8_fidelity.py", "int8 fidelity before / after the repairs",
            HYMENOPTERA + (WEIGHTS,), ("tensorflow", "keras", "tf2onnx", "onnxruntime", "ai_edge_litert")),
)
NAMES = tuple(s.name for s in SECTIONS)

PACKAGES = ("tensorflow", "keras", "ai-edge-litert", "onnxruntime", "tf2onnx", "onnx", "numpy",
            "opencv-python-headless")


# ---- machine -------------------------------------------------------------------------------------------

def _cpuinfo() -> dict:
    info = {"model": platform.processor() or platform.machine(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() == "model name" and val.strip():
            info["model"] = val.strip()
        elif key.strip() == "flags":
            have = set(val.split())
            info["flags"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8", "neon", "asimd")
                             if f in have]
        if info["flags"] and key.strip() == "flags":
            break
    return info


def _mem_gib() -> float | None:
    try:
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        return round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        return None


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("+uncommitted" if dirty else "")) if rev else None


def machine_info() -> dict:
    cpu = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu["model"], "cpu_flags": cpu["flags"], "cores": os.cpu_count(), "usable_cores": usable,
            "memory_gib": _mem_gib(), "os": platform.platform(), "python": platform.python_version(),
            "versions": _versions(), "tledge_git": _git(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


# ---- other processes' load -------------------------------------------------------------------------------

def _busy_jiffies() -> int | None:
    try:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return sum(vals[:8]) - vals[3] - vals[4]  # all but idle and iowait


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class LoadProbe:
    """Cores kept busy by OTHER processes while a section ran: machine-wide busy CPU time (from
    /proc/stat) minus the CPU time of our own (waited-for) children, over the wall time."""

    def __init__(self):
        self.t, self.busy, self.mine = time.time(), _busy_jiffies(), _children_cpu_s()
        self.load_start = os.getloadavg()[0]

    def stop(self) -> dict:
        wall = time.time() - self.t
        busy = _busy_jiffies()
        out = {"load_avg_start": round(self.load_start, 2), "load_avg_end": round(os.getloadavg()[0], 2)}
        if busy is not None and self.busy is not None and wall > 0:
            hz = os.sysconf("SC_CLK_TCK")
            others = (busy - self.busy) / hz - (_children_cpu_s() - self.mine)
            out["other_processes_cores"] = round(max(0.0, others / wall), 2)
        return out


def wait_quiet(max_cores: float, max_wait: float, window: float = 5.0) -> dict:
    """Wait (up to max_wait s) until other processes keep fewer than max_cores cores busy over a
    `window`-second sample (nothing of ours runs meanwhile). Returns what was seen."""
    t0 = time.time()
    while True:
        probe = LoadProbe()
        time.sleep(window)
        busy = probe.stop().get("other_processes_cores")
        if busy is None:
            return {"waited_s": 0.0, "other_processes_cores": None}
        if busy < max_cores or time.time() - t0 >= max_wait:
            return {"waited_s": round(time.time() - t0, 1), "other_processes_cores": busy,
                    "quiet": busy < max_cores}


# ---- running the sections -------------------------------------------------------------------------------

def skip_reason(section: Section, assets: Path) -> str | None:
    """Why `section` cannot run here (missing assets or packages), or None."""
    import importlib.util

    for rel in section.assets:
        if not (assets / rel).exists():
            return f"shared asset not available: {assets / rel}"
    for mod in section.modules:
        if importlib.util.find_spec(mod) is None:
            return f"package not installed: {mod} (make install, or pip install './dist/tledge-*.whl[all]')"
    return None


def run_section(section: Section, *, quick: bool, assets: Path, log_file: Path, timeout: float | None,
                extra: tuple[str, ...] = ()) -> dict:
    fd, tmp = tempfile.mkstemp(prefix=f"tledge-bench-{section.name}-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, str(HERE / section.script), *(section.quick_args if quick else ()), *extra, "--json", tmp]
    env = dict(os.environ, TLEDGE_SHARED_ASSETS=str(assets), TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    probe = LoadProbe()
    t0 = time.perf_counter()
    out = {"command": " ".join(["python", f"benchmarks/{section.script}", *cmd[2:-2]]), "log": str(log_file)}
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as log:
            # its own process group, so a timeout also ends the processes the section started
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        data = json.loads(Path(tmp).read_text() or "null") if rc == 0 else None
    except subprocess.TimeoutExpired:
        rc, data = f"timeout after {timeout:.0f} s", None
    except (OSError, json.JSONDecodeError) as exc:
        rc, data = f"{type(exc).__name__}: {exc}", None
    finally:
        Path(tmp).unlink(missing_ok=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["load"] = probe.stop()
    if rc == 0 and isinstance(data, dict) and "skipped" in data:
        return {**out, "status": "skipped", "reason": data["skipped"]}
    if rc == 0 and isinstance(data, dict):
        return {**out, "status": "ok", "data": data}
    tail = log_file.read_text(errors="replace").splitlines()[-15:] if log_file.is_file() else []
    return {**out, "status": "failed", "reason": rc if isinstance(rc, str) else f"exit status {rc}",
            "log_tail": tail}


def atomic_write(path: Path, text: str) -> None:
    from tledge.io import atomic_write_text  # temp file + rename, umask permissions

    atomic_write_text(path, text)


# ---- main -----------------------------------------------------------------------------------------------

def _names(values: list[str]) -> set[str]:
    out = {n.strip() for v in values for n in v.split(",") if n.strip()}
    unknown = out - set(NAMES)
    if unknown:
        raise SystemExit(f"unknown section(s) {sorted(unknown)}: choose from {', '.join(NAMES)}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="results file (default benchmarks/results/latest.json, or quick.json "
                                              "with --quick); the Markdown goes next to it (.md)")
    ap.add_argument("--quick", action="store_true", help="a short smoke run of every section (figures not comparable)")
    ap.add_argument("--skip", action="append", default=[], metavar="SECTION",
                    help=f"skip a section ({', '.join(NAMES)}); repeat or comma-separate")
    ap.add_argument("--only", action="append", default=[], metavar="SECTION", help="run only these sections")
    ap.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="shared assets folder (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=3600, help="per-section timeout in seconds (default 3600)")
    ap.add_argument("--wait-quiet", type=float, metavar="CORES",
                    help="before each section, wait until other processes keep fewer than CORES cores busy "
                         "(5 s samples; at most --wait-max seconds)")
    ap.add_argument("--wait-max", type=float, default=120, help="longest wait per section (default 120 s)")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="run nothing: print the Markdown of an earlier results file (and rewrite its .md)")
    args = ap.parse_args(argv)
    if args.render:
        try:
            results = json.loads(args.render.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # a traceback before
            ap.error(f"--render {args.render}: {getattr(exc, 'strerror', None) or exc}")
        md = render_markdown(results)
        atomic_write(args.render.with_suffix(".md"), md)
        print(md)
        return 0
    skip, only = _names(args.skip), _names(args.only)
    out_json = args.json or HERE / "results" / ("quick.json" if args.quick else "latest.json")
    out_md = out_json.with_suffix(".md")
    command = "python benchmarks/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()

    results = {"quick": args.quick, "command": command.strip(), "machine": machine_info(),
               "assets": str(args.assets), "sections": {}}
    t0 = time.perf_counter()
    chosen = [s for s in SECTIONS if (not only or s.name in only)]
    for i, s in enumerate(chosen, 1):
        why = "--skip" if s.name in skip else skip_reason(s, args.assets)
        if why:
            results["sections"][s.name] = {"status": "skipped", "reason": why}
            print(f"[{i}/{len(chosen)}] {s.name}: skipped ({why})", flush=True)
            continue
        print(f"[{i}/{len(chosen)}] {s.name}: {s.title} ...", flush=True)
        waited = None
        if args.wait_quiet is not None:
            waited = wait_quiet(args.wait_quiet, args.wait_max)
            print(f"      waited {waited['waited_s']:.0f} s for quiet (others: "
                  f"{_f(waited['other_processes_cores'], '{:.1f}')} cores)", flush=True)
        log_file = out_json.with_name(f"{out_json.stem}-{s.name}.log")
        r = run_section(s, quick=args.quick, assets=args.assets, log_file=log_file, timeout=args.timeout)
        if waited is not None:
            r["wait_quiet"] = waited
        results["sections"][s.name] = r
        print(f"      {r['status']} in {r['seconds']:.0f} s" + (f" ({r['reason']}; log {log_file})"
                                                               if r["status"] != "ok" else ""), flush=True)
        for line in r.get("log_tail", [])[-5:]:
            print(f"      | {line}", flush=True)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    md = render_markdown(results)
    atomic_write(out_json, json.dumps(results, indent=2) + "\n")
    atomic_write(out_md, md)
    print()
    print(md)
    print(f"wrote {out_json} and {out_md}")
    return 1 if any(s.get("status") == "failed" for s in results["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
