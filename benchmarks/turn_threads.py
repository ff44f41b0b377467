"""How steady is a latency ratio measured in turns, on one thread and on several, while another process loads the
machine? (twenty-sixth session: why `tledge.export.parity.TURN_THREADS` is 1.)

For an export folder, its int8 and fp32 file of one format are timed in turns (`parity.latencies_in_turns`: the best
of 5 rounds of 10-call medians) `--repeat` times on each thread count, and the int8 / fp32 ratio of every repeat is
printed. Start a load beside it to see what the export's note would have said (for example `make test`, or
`python -c "while True: pass"` for one busy core); the CPU line and the load average are printed with the figures.

    python benchmarks/turn_threads.py EXPORT_DIR [--format tflite|onnx] [--threads 2,1] [--repeat 4] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def ratios(folder: Path, kind: str, threads: int, repeat: int) -> dict:
    """int8 / fp32 ratios and fp32 milliseconds of `repeat` in-turn measurements on `threads` threads."""
    from tledge.contract import Contract
    from tledge.export.parity import latencies_in_turns

    c = Contract.from_json((folder / "tledge.json").read_text())
    pixels = np.random.default_rng(0).integers(0, 256, (1, c.height, c.width, c.channels), dtype=np.uint8)
    files = {p: folder / f"model_{p}.{kind}" for p in ("int8", "fp32")}
    runs = [latencies_in_turns(files, pixels, suffix=f".{kind}", threads=threads) for _ in range(repeat)]
    return {"threads": threads, "ratios": [round(r["int8"] / r["fp32"], 3) for r in runs],
            "fp32_ms": [round(r["fp32"], 3) for r in runs]}


def main(argv=None) -> int:
    from tledge.quant.kernels import cpu_flags
    from tledge.runtime.doctor import cpu_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path)
    ap.add_argument("--format", choices=("tflite", "onnx"), default="tflite")
    ap.add_argument("--threads", default="2,1", help="comma-separated thread counts")
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    missing = [p for p in ("int8", "fp32") if not (args.export / f"model_{p}.{args.format}").is_file()]
    if missing or not (args.export / "tledge.json").is_file():
        print(f"turn_threads: {args.export} has no model_int8 / model_fp32 .{args.format} and tledge.json",
              file=sys.stderr)
        return 2
    cpu = cpu_info()
    rows = [ratios(args.export, args.format, int(t), args.repeat) for t in args.threads.split(",")]
    machine = f"{cpu['model']}, {cpu['usable_cores']} cores, {cpu_flags()}, load {os.getloadavg()[0]:.1f}"
    print(machine)
    print("| threads | int8 / fp32, each repeat | fp32 ms |\n|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {', '.join(f'{x:.2f}' for x in r['ratios'])} | "
              f"{min(r['fp32_ms']):.2f}-{max(r['fp32_ms']):.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "format": args.format, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
