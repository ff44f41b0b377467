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
            return f"package not installed: {mod} (pip install 'tledge[all]')"
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are for everyone to read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---- rendering -----------------------------------------------------------------------------------------

def _f(v, fmt: str = "{:.2f}", none: str = "–") -> str:
    return none if v is None else fmt.format(v)


def _pct(v) -> str:
    return "–" if v is None else f"{v:+.1f} %"


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def machine_line(m: dict) -> str:
    v = m.get("versions", {})
    flags = f", {'/'.join(m['cpu_flags'])}" if m.get("cpu_flags") else ""
    vers = ", ".join(f"{k} {val}" for k, val in v.items() if val and k in
                     ("tensorflow", "keras", "ai-edge-litert", "onnxruntime", "numpy", "opencv-python-headless"))
    return (f"{m.get('cpu', '?')} ({m.get('usable_cores', m.get('cores', '?'))} cores{flags}, "
            f"{_f(m.get('memory_gib'), '{:.0f}')} GiB); Python {m.get('python', '?')}; {vers}; "
            f"tledge {m.get('tledge_git') or '?'}; {m.get('date', '?')}")


def targets(results: dict) -> list[tuple[str, str, str, str]]:
    """(figure, target, measured, verdict) rows for the summary table."""
    rows = []
    rt = _get(results, "sections", "runtime", "data")
    ex = _get(results, "sections", "export", "data")
    if rt:
        o = rt.get("overhead", {})
        pct, med = o.get("overhead_pct", {}), o.get("overhead_pct_median", {})
        p, c = pct.get("predict(prepared)"), pct.get("classify([image])")
        if p is not None and c is not None:
            rows.append(("per-image overhead over a bare interpreter, batch 1 (predict / classify)", "<= 10 %",
                         f"{_pct(p)} / {_pct(c)} (medians {_pct(med.get('predict(prepared)'))} / "
                         f"{_pct(med.get('classify([image])'))})", "met" if max(p, c) <= 10 else "missed"))
        fo = rt.get("folder", {})
        if "pipeline_vs_slower_stage" in fo:
            ips = fo.get("images_per_s", {})
            r = fo["pipeline_vs_slower_stage"]
            slower = min(ips.get("prepare only", 0), ips.get("infer only", 0))
            rows.append(("folder throughput / slower stage alone", ">= 0.80",
                         f"{r:.2f} ({_f(ips.get('pipeline'), '{:.0f}')} vs {slower:.0f} img/s; median "
                         f"{_f(fo.get('pipeline_vs_slower_stage_median'))})", "met" if r >= 0.8 else "missed"))
        pr = rt.get("process", {})
        a, b = pr.get("runtime (LiteRT int8)"), pr.get("TensorFlow/Keras (.keras)")
        if a and b:
            rows.append(("runtime process: import + load + 1st inference, wall", "< 0.5 s",
                         f"{a['process_s']:.3f} s (TF/Keras {b['process_s']:.2f} s, "
                         f"{b['process_s'] / a['process_s']:.0f}x)", "met" if a["process_s"] < 0.5 else "missed"))
            rows.append(("runtime process: peak RSS", "< 150 MB",
                         f"{a['peak_rss_mb']:.0f} MB (TF/Keras {b['peak_rss_mb']:.0f} MB, "
                         f"{b['peak_rss_mb'] / a['peak_rss_mb']:.1f}x)", "met" if a["peak_rss_mb"] < 150 else "missed"))
    if ex:
        by = {r["path"]: r for r in ex.get("rows", [])}
        i8, kp, kf = by.get("model_int8.tflite"), by.get("keras Model.predict"), by.get("keras in tf.function")
        if i8 and kp and kf:
            rows.append(("int8 TFLite vs Keras, batch-1 latency", "faster",
                         f"{i8['latency_ms']:.2f} ms: {kp['latency_ms'] / i8['latency_ms']:.0f}x Model.predict, "
                         f"{kf['latency_ms'] / i8['latency_ms']:.1f}x tf.function",
                         "met" if i8["latency_ms"] < kf["latency_ms"] else "missed"))
        files = [r for r in ex.get("rows", []) if "passed" in r]
        if files:
            bad = [r["path"] for r in files if not r["passed"]] + [c["file"] for c in ex.get("conversion_failures", [])]
            rows.append(("parity of every exported file (default thresholds)", "all pass",
                         f"{len(files) - len(bad)}/{len(files) + len(ex.get('conversion_failures', []))} pass" +
                         (f" (failing: {', '.join(bad)})" if bad else ""), "met" if not bad else "missed"))
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def render_export(d: dict) -> list[str]:
    out = [f"### Export and inference per format: {d.get('model', '?')}", "",
           f"{d.get('val_images', '?')} val images for parity; export of all files "
           f"{_f(d.get('export_total_s'), '{:.1f}')} s "
           f"(incl. loading, tracing, calibration on {d.get('calib_limit', '?')} images, parity); exported files "
           f"run through `tledge.runtime.load(f, threads={d.get('threads', '?')})`, Keras with TensorFlow's own "
           f"threads. Batch-1 latency: best / median of {d.get('rounds', '?')} interleaved rounds; throughput: "
           f"batch {d.get('batch', '?')}.", ""]
    rows = []
    for r in d.get("rows", []):
        parity = "" if "passed" not in r else ("pass" if r["passed"] else "**FAIL**")
        rows.append([r["path"], _f(r.get("export_s"), "{:.1f}"), _f(r.get("size_mib"), "{:.3f}"),
                     f"{r['latency_ms']:.2f} / {_f(r.get('latency_ms_median'))}",
                     _f(r.get("batch1_images_per_s"), "{:.0f}"), _f(r.get("batch_images_per_s"), "{:.0f}"),
                     _f(r.get("speedup_vs_keras_predict"), "{:.1f}x"),
                     _f(r.get("speedup_vs_keras_tf_function"), "{:.2f}x"), _f(r.get("top1_agreement"), "{:.3f}"),
                     _f(r.get("accuracy"), "{:.3f}"), _f(r.get("max_abs"), "{:.2e}"), parity])
    out += _table(["path", "export s", "MiB", "batch-1 ms (best / median)", "img/s batch 1",
                   f"img/s batch {d.get('batch', '?')}", "x Model.predict", "x tf.function", "top-1 agreement",
                   "accuracy", "max abs", "parity"], rows)
    ref = next((r["reference_accuracy"] for r in d.get("rows", []) if r.get("reference_accuracy") is not None),
               None)
    if ref is not None:
        out += ["", f"Keras (reference) accuracy on the same images: {ref:.3f}."]
    secs = d.get("export_seconds") or {}
    files = {r["path"] for r in d.get("rows", [])}
    conv = sum(v for k, v in secs.items() if k in files and v is not None)
    steps = {k: v for k, v in secs.items() if k not in files and v is not None}
    if secs and d.get("export_total_s") is not None:
        out += ["", f"Export time: {conv:.1f} s converting the files (the 'export s' column)" +
                "".join(f", {v:.1f} s {k}" for k, v in steps.items()) +
                f"; the rest of the {d['export_total_s']:.1f} s is loading the model, tracing, preparing the "
                "calibration / val images, running Keras on them and the parity checks."]
    if d.get("export_options"):
        out.append(f"Export options: {', '.join(f'{k}={v}' for k, v in d['export_options'].items())}.")
    for note in d.get("report_notes", []):
        out.append(f"- note from the export: {note}")
    for c in d.get("conversion_failures", []):
        what = "rejected by parity (the export fell back)" if c["file"].startswith("rejected/") else \
            "conversion failed"
        out.append(f"- {what}: `{c['file']}`: {'; '.join(c['failures'])}")
    return out


