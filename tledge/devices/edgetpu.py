"""Coral Edge TPU: loading the delegate (libedgetpu) and running `edgetpu_compiler`.

Neither needs TensorFlow. Without the runtime library the delegate helper returns None with a
TledgeWarning that says how to install it; without the compiler `edgetpu_compile` returns a
result that says how to compile (the command line, and where the compiler runs).
"""
from __future__ import annotations

import platform
import re
import shlex
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tledge.errors import TledgeError, TledgeWarning

COMPILER = "edgetpu_compiler"
_LIBS = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
INSTALL_RUNTIME = (
    "install the Edge TPU runtime from Coral's apt repository: add its key "
    "(https://packages.cloud.google.com/apt/doc/apt-key.gpg, dearmored to /usr/share/keyrings/coral-edgetpu.gpg) and "
    "'deb [signed-by=/usr/share/keyrings/coral-edgetpu.gpg] https://packages.cloud.google.com/apt coral-edgetpu-stable "
    "main' to /etc/apt/sources.list.d/, then sudo apt-get install libedgetpu1-std and replug the accelerator"
)  # whole here: the docs folder is not in the wheel a board installs
INSTALL_COMPILER = (
    "edgetpu_compiler runs on x86-64 Debian/Ubuntu only: with Coral's apt repository added, "
    "sudo apt-get install edgetpu-compiler (or use Coral's Colab notebook 'compile_for_edgetpu')"
)


def edgetpu_library() -> str:
    return _LIBS.get(platform.system(), _LIBS["Linux"])


def delegate_loaders() -> list[tuple[str, Callable]]:
    """`load_delegate` functions of the TFLite interpreters that are installed, best first."""
    loaders = []
    try:
        from ai_edge_litert.interpreter import load_delegate

        loaders.append(("ai_edge_litert", load_delegate))
    except Exception:  # noqa: BLE001 - a broken wheel raises anything; the interpreter's load says why
        pass
    try:
        from tflite_runtime.interpreter import load_delegate as tr_load

        loaders.append(("tflite_runtime", tr_load))
    except ImportError:
        pass
    return loaders


def missing_library(lib: str) -> str | None:
    """Why the shared library cannot be opened, or None when it can."""
    from tledge._deps import open_library

    return open_library(lib)[1]


def load_edgetpu_delegate(device: str | None = None, library: str | None = None):
    """The Edge TPU delegate, or None (with a TledgeWarning saying how to install it).

    device: None for the first Edge TPU, or "usb", "usb:0", "pci:0" as libedgetpu names them.
    """
    lib = library or edgetpu_library()
    options = {"device": device} if device else {}
    loaders = delegate_loaders()
    if not loaders:
        warnings.warn("no TFLite interpreter to load the Edge TPU delegate into: pip install ai-edge-litert; "
                      "then " + INSTALL_RUNTIME, TledgeWarning, stacklevel=2)
        return None
    missing = missing_library(lib)
    if missing:  # checked first: ai_edge_litert's Delegate raises again from __del__ when the load fails
        warnings.warn(f"Edge TPU runtime {lib} not found ({missing}). {INSTALL_RUNTIME[0].upper()}"
                      f"{INSTALL_RUNTIME[1:]}. Running on the CPU instead.", TledgeWarning, stacklevel=2)
        return None
    errors = []
    for name, load in loaders:
        try:
            return load(lib, options)
        except (ValueError, OSError, RuntimeError) as exc:  # "Failed to load delegate from ..."
            errors.append(f"{name}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
    warnings.warn(f"Edge TPU delegate {lib} could not be loaded ({'; '.join(errors)}). If the accelerator is "
                  f"plugged in, {INSTALL_RUNTIME}. Running on the CPU instead.", TledgeWarning, stacklevel=2)
    return None


# ---- the compiler ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompileResult:
    compiled: bool
    command: tuple[str, ...]
    output: Path | None = None  # the *_edgetpu.tflite file
    ops_total: int | None = None
    ops_on_tpu: int | None = None
    ops_on_cpu: int | None = None
    subgraphs: int | None = None
    log: str = ""
    message: str = ""

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)

    @property
    def fully_mapped(self) -> bool:
        return self.compiled and self.ops_on_cpu == 0 and bool(self.ops_on_tpu)

    def summary(self, shown: str | None = None) -> str:
        """shown: where the user finds the output (a bundle's model/ file), when not at self.output."""
        if not self.compiled:
            return self.message
        return (f"{self.ops_on_tpu} of {self.ops_total} ops on the Edge TPU, {self.ops_on_cpu} on the CPU "
                f"({self.subgraphs} TPU subgraph(s)) -> {shown or self.output}")


