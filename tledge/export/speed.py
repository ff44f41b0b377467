"""Latency facts an export states in parity.md: the machine its batch-1 figures were taken on (CPU, cores, the
int8-relevant instruction sets), and an int8 file that runs slower than its fp32 file here, timed in turns before
saying so (MobileNetV3 Small's int8 TFLite file ran 3.9x its fp32 file on this project's x86 machine: LiteRT has
no fast int8 HARD_SWISH there). TF-free."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Sequence

import numpy as np

from tledge import artifacts
from tledge.export.parity import ParityResult, latencies_in_turns

SLOWER = 1.3  # the latency budget, used here the other way: int8 over 1.3x fp32 is worth a note


def machine_note(threads: int | None) -> str:
    """'batch-1 latency measured on <CPU>, <n> cores, x86_64: avx2 ..., <threads> threads'."""
    from tledge.quant.kernels import cpu_flags

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return (f"batch-1 latency (the int8 loop's rows, the kept files' notes) measured on {model}, {os.cpu_count()} "
            f"cores, {cpu_flags()}, {threads or 'default'} threads")


def slower_int8(results: Sequence[ParityResult], folder: Path, pixels: np.ndarray,
                threads: int | None = None) -> list[str]:
    """A note per format whose shipped int8 file runs at least SLOWER x its fp32 file's batch-1 latency, confirmed
    in turns (`parity.latencies_in_turns`): parity's own rows are timed one after the other."""
    by_file = {r.file: r for r in results}
    notes = []
    for kind in ("tflite", "onnx"):
        int8, fp32 = (by_file.get(artifacts.lookup(kind, p).filename) for p in ("int8", "fp32"))
        if not (int8 and fp32 and int8.latency_ms and fp32.latency_ms) or int8.latency_ms < SLOWER * fp32.latency_ms:
            continue
        try:
            ms = latencies_in_turns({"int8": folder / int8.file, "fp32": folder / fp32.file}, pixels,
                                    suffix=f".{kind}", threads=threads)
        except Exception:  # noqa: BLE001 - a figure, never a reason to lose the export
            continue
        if ms["int8"] >= SLOWER * ms["fp32"]:
            notes.append(f"{int8.file} runs {ms['int8'] / ms['fp32']:.2f}x {fp32.file}'s batch-1 latency on this "
                         f"machine ({ms['int8']:.2f} against {ms['fp32']:.2f} ms, timed in turns): here int8 buys a "
                         "4x smaller file, not speed (some of its int8 ops have no fast kernel on this CPU); time it "
                         "on the target with `tledge bench`")
    return notes
