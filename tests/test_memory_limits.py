"""A machine short of memory (helper 150: `ulimit -v` on the 1000-class int8 file): photos were counted "skipped" with
exit 0 when memory ran out mid-folder, a failed thread start or a MemoryError gave tracebacks, an installed LiteRT
that could not load was "not installed", and `doctor` died with no report."""
from __future__ import annotations

import sys

import pytest

from tiny import IMAGES, TINY, need


def test_running_out_of_memory_mid_folder_stops_the_run(monkeypatch, capsys):
    from tledge.cli import main
    from tledge.runtime.model import EdgeModel

    need("model_int8.tflite")
    real, calls = EdgeModel.to_input, []

    def short_of_memory(self, image):
        calls.append(1)
        if len(calls) > 2:
            raise MemoryError("Unable to allocate 147. KiB for an array with shape (224, 224, 3)")
        return real(self, image)

    monkeypatch.setattr(EdgeModel, "to_input", short_of_memory)
    code = main(["run", str(TINY / "model_int8.tflite"), "--source", str(IMAGES[0].parent), "-q"])
    assert code == 2 and "out of memory" in capsys.readouterr().err  # (was: "2 ok, N skipped", exit 0)


def test_a_thread_that_cannot_start_is_one_line(monkeypatch, capsys):
    from tledge.cli import main
    from tledge.runtime import pipeline

    def no_threads(*args, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(pipeline, "ordered_map", no_threads)
    code = main(["run", str(TINY / "model_int8.tflite"), "--source", str(IMAGES[0].parent), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot start a thread" in err and "Traceback" not in err


def test_an_installed_litert_that_does_not_load_is_said_so(monkeypatch):
    from tledge.errors import MissingDependency
    from tledge.runtime import litert

    import types

    from tledge.errors import TledgeWarning

    package = pytest.importorskip("ai_edge_litert")
    monkeypatch.delattr(package, "interpreter", raising=False)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # its import fails
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    with pytest.raises(MissingDependency, match="ai_edge_litert is installed but does not import"):
        litert.interpreter_module()
    # another interpreter is there (a TensorFlow the caller imported): it runs, and the warning says why
    lite = types.SimpleNamespace(Interpreter=object, experimental=types.SimpleNamespace(load_delegate=None))
    monkeypatch.setitem(sys.modules, "tensorflow", types.SimpleNamespace(lite=lite))
    with pytest.warns(TledgeWarning, match="installed but does not import.*falling back to tensorflow.lite"):
        assert litert.interpreter_module()[1] == "tensorflow.lite"


def test_doctor_reports_a_runtime_that_does_not_load(monkeypatch):
    from tledge.runtime import doctor, model

    def unmappable(*args, **kwargs):
        raise OSError("libLiteRt.so: failed to map segment from shared object")

    monkeypatch.setattr(model, "load", unmappable)
    rep = doctor.check_model(TINY / "model_int8.tflite")
    assert [(c.name, c.ok) for c in rep.checks] == [("load", False)] and "failed to map segment" in rep.checks[0].detail


def test_an_installed_litert_that_fails_with_any_error_falls_through_as_the_doctor_says(monkeypatch):
    """A broken wheel raises anything on import (numpy 2 and `np.float`: AttributeError): the doctor said "does not
    import" while `tledge run` gave the AttributeError's traceback."""
    from tledge.errors import MissingDependency
    from tledge.runtime import litert

    package = pytest.importorskip("ai_edge_litert")
    monkeypatch.delattr(package, "interpreter", raising=False)
    monkeypatch.delitem(sys.modules, "ai_edge_litert.interpreter", raising=False)

    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "ai_edge_litert.interpreter":
                raise AttributeError("module 'numpy' has no attribute 'float'")

    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    with pytest.raises(MissingDependency, match="ai_edge_litert is installed but does not import.*float"):
        litert.interpreter_module()