_NUM = {
    "ops_total": r"Total number of operations:\s*(\d+)",
    "ops_on_tpu": r"Number of operations that will run on Edge TPU:\s*(\d+)",
    "ops_on_cpu": r"Number of operations that will run on CPU:\s*(\d+)",
    "subgraphs": r"Number of Edge TPU subgraphs:\s*(\d+)",
}
_TABLE_ROW = re.compile(r"^([A-Z][A-Z0-9_]+)\s+(\d+)\s+(\S.*?)\s*$", re.M)


def parse_compiler_log(text: str) -> dict:
    """Op counts from edgetpu_compiler's output (the summary lines, else its `-s` operator table)."""
    out: dict = {}
    for key, pat in _NUM.items():
        m = re.search(pat, text)
        out[key] = int(m.group(1)) if m else None
    rows = [(op, int(n), status) for op, n, status in _TABLE_ROW.findall(text)]
    if out["ops_on_tpu"] is None and rows:
        out["ops_on_tpu"] = sum(n for _, n, s in rows if s.startswith("Mapped to Edge TPU"))
        out["ops_on_cpu"] = sum(n for _, n, s in rows if not s.startswith("Mapped to Edge TPU"))
    elif out["ops_on_tpu"] is None and out["ops_total"] is not None and "not all operations" not in text:
        out["ops_on_tpu"], out["ops_on_cpu"] = out["ops_total"], 0  # everything mapped: no split printed
    if out["ops_total"] is None and out["ops_on_tpu"] is not None and out["ops_on_cpu"] is not None:
        out["ops_total"] = out["ops_on_tpu"] + out["ops_on_cpu"]
    m = re.search(r"Output model:\s*(\S+)", text)
    out["output_model"] = m.group(1) if m else None
    return out


def edgetpu_compile(tflite_path: "str | Path", out_dir: "str | Path | None" = None, *,
                    compiler: str = COMPILER, extra_args: Sequence[str] = (),
                    timeout: float = 900, shown_dir: "str | Path | None" = None) -> CompileResult:
    """Compile a full-int8 .tflite for the Edge TPU when the compiler is on PATH.

    Output: `<out_dir>/<stem>_edgetpu.tflite` (out_dir defaults to the input's folder). Without the
    compiler, returns compiled=False with the command line to run elsewhere and how to install it;
    `shown_dir`: the folder that command names, where the file will be once the caller is done (an
    export's staging folder is gone by the time the user reads it).
    """
    if isinstance(extra_args, (str, bytes)):  # (a str is a sequence: "--timeout_sec=60" went in letter by letter)
        raise TledgeError(f"extra_args must be a list of arguments, not one string: [{extra_args!r}]")
    src = Path(tflite_path)
    if not src.is_file():
        raise TledgeError(f"no such TFLite file: {src}")
    dst_dir = Path(out_dir) if out_dir is not None else src.parent
    cmd = (compiler, "-s", "-o", str(dst_dir), *extra_args, str(src))
    exe = shutil.which(compiler)
    if exe is None:
        shown = cmd if shown_dir is None else (compiler, "-s", "-o", str(shown_dir), *extra_args,
                                               str(Path(shown_dir) / src.name))
        return CompileResult(False, shown, message=f"{compiler} not found on PATH; {INSTALL_COMPILER}; "
                                                   f"then run: {shlex.join(shown)}")
    dst_dir.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return CompileResult(False, cmd, message=f"{compiler} did not finish within {timeout:.0f} s")
    log = (proc.stdout or "") + (proc.stderr or "")
    info = parse_compiler_log(log)
    output = dst_dir / f"{src.stem}_edgetpu.tflite"
    ok = proc.returncode == 0 and output.is_file()
    tail = " | ".join(ln for ln in log.strip().splitlines()[-3:])
    msg = "compiled" if ok else f"{compiler} failed (exit {proc.returncode}): {tail or 'no output'}"
    return CompileResult(ok, cmd, output if ok else None, info["ops_total"], info["ops_on_tpu"],
                         info["ops_on_cpu"], info["subgraphs"], log, msg)


