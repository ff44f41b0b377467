"""Cold start: `tledge run MODEL --source IMAGE` as a fresh process against a bare LiteRT script doing
the same work (decode, resize, invoke, print the top label), in alternating rounds. Wall time and
peak RSS (the child's own VmHWM, written to stderr at exit: ru_maxrss from wait4 carries the parent's peak
across vfork + exec, so inside a large benchmark process both sides read the parent's) per process; medians
and best. Target: tledge <= 1.5x the bare
script in both.

    python benchmarks/cold_start.py [--model FILE.tflite] [--image FILE] [--runs 9] [--json out.json]

Default model: tests/assets/tiny/model_int8.tflite (committed) on one of its images; with --model
pass any tledge-exported .tflite (e.g. the runtime benchmark's int8 MobileNetV2).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "assets" / "tiny"

BARE = r"""
import sys
import numpy as np, cv2
from ai_edge_litert.interpreter import Interpreter
model, image, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
it = Interpreter(model_path=model, num_threads=threads)
it.allocate_tensors()
d, o = it.get_input_details()[0], it.get_output_details()[0]
h, w = int(d["shape"][1]), int(d["shape"][2])
img = cv2.cvtColor(cv2.imread(image), cv2.COLOR_BGR2RGB)
x = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)[None].astype(d["dtype"])
it.set_tensor(d["index"], x)
it.invoke()
y = it.get_tensor(o["index"])[0]
print(image + ": " + str(int(np.argmax(y))) + " " + str(float(y.max())))
"""


# run first in both children: report this process's own peak (VmHWM) on stderr at exit
HWM = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('\\nVMHWM_KB ' + open('/proc/self/status')"
       ".read().split('VmHWM:')[1].split()[0] + '\\n')); ")


def one(cmd: list[str], env: dict) -> dict:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env)  # reads the pipes while it runs (no full-pipe stall)
    wall = time.perf_counter() - t
    out, err = proc.stdout.decode(), proc.stderr.decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    hwm = [ln.split()[1] for ln in err.splitlines() if ln.startswith("VMHWM_KB ")]
    return {"s": wall, "peak_rss_mb": int(hwm[-1]) / 1024 if hwm else float("nan"), "out": out.strip()}


def measure(model: Path, image: Path, runs: int = 9, threads: int = 2) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    tledge_main = HWM + "import runpy; sys.argv[0] = 'tledge'; runpy.run_module('tledge', run_name='__main__')"
    cmds = {"tledge run": [sys.executable, "-c", tledge_main, "run", str(model), "--source", str(image),
                           "--threads", str(threads)],
            "bare LiteRT script": [sys.executable, "-c", HWM + BARE, str(model), str(image), str(threads)]}
    res: dict[str, list[dict]] = {k: [] for k in cmds}
    for name, cmd in cmds.items():  # warm the page cache
        one(cmd, env)
    for r in range(runs):
        for name in (list(cmds) if r % 2 == 0 else list(cmds)[::-1]):
            res[name].append(one(cmds[name], env))
    out = {}
    for name, rs in res.items():
        out[name] = {"median_s": round(statistics.median(x["s"] for x in rs), 4),
                     "best_s": round(min(x["s"] for x in rs), 4),
                     "median_peak_rss_mb": round(statistics.median(x["peak_rss_mb"] for x in rs), 1),
                     "output": rs[0]["out"].splitlines()[0] if rs[0]["out"] else ""}
    a, b = out["tledge run"], out["bare LiteRT script"]
    out["ratio"] = {"time_median": round(a["median_s"] / b["median_s"], 2),
                    "time_best": round(a["best_s"] / b["best_s"], 2),
                    "peak_rss": round(a["median_peak_rss_mb"] / b["median_peak_rss_mb"], 2)}
    out.update(model=str(model), image=str(image), runs=runs, threads=threads, load_avg=os.getloadavg())
    return out


def print_report(r: dict) -> None:
    print(f"cold start, {Path(r['model']).name} on {Path(r['image']).name}, {r['runs']} alternating runs, "
          f"{r['threads']} threads (load average {r['load_avg'][0]:.1f}):")
    for name in ("tledge run", "bare LiteRT script"):
        v = r[name]
        print(f"    {name:<20} median {v['median_s']:.3f} s (best {v['best_s']:.3f}), "
              f"peak RSS {v['median_peak_rss_mb']:.0f} MB")
    x = r["ratio"]
    print(f"    tledge / bare: time {x['time_median']}x (best {x['time_best']}x), memory {x['peak_rss']}x "
          "(target <= 1.5x)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=TINY / "model_int8.tflite")
    p.add_argument("--image", type=Path)
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    image = a.image or sorted((TINY / "images").iterdir())[0]
    r = measure(a.model, image, a.runs, a.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import machine_info

    r["machine"] = machine_info()  # the figures' CPU, versions, commit and date (the README's were typed by hand)
    print_report(r)
    if a.json:
        a.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