def render_runtime(d: dict) -> list[str]:
    o, fo, pr = d.get("overhead", {}), d.get("folder", {}), d.get("process", {})
    out = [f"### Runtime overhead over a bare interpreter (int8 MobileNetV2 224, batch 1, "
           f"{o.get('threads', '?')} threads)", "",
           f"Best / median of {o.get('rounds', '?')} rounds x {o.get('per_round', '?')} calls, variants rotated "
           f"each round.", ""]
    rows = []
    for k, v in o.get("ms", {}).items():
        rows.append([k, f"{v:.3f}", _f(_get(o, "ms_median", k), "{:.3f}"),
                     "—" if k not in o.get("overhead_pct", {}) else
                     f"{_pct(o['overhead_pct'][k])} / {_pct(_get(o, 'overhead_pct_median', k))}"])
    out += _table(["path", "best ms", "median ms", "overhead (best / median)"], rows)
    ps = o.get("python_side_us", {})
    if ps:
        out += ["", "With `invoke()` stubbed out (what each path adds besides the kernels), us per call: " +
                ", ".join(f"{k} {v:.1f}" for k, v in ps.items()) + "."]
    out += ["", "### Folder throughput (decode + resize + infer, real JPEGs), images/s", ""]
    rows = []
    for v in [fo] + list(d.get("folder_variants", [])):
        if not v:
            continue
        ips, med = v.get("images_per_s", {}), v.get("images_per_s_median", {})
        rows.append([f"{v.get('workers', '?')} prep worker(s), {v.get('threads', '?')} inference thread(s)"
                     + (" (default)" if v is fo else ""),
                     *(f"{_f(ips.get(k), '{:.1f}')} / {_f(med.get(k), '{:.1f}')}"
                       for k in ("prepare only", "infer only", "pipeline")),
                     f"{_f(v.get('pipeline_vs_slower_stage'))} / {_f(v.get('pipeline_vs_slower_stage_median'))}",
                     _f(v.get("pipeline_vs_serial"))])
    out += _table(["configuration", "prepare only", "infer only", "pipeline", "pipeline / slower stage",
                   "pipeline / serial"], rows)
    out += ["", f"{fo.get('images', '?')} images, best / median of {fo.get('rounds', '?')} interleaved rounds.", "",
            "### Process start and peak memory: runtime vs TensorFlow", "",
            "`python -c` process: import + load + first inference on a JPEG; medians; peak RSS = VmHWM.", ""]
    rows = []
    for name, v in pr.items():
        if name == "ratios" or not isinstance(v, dict):
            continue
        rows.append([name, f"{v['process_s']:.3f} s", f"{v['import_s']:.3f} s", f"{v['load_s']:.3f} s",
                     f"{v['inference_s']:.3f} s", f"{v['peak_rss_mb']:.0f} MB", "yes" if v.get("tensorflow_imported")
                     else "no", v.get("runs", "?")])
    out += _table(["process", "wall", "import", "load", "1st inference", "peak RSS", "TF imported", "runs"], rows)
    return out