def not_compiled_from(compiled: Path, src: Path) -> str | None:
    """Why `compiled` cannot be edgetpu_compiler's output for `src` (None: it can): an empty or foreign file, a
    file without the Edge TPU's custom op, or another model than `src` (fallback_problem). Newer than src alone said
    nothing: an empty file, or another model's, shipped as the primary model with the int8 file's parity verdict."""
    from tledge import flatbuf
    from tledge.errors import ModelLoadError

    try:
        customs = flatbuf.tflite_custom_codes(compiled.read_bytes())
    except (OSError, ModelLoadError) as exc:
        return f"not a readable TFLite file ({exc})"
    if "edgetpu-custom-op" not in customs:
        return "it has no edgetpu-custom-op (edgetpu_compiler's output has one)"
    return fallback_problem(compiled, src)


def fallback_problem(compiled: Path, cpu: Path) -> str | None:
    """Why `cpu` (the file beside an Edge TPU file, by its name) is not the model `compiled` was made from, or None.
    The CPU fallback took any file of that name: another model's (1001 ImageNet classes beside a 2-class file) ran
    "instead" and labelled bees "sea urchin", exit 0. Checked: the input/output shapes and quantisation (edgetpu_compiler
    keeps them), and the labels where both files carry a tledge contract."""
    from tledge import flatbuf
    from tledge.errors import ModelLoadError
    from tledge.metadata import read_tflite_contract

    try:
        io = [[[(t["shape"], t["quant"]) for t in tensors[k]] for k in ("inputs", "outputs")]
              for tensors in (flatbuf.tflite_io_tensors(p.read_bytes()) for p in (compiled, cpu))]
    except (OSError, ModelLoadError) as exc:
        return f"not a readable TFLite file ({exc})"
    if io[0] != io[1]:
        shapes = [[[shape for shape, _ in side] for side in sides] for sides in io]
        return (f"input/output shapes {shapes[0]} against {shapes[1]}" if shapes[0] != shapes[1] else
                "their input/output quantisation differs")
    labels = []
    for p in (compiled, cpu):
        try:
            contract = read_tflite_contract(p)
        except Exception:  # noqa: BLE001 - an unreadable contract: the load that follows says what is wrong
            return None
        if contract is None:  # nothing to compare (edgetpu_compiler may drop the metadata)
            return None
        labels.append(contract.labels)
    if labels[0] and labels[1] and labels[0] != labels[1]:
        return "their labels differ"
    return None


def refuse_other_model(compiled: Path, cpu: Path) -> None:
    """TledgeError when `cpu`, the file an Edge TPU file without its runtime would fall back to, is another model
    (fallback_problem): for `tledge.runtime.load` and `load_for_device` alike."""
    why = fallback_problem(compiled, cpu)
    if why:
        from tledge.errors import TledgeError

        raise TledgeError(f"{compiled.name} needs the Edge TPU runtime, which could not be loaded, and {cpu.name} "
                          f"beside it is not the model it was compiled from ({why}): it would answer instead")


def float_notes(src: Path) -> list[str]:
    """What the int8 file `src` keeps float, from its contract (the repair's float layers, the ops kept float for
    CPU delegates), as a note. edgetpu_compiler maps the ops up to the first float one: a coral bundle of a CPU
    export shipped a file with a float stem of 6 convolutions, so nearly all of it ran on the host CPU, unsaid."""
    from tledge.metadata import read_tflite_contract

    try:
        contract = read_tflite_contract(src)
    except Exception:  # noqa: BLE001 - a note only; the file was vouched for by its manifest
        return []
    extra = contract.extra if contract is not None else {}
    parts = [f"{len(extra['float_layers'])} float layers (int8 repair)"] if extra.get("float_layers") else []
    stem = extra.get("float_convolutions")  # the stem repair's count (its layers are not listed)
    if isinstance(stem, int) and not isinstance(stem, bool) and stem > 0:
        parts.insert(0, f"a float stem of {stem} convolutions (int8 repair)")
    if extra.get("cpu_float_ops"):
        parts.append(", ".join(f"{n} {op}" for op, n in sorted(extra["cpu_float_ops"].items())) + " ops")
    where = ("a float stem is at the input, so none of it runs on the Edge TPU, all on the host CPU"
             if isinstance(stem, int) and not isinstance(stem, bool) and stem > 0 else
             "on the Edge TPU only the ops before the first float one run there, the rest on the host CPU")
    said = (f"{src.name} keeps {' and '.join(parts)} float: {where} (tledge export --device coral-usb keeps every op "
            "int8)")
    return [said] if parts else []
