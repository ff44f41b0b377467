"""The reference export the arm64 check runs: the issue's MobileNet v1 0.25 (ImageNet weights, frozen,
2-class head trained on hymenoptera_data/train; tests/realdata.py) exported with --int8 to fp32 and
int8 TFLite and ONNX. Made once (a few minutes: training, then the int8 fidelity loop) and cached.

    python ci/arm64_ref.py --assets ../shared/assets --out ~/.cache/tledge-arm64/ref   # prints the export folder
    python ci/arm64_ref.py --assets ../shared/assets --out ~/.cache/tledge-clients/ref --all-tflite
        # every TFLite precision (fp32, fp16, dynamic, int8), no ONNX: what ci/clients_venv.sh checks MediaPipe on

Needs TensorFlow (the host's tledge[all]); the arm64 root never does.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fresh", action="store_true", help="rebuild even when cached")
    p.add_argument("--all-tflite", action="store_true", help="every TFLite precision and no ONNX")
    a = p.parse_args(argv)
    export_dir = a.out / "export"
    stamp = a.out / "export.key"
    key = _code_key() + ("-all-tflite" if a.all_tflite else "")
    if (export_dir / "manifest.json").is_file() and not a.fresh and stamp.is_file() and stamp.read_text() == key:
        print(f"reusing the reference export {export_dir} (exporter unchanged)", file=sys.stderr)
        print(export_dir)
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    sys.path.insert(0, str(REPO / "tests"))
    import realdata

    from tledge.export.pipeline import ExportConfig, export

    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    h5 = realdata.hymenoptera_mobilenet(a.assets, a.out, size=224)
    data = a.assets / "hymenoptera_data"
    tmp = a.out / "export.partial"
    cfg = ExportConfig(out=tmp, int8=True, calib=str(data / "train"), val=str(data / "val"),
                       preprocess="mobilenet")
    if a.all_tflite:
        cfg = dataclasses.replace(cfg, formats=("tflite",), fp16=True, dynamic=True)
    res = export(h5, cfg)
    print(f"reference export: {time.time() - t0:.0f} s; parity {'passed' if res.passed else 'FAILED'}",
          file=sys.stderr)
    if export_dir.exists():
        import shutil

        shutil.rmtree(export_dir)
    tmp.rename(export_dir)
    stamp.write_text(key)
    print(export_dir)
    return 0


def _code_key() -> str:
    """The exporter's code (every tledge/*.py), so a changed exporter rebuilds the cached export."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((REPO / "tledge").rglob("*.py")):
        h.update(f.relative_to(REPO).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


if __name__ == "__main__":
    sys.exit(main())
