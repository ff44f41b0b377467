"""Latency facts an export states in parity.md: the machine its batch-1 figures were taken on (CPU, cores, the
int8-relevant instruction sets), and an int8 file that runs slower than its fp32 file here, timed in turns before
saying so (MobileNetV3 Small's int8 TFLite file ran 3.9x its fp32 file on this project's x86 machine: LiteRT has
no fast int8 HARD_SWISH there). TF-free."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from tledge import artifacts
from tledge.export.parity import TURN_THREADS, ParityResult, latencies_in_turns

SLOWER = 1.3  # the latency budget, used here the other way: int8 over 1.3x fp32 is worth a note


def machine_note(threads: int | None, loop: bool = True) -> str:
    """'batch-1 latency measured on <CPU>, <n> cores, x86_64: avx2 ..., ...' with the threads of the loop's rows and
    of the comparisons in turns (the CPU and its usable cores as `tledge doctor` reads them, the int8 instruction sets
    as the kernel-paths note names them); `loop` False (no int8 loop ran): parity's rows only."""
    from tledge.quant.kernels import cpu_flags
    from tledge.runtime.doctor import cpu_info

    cpu = cpu_info()
    machine = f"{cpu['model'] or '?'}, {cpu['usable_cores']} cores, {cpu_flags()}"
    if not loop:
        return f"batch-1 latency (parity's rows) measured on {machine}, {threads or 'default'} threads"
    return (f"batch-1 latency (the int8 loop's rows, the kept files' notes) measured on {machine}; the loop's rows on "
            f"{threads or 'default'} threads, the comparisons in turns on {TURN_THREADS} (steady when other processes "
            "load the machine)")


def slower_int8(results: Sequence[ParityResult], folder: Path, pixels: np.ndarray,
                fidelity: Sequence[dict] = ()) -> list[str]:
    """A note per format whose shipped int8 file runs at least SLOWER x its fp32 file's batch-1 latency in turns:
    the kept rung's own figures from the int8 loop (`fidelity` rows' `latency_in_turns_ms`) where it measured them,
    else `parity.latencies_in_turns` when parity's rows (timed one after the other) say so first."""
    by_file = {r.file: r for r in results}
    known = {a["file"]: a["latency_in_turns_ms"] for a in fidelity
             if a.get("kept") and "fp32" in a.get("latency_in_turns_ms", {})}
    notes = []
    for kind in ("tflite", "onnx"):
        int8, fp32 = (by_file.get(artifacts.lookup(kind, p).filename) for p in ("int8", "fp32"))
        if int8 is None or fp32 is None:
            continue
        if int8.file in known:
            ms = {"int8": known[int8.file]["kept"], "fp32": known[int8.file]["fp32"]}
        elif not (int8.latency_ms and fp32.latency_ms) or int8.latency_ms < SLOWER * fp32.latency_ms:
            continue
        else:
            try:
                ms = latencies_in_turns({"int8": folder / int8.file, "fp32": folder / fp32.file}, pixels,
                                        suffix=f".{kind}")
            except Exception:  # noqa: BLE001 - a figure, never a reason to lose the export
                continue
        if ms["int8"] >= SLOWER * ms["fp32"]:
            smaller = _size_ratio(folder / fp32.file, folder / int8.file)
            notes.append(f"{int8.file} runs {ms['int8'] / ms['fp32']:.2f}x {fp32.file}'s batch-1 latency on this "
                         f"machine ({ms['int8']:.2f} against {ms['fp32']:.2f} ms, timed in turns on {TURN_THREADS} "
                         f"thread): here int8 buys a {smaller} file, not speed (some of its int8 ops have no fast "
                         "kernel on this CPU); time it on the target with `tledge bench`")
    return notes


def float_ops_notes(results: Sequence[ParityResult], folder: Path) -> list[str]:
    """A note for each int8 TFLite file that keeps ops float for LiteRT's CPU delegate (its contract's
    `cpu_float_ops`, tledge.export.tflite.CPU_FLOAT_OPS)."""
    from tledge.metadata import read_tflite_contract

    notes = []
    for r in results:
        path = folder / r.file
        if r.format != "tflite" or r.precision != "int8" or "/" in r.file or not path.is_file():
            continue
        contract = read_tflite_contract(path.read_bytes())
        counts = contract.extra.get("cpu_float_ops") if contract else None
        if counts:
            kept = ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))
            notes.append(f"{r.file} keeps {kept} ops float: LiteRT's CPU delegate (XNNPACK) has no int8 kernel for them, "
                         "and as int8 each would cut its graph and run outside it (MobileNetV3 Small: 3.6-4.4x slower); "
                         "--int8-only (or --device coral-usb) keeps every op int8")
    return notes


def _size_ratio(big: Path, small: Path) -> str:
    """'2.9x smaller' from the two files' sizes (an int8 file is 3-3.5x smaller than its fp32 file, not 4x: the
    quantisation parameters and the float ops it keeps), or 'smaller'."""
    try:
        return f"{big.stat().st_size / small.stat().st_size:.1f}x smaller"
    except (OSError, ZeroDivisionError):
        return "smaller"
