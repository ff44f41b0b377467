"""A deploy bundle: one .tar.gz with what one board needs to classify, and nothing of TensorFlow.

    <export>-<device>/
      model/<chosen file(s)>, tledge.json, labels.txt, parity.json/.md, manifest.json (the export's,
                          restricted to these files): only files the export's manifest vouches for
      lib/tledge/...      tledge's own source, minus training and export (run.sh puts lib/ first on Python's path)
      requirements.txt    the runtime for that board, pinned to the versions of the building machine
      run.sh              ./run.sh [SOURCE] -> tledge run on camera 0 (default), an image, folder or video;
                          ./run.sh --check -> tledge parity --golden: the board against the Keras outputs
                          stored at export (model/golden.npz), exit 1 when it disagrees
      README.md, bundle.json (manifest: device, options, sha256 of every file)

tledge is vendored as source rather than built as a wheel: no build step (no setuptools on the
board, no network), and the package is pure Python.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tledge import artifacts
from tledge import trust
from tledge._deps import WHEEL
from tledge.devices.options import Options, resolve
from tledge.devices.profiles import Family, Profile, get_profile
from tledge.devices.runsh import run_sh, venv_line
from tledge.errors import TledgeError
from tledge.safejson import finite
from tledge.text import printable

# package parts that need TensorFlow/Keras: left out of the bundle
# (cli/parity.py stays: `tledge parity --golden` is the board's TensorFlow-free check)
VENDOR_EXCLUDE = {"train", "export", "layers.py", "cli/export.py", "cli/export_labels.py", "cli/train.py", "cli/demo.py"}
LOWER_BOUNDS = {"numpy": "1.23", "opencv-python-headless": "4.8", "ai-edge-litert": "2.3",
                "onnxruntime": "1.20", "flatbuffers": "23.5"}


@dataclass(frozen=True)
class BundleResult:
    path: Path
    top: str  # the folder the tarball unpacks to
    device: str
    model: str  # the primary model file (name inside model/)
    fallback: str | None  # a CPU file beside it when the primary needs an accelerator
    members: tuple[str, ...]
    options: Options
    notes: tuple[str, ...] = ()


# ---- choosing files ----------------------------------------------------------------------------------
def _cpu_fallback(names: list[str], profile: Profile, primary: str) -> str | None:
    for t in profile.targets:
        if not t.needs_accelerator and t.filename != primary and t.filename in names:
            return t.filename
    return None


def _maybe_compile(export_dir: Path, names: list[str], opts: Options, work: Path, notes: list[str]) -> Path | None:
    """For an Edge TPU profile without a compiled file: compile the (vouched) int8 file, or note how to."""
    from tledge.devices.edgetpu import edgetpu_compile, float_notes, not_compiled_from

    src = export_dir / artifacts.filename_of("tflite", "int8")
    if not opts.compile_edgetpu or opts.model_file != src.name or src.name not in names:
        return None
    notes += float_notes(src)
    manual = export_dir / artifacts.filename_of("tflite", "int8", "edgetpu")  # compiled by hand, as the docs and the note say
    if manual.is_file() and manual.stat().st_mtime >= src.stat().st_mtime:
        import shutil

        why = not_compiled_from(manual, src)  # (its quantisation and labels too: shapes alone took another int8
        if why:  # file's compilation as this one's)
            raise TledgeError(f"{manual}: {why}, so it is not model_int8.tflite compiled for the Edge TPU: delete it "
                              f"(tledge bundle compiles the int8 file where edgetpu_compiler is installed) or "
                              f"compile again: edgetpu_compiler -s -o {export_dir} {src}")
        notes[:] = [n for n in notes if not n.startswith(f"{manual.name}: not in ")]
        notes.append(f"{manual.name}: compiled outside tledge, unverified: newer than the vouched model_int8.tflite, "
                     "with its input/output shapes and quantisation; the int8 file's parity verdict applies: run "
                     "./run.sh --check on the board")
        return Path(shutil.copy(manual, work / manual.name))  # as a file compiled now: listed in the manifest
    res = edgetpu_compile(src, work, shown_dir=export_dir)  # not the bundle's temporary folder
    if res.compiled and res.output:
        notes.append(f"edgetpu_compiler: {res.summary(shown=f'model/{res.output.name}')}")  # not the temp folder
        return res.output
    notes.append(f"not compiled for the Edge TPU (the int8 file runs on the host CPU): {res.message}")
    return None


def choose_models(export_dir: Path, profile: Profile, work: Path, notes: list[str], names: list[str],
                  **explicit) -> tuple[list[Path], Options]:
    """The model files for this board among `names` (the files the manifest vouches for): the
    preferred one, plus a CPU fallback when it needs an accelerator."""
    explicit = {k: v for k, v in explicit.items() if v is not None}  # the CLI passes every option, unset = None
    try:
        opts = resolve(profile, available=names, **explicit)
    except TledgeError as exc:
        raise TledgeError(f"{exc}" + (f" ({'; '.join(notes)})" if notes else "")) from None
    model = export_dir / opts.model_file
    best = profile.best.filename
    if best != opts.model_file and not explicit and not opts.compile_edgetpu:  # (coral: compiled below, or said)
        notes.append(f"{profile.name}'s best file, {best}, is not in the export (or failed parity): {opts.model_file} "
                     f"ships instead (tledge export --device {profile.name} makes it)")
    # (--format tflite is the format the Edge TPU runs: it skipped the compile and every Edge TPU note)
    compiled = _maybe_compile(export_dir, names, opts, work, notes) if explicit.get("backend") in (None, "tflite") \
        else None
    if compiled is not None:
        opts = resolve(profile, available=[compiled.name], **explicit)
        return [compiled, model], opts
    files = [model]
    if opts.target is not None and opts.target.needs_accelerator:
        fb = _cpu_fallback(names, profile, model.name)
        if fb:
            files.append(export_dir / fb)
    return files, opts


# ---- generated files ---------------------------------------------------------------------------------
def _installed_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# where a package has wheels, as pyproject.toml's [runtime] says (ai-edge-litert 2.x: none for Windows or Intel Macs)
PLATFORMS = {"ai-edge-litert": ' and (platform_system == "Linux" or platform_system == "Darwin" and '
                               'platform_machine == "arm64")'}


def requirement_lines(packages: list[str], constraints: tuple[str, ...] = ()) -> list[str]:
    """Exact pins for this machine's Python (where the bundle was built), lower bounds elsewhere;
    a profile's constraint (e.g. `numpy>=1.23,<2` on Jetson) replaces both."""
    import re

    fixed = {re.split(r"[<>=!~;\s\[]", c, maxsplit=1)[0].lower(): c for c in constraints}
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = []
    for pkg in packages:
        if pkg.lower() in fixed:
            lines.append(f"{fixed[pkg.lower()]}  # set by the {pkg} constraint of this board's profile")
            continue
        ver = _installed_version(pkg)
        low = LOWER_BOUNDS.get(pkg)
        where = PLATFORMS.get(pkg, "")
        if ver:
            lines.append(f'{pkg}=={ver}; python_version == "{py}"{where}')
            lines.append(f'{pkg}{">=" + low if low else ""}; python_version != "{py}"{where}')
        else:
            lines.append(f"{pkg}{'>=' + low if low else ''}{'; ' + where[5:] if where else ''}"
                         "  # not installed where this bundle was built")
    return lines


