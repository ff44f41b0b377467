"""ci/arm64.sh and ci/arm64_check.py: usage, skipping, and the comparison the target check relies on."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARM64 = REPO / "ci" / "arm64.sh"
pytestmark = pytest.mark.runtime_only


def _check_module():
    sys.path.insert(0, str(REPO / "ci"))
    try:
        import arm64_check
    finally:
        sys.path.pop(0)
    return arm64_check


def test_usage_errors_exit_2(tmp_path):
    for args in ([], ["bogus"], ["install"], ["run", str(tmp_path)], ["check", str(tmp_path)]):
        r = subprocess.run(["bash", str(ARM64), *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
    r = subprocess.run(["bash", str(ARM64), "check", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert "no tledge.json" in r.stderr and str(tmp_path) in r.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to run as nobody")
def test_not_root_skips_with_a_reason():
    cmd = ["runuser", "-u", "nobody", "--", "bash", str(ARM64), "setup"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("SKIP: not root")
    r = subprocess.run(cmd[:4] + ["env", "TLEDGE_ARM64_REQUIRED=1"] + cmd[4:], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 77 and "SKIP:" in r.stdout


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("qemu-aarch64-static"), reason="needs root and qemu")
def test_unknown_emulated_cpu_is_a_usage_error():
    env = {**os.environ, "TLEDGE_ARM64_CPU": "cortex-a999"}
    r = subprocess.run(["bash", str(ARM64), "setup"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "TLEDGE_ARM64_CPU=cortex-a999" in r.stderr, (r.stdout, r.stderr)


def test_compare_labels_and_scores():
    c = _check_module()
    a = {"x.jpg": {"top": [{"index": 1, "score": 0.9}, {"index": 0, "score": 0.1}]},
         "y.jpg": {"top": [{"index": 0, "score": 0.6}, {"index": 1, "score": 0.4}]}}
    same = {k: {"top": [dict(p) for p in v["top"]]} for k, v in a.items()}
    assert c.compare(a, same) == (1.0, 0.0, 2, 0)
    moved = {k: {"top": [dict(p) for p in v["top"]]} for k, v in a.items()}
    moved["y.jpg"]["top"] = [{"index": 1, "score": 0.52}, {"index": 0, "score": 0.48}]
    agree, diff, n, flips = c.compare(a, moved, tol=0.01)
    assert (agree, n, flips) == (0.5, 2, 1) and abs(diff - 0.12) < 1e-9  # margins 0.2 / 0.04: a real flip
    # the arm64 case: an exact tie on one side, a margin within the tolerance on the other: near-tie
    tie = {"y.jpg": {"top": [{"index": 0, "score": 0.5}, {"index": 1, "score": 0.5}]}}
    near = {"y.jpg": {"top": [{"index": 1, "score": 0.516}, {"index": 0, "score": 0.484}]}}
    assert c.compare(tie, near, tol=0.08)[::3] == (0.0, 0)
    assert c.compare(a, {"x.jpg": a["x.jpg"]})[2] == 1  # only images both sides have


def test_pick_images_takes_every_class_in_turn(tmp_path):
    c = _check_module()
    for cls, n in (("ants", 3), ("bees", 5)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            (tmp_path / cls / f"{i}.jpg").write_bytes(b"x")
    picked = c.pick_images(tmp_path, 4)
    assert [p.parent.name for p in picked] == ["ants", "bees", "ants", "bees"]
    assert len(c.pick_images(tmp_path, 100)) == 8
    assert c.precision("model_int8.onnx") == "int8" and c.precision("model_fp32.tflite") == "fp32"


@pytest.mark.slow  # a venv is made before pip finds out (about 20 s)
def test_clients_venv_skips_when_pip_cannot_reach_the_registry(tmp_path):
    """ci/clients_venv.sh: no registry -> one SKIP: line and exit 0, nothing left in the venv cache."""
    env = {**os.environ, "TLEDGE_VENV_CACHE": str(tmp_path / "venvs"), "TLEDGE_CLIENTS_CACHE": str(tmp_path / "c"),
           "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_CACHE_DIR": "1",
           "PIP_FIND_LINKS": "", "BASE_PYTHON": sys.executable}
    r = subprocess.run(["bash", str(REPO / "ci" / "clients_venv.sh")], check=False, capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("SKIP: pip cannot reach the package registry"), (r.stdout, r.stderr[-2000:])
    assert not any((tmp_path / "venvs").glob("clients-*"))


def test_wheel_check_skips_when_pip_cannot_reach_the_registry(tmp_path):
    """ci/runtime_venv.sh wheel: no registry to build the wheel with -> one SKIP: line and exit 0, no venv left."""
    env = {**os.environ, "TLEDGE_VENV_CACHE": str(tmp_path / "venvs"), "PIP_CONFIG_FILE": os.devnull,
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_CACHE_DIR": "1", "PIP_FIND_LINKS": "",
           "BASE_PYTHON": sys.executable}
    r = subprocess.run(["bash", str(REPO / "ci" / "runtime_venv.sh"), "wheel"], check=False, capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("SKIP: the wheel check"), (r.stdout, r.stderr[-2000:])
    assert not any((tmp_path / "venvs").glob("wheel-*"))


def test_the_runtime_venv_minimums_are_pyproject_s():
    """ci/minimums.txt pins each core and [runtime] dependency at the lowest release of its declared `>=` bound:
    numpy 1.23 was declared while predict() relied on numpy 1.24, and no CI venv ran numpy 1.x."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {}
    for text in project["dependencies"] + project["optional-dependencies"]["runtime"]:
        r = Requirement(text)
        lows = [s.version for s in r.specifier if s.operator == ">="]
        if lows:
            declared[r.name] = lows[0]
    from packaging.version import Version

    pinned = {}
    for line in (REPO / "ci" / "minimums.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            r = Requirement(line)
            (spec,) = r.specifier
            assert spec.operator == "==", line
            pinned[r.name] = Version(spec.version)
    assert set(pinned) == set(declared)
    for name, low in declared.items():
        low = Version(low)
        assert pinned[name] >= low and pinned[name].release[:len(low.release)] == low.release, (name, low)
    from tledge.devices.bundle import LOWER_BOUNDS, PLATFORMS  # a bundle's requirements.txt says the same

    assert {k: v for k, v in declared.items() if k in LOWER_BOUNDS} == LOWER_BOUNDS
    litert = next(Requirement(t) for t in project["optional-dependencies"]["runtime"] if t.startswith("ai-edge"))
    bundle = Requirement("ai-edge-litert" + PLATFORMS["ai-edge-litert"].replace(" and ", "; ", 1))
    for system, machine in (("Linux", "aarch64"), ("Linux", "armv7l"), ("Darwin", "arm64"), ("Darwin", "x86_64"),
                            ("Windows", "AMD64")):
        env = {"platform_system": system, "platform_machine": machine}
        assert litert.marker.evaluate(env) == bundle.marker.evaluate(env), (system, machine)
