"""`tledge doctor [MODEL_OR_EXPORT] [--json]`: what the runtime will use on this machine, and why.

Paste its output into a bug report. With a model file or an export folder, also loads each model
file and runs it once (exit 1 when one fails). Never imports TensorFlow.
"""
from __future__ import annotations

import json
import sys


def add_arguments(p) -> None:
    p.add_argument("target", nargs="?", metavar="MODEL_OR_EXPORT",
                   help="a .tflite/.onnx file or an export folder: load each model file and run it once")
    p.add_argument("--threads", type=int, help="threads for the model checks")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from pathlib import Path

    from tledge.cli.validate import edge_model
    from tledge.runtime import doctor

    if args.target and Path(args.target).is_file():  # not a model file at all (wrong type, 0 bytes): exit 2
        edge_model(args.target, "MODEL_OR_EXPORT")
    files = doctor.model_files(args.target) if args.target else []  # bad paths: exit 2 before any work
    from tledge.cli import validate as V
    from tledge.runtime.backends import MAX_THREADS

    V.in_range(args.threads, "--threads", 1, MAX_THREADS)
    env = doctor.environment()
    reports = [doctor.check_model(f, args.threads) for f in files]
    if args.json:
        print(json.dumps({**env, "models": [r.to_dict() for r in reports]}, indent=2))
    else:
        print("\n".join(render(env, reports)))
    return 1 if any(not r.ok for r in reports) else 0


def _yes(v) -> str:
    return str(v) if v else "no"


def render(env: dict, reports: list) -> list[str]:
    py, cpu, dl, cam, dev = env["python"], env["cpu"], env["delegates"], env["cameras"], env["device"]
    lines = [f"tledge {env['tledge']} ({env['tledge_path']})",
             f"python {py['version']} {py['implementation']} {py['bits']}-bit, {py['executable']}"
             f"{' (venv)' if py['venv'] else ''}",
             f"platform {py['system']} {py['release']} {py['machine']}; {py['os'] or 'unknown OS'}; "
             f"libc {py['libc'] or '?'}",
             "wheels: " + (", ".join(f"{k} {v}" for k, v in env["wheels"].items()) or "none found")]
    lines += [f"import {k}: {v}" for k, v in env["imports"].items()]
    t, o = env["tflite"], env["onnx"]
    lines.append(f".tflite files -> {t['interpreter'] or 'NONE'} {t['version'] or ''}".rstrip() + f": {t['why']}")
    lines.append(f".onnx files -> onnxruntime {o['onnxruntime'] or 'NONE'}; providers "
                 f"{', '.join(o['providers']) or '-'}" + (f": {o['why']}" if o["why"] else ""))
    th = env["threads"]
    lines.append(f"threads: {th['default'] if th['default'] is not None else 'none: ' + th.get('error', '')} by default"
                 + (f" (TLEDGE_THREADS={th['TLEDGE_THREADS']})" if th["TLEDGE_THREADS"] else ""))
    lines.append(f"cpu: {cpu['model'] or '?'}, {cpu['usable_cores']} usable core(s); "
                 + ("; ".join(cpu["feature_notes"].values()) or "no SIMD features read"))
    lines.append(f"delegates: Edge TPU library {_yes(dl['edgetpu_library'])}, "
                 f"Coral USB {_yes(', '.join(dl['coral_usb']))}, "
                 f"Edge TPU PCIe {_yes(', '.join(dl['edgetpu_pcie']))}, TFLite GPU delegate "
                 f"{_yes(dl['tflite_gpu_delegate'])}, NVIDIA devices {_yes(', '.join(dl['nvidia_devices']))}"
                 f"{', Jetson (L4T)' if dl['tegra'] else ''}")
    lines.append(f"cameras: {', '.join(cam['v4l2_devices']) or 'no /dev/video*'}; picamera2 "
                 f"{'importable' if cam['picamera2'] else 'not installed'}")
    if "error" in dev:
        lines.append(f"device: {dev['error']}")
    else:
        p = dev["prefers"]
        lines.append(f"device: {dev['device']} ({dev['title']}){'' if dev['confident'] else ' (a guess)'}; "
                     f"prefers {p['file']} on {p['backend']}, threads {p['threads'] or 'default'}")
        lines += [f"  evidence: {e['source']}: {e['value']!r} -> {e['meaning']}" for e in dev["evidence"]]
    if env.get("emulation"):
        lines.append(f"WARNING: {env['emulation']}")
    if env["tensorflow_imported"]:
        lines.append("WARNING: TensorFlow is imported in this process")
    for r in reports:
        lines.append(f"model {r.path}: {'OK' if r.ok else 'FAILED'}"
                     + (f" ({r.backend} via {r.provider}, contract {r.contract})" if r.backend else ""))
        lines += [f"  {c.name}: {'ok' if c.ok else 'FAILED'} {c.detail}"
                  + (f" [{c.ms:.1f} ms]" if c.ms is not None else "") for c in r.checks]
    return lines


if __name__ == "__main__":
    sys.exit(1)