def runtime_packages(profile: Profile, model_names: list[str]) -> tuple[list[str], list[str]]:
    """(PyPI packages, comment lines) for the files in the bundle on this board."""
    pkgs = [p for p in profile.pip if p in ("numpy", "opencv-python-headless")]
    comments = []
    if any(n.endswith(".tflite") for n in model_names):
        pkgs += ["ai-edge-litert", "flatbuffers"]
    if any(n.endswith(".onnx") for n in model_names):
        if profile.family is Family.JETSON and "onnxruntime" not in profile.pip:  # (the Nano's pyenv: PyPI's CPU one)
            comments.append("# onnxruntime-gpu: not on PyPI for aarch64 -> NVIDIA's wheel for your JetPack "
                            "(https://elinux.org/Jetson_Zoo#ONNX_Runtime); do not also install onnxruntime")
        else:
            pkgs.append("onnxruntime")
        pkgs.append("flatbuffers")
    if "opencv-python-headless" not in pkgs:
        comments.append("# OpenCV: use the system's python3-opencv (built with GStreamer for the camera) "
                        "through a venv made with --system-site-packages")
    if profile.family is Family.CORAL:
        comments.append("# Edge TPU runtime: libedgetpu1-std from Coral's apt repository (see README.md)")
    return list(dict.fromkeys(pkgs)), comments


