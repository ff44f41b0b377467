"""onnxruntime sessions natively and under qemu-user with another CPU model's CPUID.

`qemu-x86_64 -cpu Haswell python ...` runs this machine's onnxruntime on a CPU that reports AVX2 but
no AVX-512 and no VNNI, so MLAS dispatches its AVX2 int8 kernels (u8 x s8 pair sums in a saturating
int16, vpmaddubsw) as it would on a real Haswell-class CPU. Emulated timings mean nothing; only the
outputs are compared. /proc/cpuinfo under qemu-user still shows the host's flags: label the rows.

This file imports only numpy and onnxruntime (no tledge, no TensorFlow) because it is also the
script the emulated interpreter runs:

    qemu-x86_64 -cpu Haswell PYTHON ort_emulation.py JOBS.json IN.npz OUT.npz

JOBS.json: a list of {"key", "path", "mode", "threads"}; IN.npz: x (float32 pixels); OUT.npz: one
array per key.
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MODES = ("default", "x64qp", "reference")
CPU_LABELS = {"Haswell": "emulated Haswell (AVX2, no VNNI)"}


def label(cpu: str) -> str:
    return CPU_LABELS.get(cpu, f"emulated {cpu}")


def qemu() -> str | None:
    """The qemu-user x86_64 binary on PATH, if any."""
    return shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")


def unavailable() -> str | None:
    """Why emulation cannot run here (None when it can): an x86_64 host with qemu-x86_64 on PATH."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"emulation needs an x86_64 host (this is {platform.machine()})"
    if qemu() is None:
        return "emulation needs qemu-x86_64-static or qemu-x86_64 on PATH (apt-get install qemu-user-static)"
    return None


def qemu_version() -> str:
    exe = qemu()
    if exe is None:
        return "-"
    first = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.splitlines()
    return first[0].strip() if first else "-"


def session(path: Path | str, mode: str, threads: int = 1):
    """An onnxruntime CPU session: default | x64qp (session.x64quantprecision=1) | reference
    (graph optimisation off: QDQ runs as Dequantize -> float op -> Quantize)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if mode == "x64qp":
        so.add_session_config_entry("session.x64quantprecision", "1")
    if mode == "reference":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def outputs(sess, x: np.ndarray, batch: int = 16) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def run_jobs(jobs: list[dict], x: np.ndarray) -> dict[str, np.ndarray]:
    return {j["key"]: outputs(session(j["path"], j["mode"], j.get("threads", 1)), x) for j in jobs}


def run_emulated(jobs: list[dict], x: np.ndarray, cpu: str, timeout: float | None = None) -> dict[str, np.ndarray]:
    """run_jobs in a subprocess under `qemu-x86_64 -cpu CPU` (this interpreter, this onnxruntime)."""
    problem = unavailable()
    if problem:
        raise RuntimeError(problem)
    with tempfile.TemporaryDirectory(prefix="tledge-emu-") as tmp:
        t = Path(tmp)
        (t / "jobs.json").write_text(json.dumps([{**j, "path": str(j["path"])} for j in jobs]))
        np.savez(t / "in.npz", x=np.asarray(x, np.float32))
        cmd = [qemu(), "-cpu", cpu, sys.executable, str(Path(__file__).resolve()),
               str(t / "jobs.json"), str(t / "in.npz"), str(t / "out.npz")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"emulated run (-cpu {cpu}) failed with code {done.returncode}: {tail}")
        with np.load(t / "out.npz") as z:
            return {k: z[k] for k in z.files}


def main(argv: list[str]) -> int:
    jobs_path, in_path, out_path = argv
    jobs = json.loads(Path(jobs_path).read_text())
    with np.load(in_path) as z:
        x = z["x"]
    np.savez(out_path, **run_jobs(jobs, x))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
