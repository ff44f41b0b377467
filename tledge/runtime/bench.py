"""Benchmark exported files: load time, latency percentiles, throughput, peak RSS.

Each file is measured in a fresh Python process (`python -m tledge.runtime.bench FILE ...`, which
prints one JSON object), so peak RSS and load time are those of a clean runtime-only process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from tledge.errors import TledgeError

def expand_models(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; a folder stands for every .tflite / .onnx file in it (sorted)."""
    from tledge.runtime.backends import MODEL_SUFFIXES

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in MODEL_SUFFIXES)
            if not found:
                raise TledgeError(f"no .tflite or .onnx files in {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise TledgeError(f"model file not found: {p}")
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB. Linux: VmHWM of /proc/self/status, because
    getrusage's ru_maxrss keeps the *parent's* peak across fork/vfork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def time_calls(fn, runs: int, warmup: int = 0, budget_s: float | None = None) -> list[float]:
    """Seconds of each of `runs` calls of `fn()`, after `warmup` untimed calls; with `budget_s`, no more than 3 calls
    once that many seconds have passed (a slow model on a board)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and (budget_s is None or len(times) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def best_in_turns(measures: dict, rounds: int) -> dict[str, float]:
    """Each of `measures` (name -> a call returning a figure) called in turns, `rounds` times; the lowest figure of
    each. Load from other processes then hits them alike, which rows timed one after another do not get."""
    best = {name: float("inf") for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            best[name] = min(best[name], measure())
    return best


def one_image_ms(predict, x, *, runs: int = 20, warmup: int = 3, budget_s: float = 2.0) -> float:
    """Median batch-1 latency (ms) of `predict` on the first prepared input of `x`, after `warmup` calls: what one
    photo at a time costs, parity's latency figure. Per-image time of a batch of 32 is not it: it flatters the files
    whose kernels batch well (EfficientNetB0 128 px on onnxruntime: the plain int8 file 2.5 ms per image in batches
    of 32 against 4.1 ms one at a time; the float-stem file 4.4 against 4.1). At most `runs` timed calls, and no
    more than 3 once `budget_s` has passed (a slow model on a board)."""
    import numpy as np

    one = x[:1]
    return float(np.median(time_calls(lambda: predict(one), runs, warmup, budget_s)) * 1000)


def measure(path: str | Path, *, runs: int = 50, warmup: int = 5, batch: int = 1, threads: int | None = None,
            load_kwargs: dict | None = None, t0: float | None = None) -> dict:
    """Load `path` and time `runs` inferences of a `batch` of prepared inputs (after `warmup`).
    `t0` (a time.time() taken before the process started) adds the time to a first result."""
    import numpy as np

    from tledge.runtime import load
    from tledge.runtime.onnxgraph import size_with_data

    start = time.perf_counter()
    import_runtime(path)
    import_ms = 1000 * (time.perf_counter() - start)
    start = time.perf_counter()
    model = load(path, threads=threads, **(load_kwargs or {}))
    load_ms = 1000 * (time.perf_counter() - start)
    c = model.contract
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8)
    x = np.stack([model.to_input(image)] * batch)
    start = time.perf_counter()
    model.run_inputs(x)
    first_ms = 1000 * (time.perf_counter() - start)
    first_result_s = None if t0 is None else time.time() - t0
    ms = np.asarray(time_calls(lambda: model.run_inputs(x), runs, warmup)) * 1000
    return {"file": str(path), "name": Path(path).name, "format": model.format, "provider": model.provider,
            "threads": model.backend.threads, "batch": batch, "runs": runs,
            "input": f"{list(model.backend.inp.shape)} {model.backend.inp.dtype}",
            "size_mb": round(size_with_data(path) / 2**20, 3),  # MiB, as peak_rss_mb (it was 1e6 bytes)
            "first_result_s": None if first_result_s is None else round(first_result_s, 3),
            "import_ms": round(import_ms, 2), "load_ms": round(load_ms, 2), "first_ms": round(first_ms, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "mean_ms": round(float(ms.mean()), 3),
            "throughput_ips": round(batch * runs / max(1e-9, ms.sum() / 1000), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1), "notes": model.load_info.notes,
            "tensorflow_imported": "tensorflow" in sys.modules}


def import_runtime(path: str | Path) -> None:
    """Import the runtime that opens `path` before its load is timed: "load ms" was the import of onnxruntime or
    LiteRT (75-135 ms) for the first file of a format and the load alone for the next. A runtime that does not
    import is left to `load`, which says why."""
    import warnings

    with warnings.catch_warnings():  # load warns again, where the notes are collected
        warnings.simplefilter("ignore")
        try:
            if Path(path).suffix.lower() == ".onnx":
                from tledge._deps import require

                require("onnxruntime")
            else:
                from tledge.runtime.litert import interpreter_module

                interpreter_module()
        except Exception:  # noqa: BLE001 - load() gives the one-line reason
            pass


# `python -m tledge.runtime.bench` put the current folder first on sys.path: a numpy.py beside the model ran. The
# measuring process imports the parent's tledge (its folder comes first) and nothing from the current folder.
_LAUNCH = ("import sys; sys.path[:] = [sys.argv.pop(1)] + [p for p in sys.path if p not in ('', '.')]\n"
           "from tledge.runtime.bench import subprocess_main\nsys.exit(subprocess_main())")


def measure_in_subprocess(path: str | Path, *, runs: int, warmup: int, batch: int, threads: int | None,
                          load_kwargs: dict | None = None, timeout: float | None = None) -> dict:
    """One file measured in a fresh process. timeout: 600 s plus 0.5 s per image asked for (a fixed 600 s stopped
    the --runs the command accepts: 10 minutes of waiting, then nothing)."""
    if timeout is None:
        timeout = 600 + 0.5 * (runs + warmup) * batch
    cmd = [sys.executable, "-c", _LAUNCH, str(Path(__file__).resolve().parents[2]),  # this tledge, nothing of cwd's
           str(path), "--runs", str(runs), "--warmup", str(warmup),
           "--batch", str(batch), "--options", json.dumps(load_kwargs or {}), "--t0", repr(time.time()),
           "--parent", str(os.getpid())]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONWARNINGS=os.environ.get("PYTHONWARNINGS", "ignore"))
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:  # a traceback after 10 minutes, and the next files never measured
        return {"file": str(path), "name": Path(path).name,
                "error": f"did not finish in {timeout:g} s (stopped): fewer --runs, or a file that hangs"}
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"file": str(path), "name": Path(path).name, "error": failure(proc.returncode, proc.stderr)[:300]}
    result = json.loads(lines[-1])
    result["process_s"] = round(wall, 3)  # the whole process, measurement runs included
    return result


def failure(code: int, stderr: str) -> str:
    """Why the measuring process gave no result. Before, the last line of its stderr whatever it was: a process
    killed (out of memory) showed LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."."""
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the measuring process was killed by {name}{why}"
    lines = stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    if errors:
        return errors[-1].removeprefix("error: ")
    return f"the measuring process ended with exit code {code}: {lines[-1] if lines else 'no output'}"


def bench(paths: Sequence[str | Path], *, runs: int = 50, warmup: int = 5, batch: int = 1,
          threads: int | None = None, load_kwargs: dict | None = None, subprocesses: bool = True) -> list[dict]:
    files = expand_models(paths)
    kw = dict(runs=runs, warmup=warmup, batch=batch, threads=threads, load_kwargs=load_kwargs)
    results = []
    for f in files:
        if subprocesses:
            results.append(measure_in_subprocess(f, **kw))
        else:
            try:
                results.append(measure(f, **kw))
            except TledgeError as exc:
                results.append({"file": str(f), "name": f.name, "error": str(exc)})
    return results


COLUMNS = (("name", "file", "{}"), ("format", "fmt", "{}"), ("provider", "provider", "{}"),
           ("threads", "thr", "{}"), ("batch", "batch", "{}"), ("load_ms", "load ms", "{:.1f}"),
           ("first_ms", "1st ms", "{:.1f}"),
           ("p50_ms", "p50 ms", "{:.2f}"), ("p90_ms", "p90 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"),
           ("throughput_ips", "img/s", "{:.1f}"), ("peak_rss_mb", "peak RSS MiB", "{:.0f}"),
           ("first_result_s", "1st result s", "{:.2f}"), ("size_mb", "MiB", "{:.2f}"))  # p50-p99: per call (of `batch` images); img/s: per image


def table(results: list[dict]) -> str:
    head = [title for _, title, _ in COLUMNS]
    good = [[fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in COLUMNS]
            for r in results if "error" not in r]
    widths = [max(len(v) for v in col) for col in zip(head, *good)]

    def line(row):
        return "  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))

    rows, it = [line(head)], iter(good)
    for r in results:
        rows.append(f"{r['name']}  ERROR: {r['error']}" if "error" in r else line(next(it)))
    return "\n".join(rows)


def end_with_parent(parent: int) -> None:
    """This process killed when `parent` ends: a `tledge bench` killed (kill -9, out of memory) or hung up left its
    measuring process running the rest of its runs, minutes at full load. Linux: prctl(PR_SET_PDEATHSIG, SIGKILL);
    other POSIX systems: a daemon thread that checks the parent process id every second. Windows: nothing (a venv's
    python.exe is a launcher that starts the interpreter as its own child, so the parent process id is not tledge's;
    ctypes.CDLL(None) raised TypeError there, and every file's measurement failed)."""
    import signal
    import threading

    if os.name == "nt":
        return
    set_by_kernel = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            set_by_kernel = ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0
        except Exception:  # no libc's prctl (a static build, a sandbox): the watch below
            set_by_kernel = False
    if os.getppid() != parent:  # the parent ended before the line above
        os._exit(1)
    if set_by_kernel:
        return

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="tledge-bench-parent").start()


def subprocess_main(argv: list[str] | None = None) -> int:
    """The measuring process (`measure_in_subprocess`): one file, a JSON line on stdout."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m tledge.runtime.bench")
    p.add_argument("model")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--options", default="{}", help="JSON of tledge.runtime.load keyword arguments")
    p.add_argument("--t0", type=float, help="time.time() when the parent started this process")
    p.add_argument("--parent", type=int, help="the parent's process id: this process ends when the parent does")
    a = p.parse_args(argv)
    if a.parent:
        end_with_parent(a.parent)
    try:
        r = measure(a.model, runs=a.runs, warmup=a.warmup, batch=a.batch, threads=a.threads,
                    load_kwargs=json.loads(a.options), t0=a.t0)
    except TledgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(subprocess_main())