def requirements_txt(profile: Profile, model_names: list[str]) -> str:
    import tledge

    pkgs, comments = runtime_packages(profile, model_names)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    head = [f"# tledge {tledge.__version__} runtime for {profile.name}: {profile.title}. No TensorFlow.",
            f"# Exact pins: the versions this bundle was built and checked with (Python {py});",
            "# other Pythons get lower bounds (the newest release at or above tledge's minimum).",
            "# tledge itself is vendored in lib/ (run.sh puts lib/ first on Python's path): nothing to install for it."]
    return "\n".join(head + comments + requirement_lines(pkgs, profile.constraints)) + "\n"


def _board_steps(profile: Profile) -> list[str]:
    """The profile's install lines minus making a venv and installing tledge (the bundle does both)."""
    skip = ("-m venv", f"./{WHEEL}", "# --no-deps")  # the wheel's line is left out, and so is what explains it
    return [ln.replace("~/tledge-venv/", ".venv/") for ln in profile.install if not any(k in ln for k in skip)]


def _before_and_after_the_venv(steps: list[str]) -> tuple[list[str], list[str]]:
    """The board's steps in two parts: the system's (apt) before the venv is made, what goes into the venv after it;
    comment lines go with the command after them (comments with no command after them: before)."""
    first, then, pending = [], [], []
    for ln in steps:
        pending.append(ln)
        if not ln.lstrip().startswith("#"):
            (then if ".venv/" in ln else first).extend(pending)
            pending = []
    return first + pending, then


def readme(profile: Profile, models: list[str], opts: Options, notes: list[str], golden: bool = True) -> str:
    lines = [f"# tledge bundle for {profile.title}", "",
             f"Model: `model/{models[0]}` ({opts.backend} {opts.precision}, {opts.target.accel.value if opts.target else 'cpu'})"
             + (f"; CPU fallback `model/{models[1]}`" if len(models) > 1 else "") + ".",
             f"Threads: {opts.threads or 'default'}. Assumes {profile.os}.", "", "## Install (once)", ""]
    first, then = _before_and_after_the_venv(_board_steps(profile))
    where = f"(from `tledge devices show {profile.name}`)"
    if first:
        lines += [f"First, for this board {where}:", "", "```sh", *first, "```", "", "Then:", ""]
    lines += ["```sh", venv_line(profile), ".venv/bin/pip install -r requirements.txt", "```", ""]
    if then:
        lines += [f"Then, for this board {where}:", "", "```sh", *then, "```", ""]
    if golden:
        lines += ["## Check the board (once, after installing)", "", "```sh", "./run.sh --check", "```", "",
                  "Runs every model file of this bundle on the parity images stored at export "
                  "(`model/golden.npz`: prepared pixels and the Keras model's outputs) and compares, with the "
                  "export's thresholds: exit 0 when this board reproduces them, 1 when it disagrees (a "
                  "different runtime version, a broken delegate or kernel), 2 when a file changed since "
                  "export or the runtime of the model `./run.sh` runs is missing (the Edge TPU runtime for an "
                  "`_edgetpu` file; other files this board cannot run are noted, not failed). `--json` and `--junit FILE` as for `tledge parity`.", ""]
    else:
        lines += ["No golden outputs in this export (made by an older tledge): re-export to get "
                  "`./run.sh --check`.", ""]
    lines += ["## Run", "", "```sh", "./run.sh            # camera 0", "./run.sh photos/    # a folder of images",
              "./run.sh clip.mp4   # a video", "./run.sh photos/ --json --top-k 3   # more tledge run options"]
    if profile.family is Family.RPI:
        lines.append("./run.sh picamera2  # the CSI camera (needs the venv made with --system-site-packages)")
    if len(models) > 1:
        lines.append(f"MODEL={models[1]} ./run.sh   # the CPU fallback, when the accelerator is missing")
    lines += ["```", "",
              "Check speed on the board: `PYTHONPATH=lib .venv/bin/python -m tledge bench "
              f"model/{models[0]} --device {profile.name}`.", "", f"Camera: {profile.camera}", "",
              "## Known limits", "", *[f"- {n}" for n in list(profile.notes) + notes], ""]
    return "\n".join(lines)


