"""What parity hands to CI and boards, with the inputs CI really has: a JUnit path inside an input folder (a bundle's
model/, an image folder), file names no XML can hold, a thresholds entry by file name for a file whose name and
precision differ, an fp32 ONNX file with uint8 pixels in, a bundle whose bundle.json is gone."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from tiny import TINY

from tledge.artifacts import Thresholds
from tledge.cli import main
from tledge.devices.bundle import make_bundle
from tledge.parity import ParityReport, ParityResult, thresholds_from_dict, xml_legal


@pytest.fixture
def bundle(tmp_path) -> Path:
    res = make_bundle(TINY, "x86-cpu", tmp_path / "b.tar.gz")
    with tarfile.open(res.path) as tar:
        tar.extractall(tmp_path / "board", filter="data")
    return tmp_path / "board" / res.top


def test_junit_inside_an_input_folder_is_refused_an_earlier_report_replaced(bundle, capsys):
    """`--junit model/model_int8.tflite` (a bundle keeps its files one folder down) replaced the model with XML and
    said PASSED; an image under --images was replaced the same way."""
    for target in (bundle / "model" / "model_int8.tflite", bundle / "model" / "golden.npz"):
        before = target.read_bytes()
        assert main(["parity", "--golden", str(bundle), "--junit", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "an input of this command" in err, err
        assert target.read_bytes() == before
    report = bundle / "model" / "junit.xml"  # a report of an earlier run in the folder: replaced, as CI reruns do
    for _ in range(2):
        assert main(["parity", "--golden", str(bundle), "--junit", str(report)]) == 0
        assert ET.parse(report).getroot().get("failures") == "0"
    capsys.readouterr()


def test_junit_holds_any_file_name():
    """A file named `ctl\\x1b.tflite` gave XML no parser reads; `m\\xff.tflite` (undecodable bytes) a traceback."""
    names = ["ok\x01.tflite", "ctl\x1bx.tflite", os.fsdecode(b"m\xff.tflite"), "a&b <\"x\">.tflite", "fourmi é.onnx"]
    results = [ParityResult(file=n, format="tflite", precision="int8", images=3, max_abs_error=0.1, mean_abs_error=0.0,
                            median_image_max_abs=0.0, top1_agreement=1.0, accuracy=None, reference_accuracy=None,
                            passed=i % 2 == 0, failures=[] if i % 2 == 0 else [f"bad \x07 {n}"])
               for i, n in enumerate(names)]
    xml = ParityReport(images=3, results=results).to_junit()
    xml.encode("utf-8")  # no surrogates left
    cases = [c.get("name") for c in ET.fromstring(xml).iter("testcase")]
    assert cases == ["ok\\x01.tflite", "ctl\\x1bx.tflite", "m\\xff.tflite", "a&b <\"x\">.tflite", "fourmi é.onnx"]
    assert xml_legal("plain é") == "plain é"


def test_thresholds_by_file_name_follow_the_files_own_precision():
    """An int8 file named model_fp32.tflite: its entry `min_agreement = 0.9` kept fp32's max_abs 1e-4 and failed a
    file that passes as int8 without the entry."""
    table = thresholds_from_dict({"model_fp32.tflite": {"min_agreement": 0.9}, "model_int8.onnx": {"max_abs": 0.5}})
    as_int8 = Thresholds.lookup(table, "model_fp32.tflite", "int8")
    assert as_int8.min_agreement == 0.9 and as_int8.max_abs is None
    assert as_int8.max_accuracy_drop == Thresholds.for_precision("int8").max_accuracy_drop
    assert Thresholds.lookup(table, "model_fp32.tflite", "fp32").max_abs == 1e-4  # name and file agree: as built
    as_fp32 = Thresholds.lookup(table, "model_int8.onnx", "fp32")  # an fp32 file named int8 keeps fp32's gate
    assert as_fp32.max_abs == 0.5 and as_fp32.min_agreement == 1.0 and as_fp32.max_accuracy_drop is None


def test_fp32_onnx_with_uint8_pixels_is_fp32(tmp_path):
    """`--onnx-input uint8` fp32 files were checked as int8 (from the input dtype alone): no max_abs gate."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from tledge.export.check import precision_of
    from tledge.runtime import load

    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [0.1, -0.2, 0.3, 0.4, -0.5, 0.6])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Flatten", ["f"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["scores"])],
        "g", [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 1, 1, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])], [w])
    path = tmp_path / "model_fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    model = load(path, preprocess="raw", labels=["a", "b"])
    assert model.backend.inp.dtype == "uint8" and precision_of(model) == "fp32"
    assert precision_of(load(TINY / "model_int8.onnx")) == "int8"