def render_int8(d: dict) -> list[str]:
    out = [f"### int8 fidelity before / after the repairs ({', '.join(d.get('steps', []))})", "",
           "Agreement with the original Keras model; latency: batch 1, best of interleaved rounds.", ""]
    for fam, rows in d.get("families", {}).items():
        out += [f"**{fam}** ({_f(_get(d, 'seconds', fam), '{:.0f}')} s)", ""]
        out += _table(["variant", "top-1 agreement", "accuracy", "max abs", "median per-image max abs", "latency ms"],
                      [[k, f"{r['agreement']:.3f}", f"{r['accuracy']:.3f}", f"{r['max_abs']:.3f}",
                        f"{r['median_abs']:.4f}", _f(r.get("latency_ms"))] for k, r in rows.items()])
        out.append("")
    return out


RENDERERS = {"export": render_export, "runtime": render_runtime, "int8_fidelity": render_int8}


def render_markdown(results: dict) -> str:
    """The whole report as Markdown: machine, summary against the targets, one block per section."""
    lines = ["## tledge benchmarks" + (" (quick run: NOT for comparison)" if results.get("quick") else ""), "",
             f"Machine: {machine_line(results.get('machine', {}))}", ""]
    if results.get("command"):
        lines += [f"Command: `{results['command']}`; wall time {_f(results.get('wall_s'), '{:.0f}')} s.", ""]
    secs = results.get("sections", {})
    others = [s["load"]["other_processes_cores"] for s in secs.values()
              if _get(s, "load", "other_processes_cores") is not None and s.get("status") == "ok"]
    if others:
        span = f"{min(others):.1f}" if f"{min(others):.1f}" == f"{max(others):.1f}" else \
            f"{min(others):.1f}-{max(others):.1f}"
        lines += [f"Other processes kept {span} of the "
                  f"{_get(results, 'machine', 'usable_cores') or '?'} cores busy during the sections "
                  "(machine-wide busy CPU time minus this run's own).", ""]
    rows = targets(results)
    if rows:
        lines += ["### Summary against the targets", ""] + _table(["figure", "target", "measured", ""],
                                                                  [list(r) for r in rows]) + [""]
    for name, s in secs.items():
        if s.get("status") == "ok":
            try:
                lines += RENDERERS[name](s["data"]) + [""]
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                lines += [f"### {name}", "", f"(could not render: {type(exc).__name__}: {exc})", ""]
    lines += ["### Sections", ""]
    lines += _table(["section", "status", "seconds", "other processes (cores)", "note"],
                    [[n, s.get("status", "?"), _f(s.get("seconds"), "{:.0f}"),
                      _f(_get(s, "load", "other_processes_cores"), "{:.1f}"),
                      s.get("reason", "") or f"`{s.get('command', '')}`"] for n, s in secs.items()])
    return "\n".join(lines) + "\n"


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
        md = render_markdown(json.loads(args.render.read_text()))
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