# ---- writing -----------------------------------------------------------------------------------------
def vendored_sources() -> list[tuple[Path, str]]:
    """(file, path inside lib/) for the tledge package, minus the parts that need TensorFlow."""
    import tledge

    root = Path(tledge.__file__).resolve().parent
    out = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        if "__pycache__" in rel or rel in VENDOR_EXCLUDE or rel.split("/")[0] in VENDOR_EXCLUDE:
            continue
        out.append((f, f"tledge/{rel}"))
    return out


def build_time() -> int:
    """The bundle's time (its members' and bundle.json's): SOURCE_DATE_EPOCH when set (reproducible builds: two bundles
    of one export are then the same bytes), else now."""
    import os

    given = os.environ.get("SOURCE_DATE_EPOCH")
    if given is None or given == "":
        return int(time.time())
    if not given.strip().isdigit() or int(given) > 2**32 - 1:  # (a gzip header holds 32 bits: a traceback)
        raise TledgeError(f"SOURCE_DATE_EPOCH={given!r} is not a whole number of seconds since 1970 (up to 2**32 - 1)")
    return int(given)


@contextlib.contextmanager
def _archive(path: Path, top: str, when: int):
    """A .tar.gz at `path` whose gzip header holds no file name and `when` (tarfile's "w:gz" put the temporary file's
    hidden name and the time now there: two bundles of one export always differed, and `gunzip -N` made the
    hidden file)."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=when) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        yield _Tar(tar, top, when)


class _Tar:
    def __init__(self, tar: tarfile.TarFile, top: str, when: int):
        self.tar, self.top, self.when, self.hashes = tar, top, when, {}

    def add_bytes(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(f"{self.top}/{rel}")
        info.size, info.mode, info.mtime = len(data), mode, self.when
        self.tar.addfile(info, io.BytesIO(data))
        self.hashes[rel] = hashlib.sha256(data).hexdigest()

    def add_file(self, rel: str, path: Path, sha256: str | None = None) -> None:
        """sha256: what the export manifest recorded; the bytes read now must still match it."""
        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise TledgeError(f"{path}: changed since export (sha256 differs from {artifacts.MANIFEST}): "
                              "run tledge export again")
        self.add_bytes(rel, data)


def _manifest(profile: Profile, models: list[str], opts: Options, notes: list[str], hashes: dict, when: int) -> bytes:
    import tledge

    data = {"format": "tledge.bundle", "version": 1, "device": profile.name, "title": profile.title,
            "model": f"model/{models[0]}", "fallback": f"model/{models[1]}" if len(models) > 1 else None,
            "options": opts.to_dict(), "tledge": tledge.__version__,
            "built_with_python": ".".join(map(str, sys.version_info[:3])),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)), "notes": notes,
            "sha256": dict(sorted(hashes.items()))}
    return (json.dumps(finite(data), indent=2, allow_nan=False) + "\n").encode()


def _export_manifest(m: artifacts.Manifest, shipped: list[str], compiled: Path | None, data: dict) -> bytes:
    """The export's manifest restricted to what the bundle ships (so `tledge run model/` on the
    board verifies them too), plus a file compiled at bundle time, derived from the int8 file."""
    from dataclasses import replace

    entries = [e for e in m.files if e.file in shipped]
    if compiled is not None:
        src = m.entry(artifacts.filename_of("tflite", "int8"))
        entries.append(artifacts.Entry(compiled.name, "model", len(data[compiled.name]),
                                       hashlib.sha256(data[compiled.name]).hexdigest(), "tflite", "int8",
                                       src.verdict, {"note": "compiled at bundle time; the int8 file's "
                                                             "parity verdict applies"}, src.file))
    return (json.dumps(finite(replace(m, files=tuple(entries)).to_dict()), indent=2, allow_nan=False) + "\n").encode()


def make_bundle(export_dir: "str | Path", device: "str | Profile", out: "str | Path | None" = None,
                **explicit) -> BundleResult:
    """Write `<out>` (default ./<export>-<device>.tar.gz) atomically; explicit backend/precision/threads win.
    Only files the export's manifest.json vouches for (listed, passed parity, sha256 unchanged) are
    shipped; a folder without a manifest, or whose tledge.json/labels.txt changed, is refused."""
    from tledge.io import atomic_path

    src = Path(export_dir)
    when = build_time()
    profile = get_profile(device)
    m, ok, notes = trust.vouched(src, "tledge bundle")
    names = [e.file for e in ok]
    dst = Path(out) if out is not None else Path.cwd() / f"{src.resolve().name}-{profile.name}.tar.gz"
    top = dst.name[: -len(".tar.gz")] if dst.name.endswith(".tar.gz") else dst.stem
    if top.strip(".") == "":  # --out .tar.gz: members /model/..., ../model/... or ./model/...
        raise TledgeError(f"--out {out}: the bundle unpacks to a folder named after the file, and {top!r} is no "
                          "folder name: name it, e.g. --out model-rpi4.tar.gz")
    try:  # bytes that are no UTF-8 (a Latin-1 name): Python's tar headers say hdrcharset=BINARY, and GNU tar warned
        top.encode("utf-8")  # about it on every member of the bundle
    except UnicodeEncodeError:
        raise TledgeError(f"--out {printable(top)}: the bundle unpacks to a folder "
                          "named after the file, and this name is not UTF-8 text: use another name") from None
    with tempfile.TemporaryDirectory(prefix="tledge-bundle-") as work:
        files, opts = choose_models(src, profile, Path(work), notes, names, **explicit)
        names = [f.name for f in files]
        compiled = files[0] if files[0].parent != src else None
        with atomic_path(dst) as tmp:
            with _archive(tmp, top, when) as t:
                for f in files:
                    entry = m.entry(f.name) if f.parent == src else None
                    t.add_file(f"model/{f.name}", f, entry.sha256 if entry else None)
                sides = [e for e in m.files if e.role == "side"]
                for e in sides:
                    t.add_file(f"model/{e.file}", src / e.file, e.sha256)
                data = {compiled.name: compiled.read_bytes()} if compiled is not None else {}
                t.add_bytes(f"model/{artifacts.MANIFEST}",
                            _export_manifest(m, names + [e.file for e in sides], compiled, data))
                for f, rel in vendored_sources():
                    t.add_file(f"lib/{rel}", f)
                t.add_bytes("requirements.txt", requirements_txt(profile, names).encode())
                t.add_bytes("run.sh", run_sh(profile, names[0], explicit.get("threads"), tuple(names)).encode(),
                            mode=0o755)
                golden = any(e.file == "golden.npz" for e in sides)
                t.add_bytes("README.md", readme(profile, names, opts, notes, golden=golden).encode())
                members = sorted(t.hashes) + ["bundle.json"]
                t.add_bytes("bundle.json", _manifest(profile, names, opts, notes, t.hashes, when))
    return BundleResult(dst, top, profile.name, names[0], names[1] if len(names) > 1 else None,
                        tuple(members), opts, tuple(notes))