@pytest.mark.parametrize("quantise,precision", [("dynamic", "dynamic"), ("qdq", "int8")])
def test_onnx_precision_from_its_quantisation_ops(tmp_path, quantise, precision):
    """DynamicQuantizeLinear (activations quantised at run time, float in between): dynamic's budget; a
    QuantizeLinear / DequantizeLinear pair with fixed scales (static QDQ): int8's."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from tledge.export.check import precision_of
    from tledge.runtime import load

    consts = [helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [0.1, -0.2, 0.3, 0.4, -0.5, 0.6]),
              helper.make_tensor("s", TensorProto.FLOAT, [], [0.01]),
              helper.make_tensor("z", TensorProto.UINT8, [], [0])]
    q = [helper.make_node("DynamicQuantizeLinear", ["flat"], ["q", "qs", "qz"]),
         helper.make_node("DequantizeLinear", ["q", "qs", "qz"], ["dq"])] if quantise == "dynamic" else \
        [helper.make_node("QuantizeLinear", ["flat", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["pixels"], ["flat"]), *q, helper.make_node("MatMul", ["dq", "w"], ["scores"])],
        "g", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 1, 1, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])], consts)
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    assert precision_of(load(path, preprocess="raw", labels=["a", "b"])) == precision


def test_run_sh_check_without_bundle_json_is_one_line(bundle):
    (bundle / "bundle.json").unlink()
    proc = subprocess.run(["sh", str(bundle / "run.sh"), "--check"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("run.sh: the bundle is not intact: bundle.json unreadable")


def test_run_sh_takes_tflite_runtime_where_litert_is_absent(bundle, tmp_path):
    """run.sh asked for ai_edge_litert alone: a board with tflite-runtime (which tledge runs on) got exit 2 and
    "install the runtime". A python whose ai_edge_litert cannot be imported but tflite_runtime can must pass the
    check (here tflite_runtime is LiteRT under that name; ci/runtime_venv.sh runs the real tflite-runtime)."""
    shims = tmp_path / "shims"
    (shims / "ai_edge_litert").mkdir(parents=True)
    (shims / "ai_edge_litert" / "__init__.py").write_text("raise ImportError('not on this board')\n")
    (shims / "tflite_runtime").mkdir()
    (shims / "tflite_runtime" / "__init__.py").write_text("")
    (shims / "tflite_runtime" / "interpreter.py").write_text("")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(shims)}
    run_sh = (bundle / "run.sh").read_text()
    need = run_sh[run_sh.index("importable() {"):run_sh.index("\n}\n", run_sh.index("need() {")) + 3]
    script = tmp_path / "need.sh"
    nocwd = next(ln for ln in run_sh.splitlines() if ln.startswith("NOCWD="))  # need() imports nothing of cwd's
    script.write_text(f'PY="$PYTHON"\nHERE=.\n{nocwd}\n{need}\nneed "numpy, ai_edge_litert" && echo found\n')
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and "found" in proc.stdout, proc.stderr
    shutil.rmtree(shims / "tflite_runtime")
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "cannot be imported" in proc.stderr, proc.stderr


def test_golden_check_of_a_bundle_missing_a_model_file(bundle, capsys):
    """A bundle ships exactly its manifest's files: with one deleted, `run.sh --check` passed on the others (exit 0)
    while run.sh's own model was gone. An export folder keeps its note (a user may delete the files they need not)."""
    (bundle / "model" / "model_int8.tflite").unlink()
    assert main(["parity", "--golden", str(bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is missing model_int8.tflite" in err, err
    folder = bundle.parent / "export"
    shutil.copytree(TINY, folder, ignore=shutil.ignore_patterns("foreign", "images", "reference.json"))
    (folder / "model_int8.onnx").unlink()
    assert main(["parity", "--golden", str(folder)]) == 0
    assert "model_int8.onnx: missing" in capsys.readouterr().err


def test_thresholds_by_a_name_that_states_no_precision():
    """{"hym224_int8.tflite": {"max_accuracy_drop": 0.05}} (meant to loosen) made an int8 file need agreement 1.0."""
    table = thresholds_from_dict({"hym224_int8.tflite": {"max_accuracy_drop": 0.05}, "mine.onnx": {"top_k": 3}})
    t = Thresholds.lookup(table, "hym224_int8.tflite", "int8")
    assert t.max_accuracy_drop == 0.05 and t.min_agreement == Thresholds.for_precision("int8").min_agreement
    fp32 = Thresholds.lookup(table, "mine.onnx", "fp32")  # an fp32 file keeps its max_abs gate
    assert fp32.top_k == 3 and fp32.max_abs == Thresholds.for_precision("fp32").max_abs


def test_thresholds_objects_are_checked_as_tables_are():
    """Thresholds(min_agreement="0.5") failed inside the statistics after the parity run; min_agreement=5 failed every
    file "0.900 < 5"; one Thresholds (not a table) was an AttributeError."""
    from tledge.artifacts import Thresholds
    from tledge.errors import TledgeError

    for bad, said in ((Thresholds(min_agreement="0.5"), "int8.min_agreement must be a number"),
                      (Thresholds(min_agreement=5), r"int8.min_agreement must be in \[0, 1\]")):
        with pytest.raises(TledgeError, match=said):
            thresholds_from_dict({"int8": bad})
    with pytest.raises(TledgeError, match="got one Thresholds"):
        thresholds_from_dict(Thresholds())
    with pytest.raises(TledgeError, match="got list"):
        thresholds_from_dict([1])
    assert thresholds_from_dict({"int8": Thresholds(min_agreement=0.97)})["int8"].min_agreement == 0.97


def test_run_sh_check_needs_one_runtime_not_every_one(tmp_path):
    """A Jetson bundle ships model_fp32.onnx and model_int8.tflite: `./run.sh --check` on a venv with onnxruntime and
    no LiteRT said "numpy, ai_edge_litert, onnxruntime cannot be imported" (exit 2) and checked nothing; parity
    --golden itself checks the files it can run and says which it could not."""
    res = make_bundle(TINY, "jetson-orin", tmp_path / "j.tar.gz")
    with tarfile.open(res.path) as tar:
        tar.extractall(tmp_path / "board", filter="data")
    board = tmp_path / "board" / res.top
    shims = tmp_path / "shims" / "ai_edge_litert"
    shims.mkdir(parents=True)
    (shims / "__init__.py").write_text("raise ImportError('not on this board')\n")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(shims.parent)}
    proc = subprocess.run(["sh", str(board / "run.sh"), "--check"], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "parity: PASSED" in proc.stdout, proc.stdout + proc.stderr
    assert "model_int8.tflite: not checked" in proc.stderr and "model_fp32.onnx" in proc.stdout


def test_raise_if_failed_raises_parity_error_with_every_failure():
    """ParityReport.raise_if_failed, a script's one-line gate (tledge.ParityError, exit 1; assert_parity raises
    AssertionError for pytest instead): every failing file's every failure in one message, the report attached;
    a passing report is returned; a report that checked no file is not a pass."""
    from tledge.errors import ParityError

    def result(name, failures):
        return ParityResult(file=name, format="tflite", precision="int8", images=3, max_abs_error=0.1,
                            mean_abs_error=0.0, median_image_max_abs=0.0, top1_agreement=1.0, accuracy=None,
                            reference_accuracy=None, passed=not failures, failures=failures)

    good = ParityReport(images=3, results=[result("a.tflite", [])])
    assert good.raise_if_failed() is good
    bad = ParityReport(images=3, results=[result("a.tflite", []), result("b.tflite", ["agreement 0.5", "max abs 2"]),
                                          result("c.onnx", ["accuracy drop 0.2"])])
    with pytest.raises(ParityError) as err:
        bad.raise_if_failed()
    lines = str(err.value).splitlines()
    assert lines[1:] == ["  b.tflite: agreement 0.5", "  b.tflite: max abs 2", "  c.onnx: accuracy drop 0.2"]
    assert err.value.report is bad and err.value.exit_code == 1
    with pytest.raises(ParityError, match="no files checked"):
        ParityReport(images=0, results=[]).raise_if_failed()
