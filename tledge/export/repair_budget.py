"""The int8 repair ladder's time budget (`tledge export --repair-time SECONDS`, ExportConfig.repair_time).

The ladder (tledge.export.fidelity) runs for every failing int8 file in turn, one budget for all of them,
counted from the ladder's start (the Keras 3 rebuild included). Once it is spent no new rung starts, and a weight
repair pass running then stops before its next kernel, a sensitivity search before its next trial graph
(`stopper`: RepairTimeout, the rung is reported as stopped);
a conversion running then finishes (it cannot be stopped half-way without losing its work). With several failing
files the k-th of n also stops starting rungs at k/n of the budget (`share`), so the first file cannot leave
the others nothing: time it does not use passes on. The rungs not started are recorded as attempts rows with a
`skipped` reason (parity.md, parity.json) and one note per file (the terminal summary), and the best file so
far is judged as usual: kept if it passes, else the loud fallback.

Why 300 s: MobileNet 0.25 ladders finish within ~30 s of repair, so the default never cuts them; with every rung
forced, a ResNet50 V2 ladder took 556 s at 96 px on the 2-core test machine, and 20-25 minutes at 64 px under
load (docs/int8-fidelity.md, "Repair time").
"""
from __future__ import annotations

import time

REPAIR_SECONDS = 300.0  # the default budget (seconds of repair, every failing int8 file together)


def share(budget: float | None, k: int, n: int) -> float | None:
    """Seconds from the ladder's start until which the k-th (from 1) of n failing files may start rungs."""
    return None if budget is None else budget * k / max(n, 1)


def spent(limit: float | None, started: float) -> float | None:
    """Seconds since `started` (time.perf_counter) when they reach `limit` (None: no limit), else None."""
    elapsed = time.perf_counter() - started
    return elapsed if limit is not None and elapsed >= limit else None


def stopper(limit: float | None, started: float):
    """() -> why a running repair must stop now (its file's `limit` is spent), or None; None without a limit."""
    if limit is None:
        return None

    def stop() -> str | None:
        elapsed = spent(limit, started)
        return None if elapsed is None else f"repair time budget spent ({elapsed:.0f} s of {limit:g} s)"
    return stop


def skip(file: str, rungs, limit: float, budget: float, elapsed: float, attempts: list[dict],
         notes: list[str]) -> None:
    """Record the rungs of `file` that did not start because its `limit` (its share of `budget`) was reached."""
    names = [r.name for r in rungs]
    if not names:
        return
    whole = limit >= budget
    what = "repair time budget" if whole else "share of the repair time budget"
    reason = f"{what} spent ({elapsed:.0f} s of {limit:g} s{'' if whole else f'; budget {budget:g} s'})"
    attempts.extend({"file": file, "rung": name, "skipped": reason, "seconds": None} for name in names)
    amount = f"{budget:g} s" if whole else f"{limit:g} of {budget:g} s, split between the failing int8 files"
    notes.append(f"{file}: {'the' if whole else 'its'} {what} ({amount}, --repair-time) was spent after "
                 f"{elapsed:.0f} s; rung{'s' if len(names) > 1 else ''} not started: {', '.join(names)} (a larger "
                 f"--repair-time tries {'them' if len(names) > 1 else 'it'})")


def tried(attempts: list[dict], file: str) -> str:
    """`tflite-bias, repaired`, `no applicable repair`, `tflite-bias, 3 rungs not started for time`: the rungs
    of `file` that ran, and how many did not start for time."""
    ran = [a["rung"] for a in attempts if a["file"] == file and a["rung"] != "plain" and "skipped" not in a]
    late = sum(a["file"] == file and "skipped" in a for a in attempts)
    text = ", ".join(ran) or ("no repair" if late else "no applicable repair")
    return text + (f", {late} rung{'s' if late > 1 else ''} not started for time" if late else "")
