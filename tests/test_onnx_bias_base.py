"""The ONNX `onnx-bias` rung corrects the PLAIN int8 file's weights (helper 146): it read model_int8.onnx from the
staging folder, where a better rung's file (the repaired stem, whose node names are not the float graph's) had been
installed by then; it corrected 0 layers, re-quantised the plain graph and its row gave the plain file's figures as
its own (agreement 0.941 where the correction reaches 0.980)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from tiny import IMAGES, TINY, need


@pytest.fixture()
def shared(tmp_path):
    from tledge.export.rungs import Shared
    from tledge.metadata import read_contract

    need("model_int8.onnx")
    for name in ("model_fp32.onnx", "model_int8.onnx"):
        shutil.copy(TINY / name, tmp_path / name)
    contract = read_contract(TINY / "model_fp32.onnx")
    calib = np.stack([contract.prepare(f) for f in IMAGES[:16]]).astype(np.float32)
    return Shared(None, contract, calib, tmp_path)


def _renamed(data: bytes) -> bytes:
    """The int8 file with every node and tensor renamed, as another rung's graph is named."""
    import onnx

    m = onnx.load_from_string(data)
    names = {t for n in m.graph.node for t in list(n.input) + list(n.output)} | {i.name for i in m.graph.initializer}
    io = {v.name for v in list(m.graph.input) + list(m.graph.output)}
    new = {t: f"other_{i}" for i, t in enumerate(sorted(names - io))}
    for n in m.graph.node:
        n.name = "other_" + n.name
        n.input[:] = [new.get(t, t) for t in n.input]
        n.output[:] = [new.get(t, t) for t in n.output]
    for i in m.graph.initializer:
        i.name = new.get(i.name, i.name)
    return m.SerializeToString()


def test_onnx_bias_corrects_the_plain_file_not_the_installed_one(shared, tmp_path):
    from tledge.export.fidelity import Rung

    plain = tmp_path / "model_int8.onnx"
    shared.original(plain)  # as the fidelity loop keeps it before any rung is installed
    plain.write_bytes(_renamed(plain.read_bytes()))  # a better rung's file installed in its place
    applied: dict = {}
    shared.onnx(None, Rung("onnx-bias", repair=False, graph="onnx-bias"), applied)
    layers = int(applied["onnx_bias_correction"].split(" on ")[1].split()[0])
    assert layers > 0, applied  # (was: "bias correction on 0 layers", the plain file again)


def test_a_bias_rung_with_nothing_to_correct_is_an_error_not_a_measured_repair(shared, tmp_path, monkeypatch):
    from tledge.errors import TledgeError
    from tledge.export.fidelity import Rung
    from tledge.quant import onnx_bias

    monkeypatch.setattr(onnx_bias, "correct", lambda *a, **k: onnx_bias.BiasLog(layers=0))
    with pytest.raises(TledgeError, match="nothing to change: bias correction on 0 layers"):
        shared.onnx(None, Rung("onnx-bias", repair=False, graph="onnx-bias"), {})
