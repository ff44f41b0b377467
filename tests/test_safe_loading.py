"""Code in a model file never runs without --unsafe; Keras 2 era .h5 files load as Keras 3 models.

The hostile files are built here with tf_keras and h5py: a Lambda whose code writes a marker file,
its config then rewritten (minified JSON, `\\u004c` escapes, nested in Sequential-in-Functional,
TimeDistributed, Bidirectional). Refused means exit 2, one line naming the file and the layer, and
no marker file.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tledge.cli import main
from tledge.errors import ModelLoadError
from tledge.export import kerasconfig, loader

tf_keras = pytest.importorskip("tf_keras")
h5py = pytest.importorskip("h5py")


# ---- hostile files ------------------------------------------------------------------------------

def _marker_lambda(marker: Path):
    path = str(marker)
    return tf_keras.layers.Lambda(lambda t, _m=path: (open(_m, "w").close(), t)[1], name="evil")


def _save(model, path: Path, marker: Path) -> Path:
    model.save(path)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once: only loading counts
    return path


def _rewrite_config(path: Path, edit=None, text=None) -> None:
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        if edit is not None:
            edit(cfg)
        f.attrs["model_config"] = text(cfg) if text else json.dumps(cfg)


def _plain(tmp: Path, marker: Path) -> Path:
    inp = tf_keras.Input((8, 8, 3))
    x = _marker_lambda(marker)(inp)
    out = tf_keras.layers.Dense(3, activation="softmax")(tf_keras.layers.GlobalAveragePooling2D()(x))
    return _save(tf_keras.Model(inp, out), tmp / "plain.h5", marker)


def _minified(tmp, marker):
    p = _plain(tmp, marker).rename(tmp / "minified.h5")
    _rewrite_config(p, text=lambda c: json.dumps(c, separators=(",", ":")))
    return p


def _escaped(tmp, marker):
    p = _plain(tmp, marker).rename(tmp / "escaped.h5")
    _rewrite_config(p, text=lambda c: json.dumps(c, separators=(",", ":")).replace('"Lambda"', '"\\u004cambda"'))
    with h5py.File(p, "r") as f:
        raw = f.attrs["model_config"]
        raw = raw.decode() if isinstance(raw, bytes) else raw
    assert '"Lambda"' not in raw and '"class_name": "Lambda"' not in raw and json.loads(raw)
    return p


def _nested_sequential(tmp, marker):
    inner = tf_keras.Sequential([tf_keras.layers.InputLayer((8, 8, 3)), _marker_lambda(marker),
                                 tf_keras.layers.GlobalAveragePooling2D()], name="inner")
    inp = tf_keras.Input((8, 8, 3))
    out = tf_keras.layers.Dense(2, activation="softmax")(inner(inp))
    p = _save(tf_keras.Model(inp, out), tmp / "nested.h5", marker)
    _rewrite_config(p, text=lambda c: json.dumps(c, separators=(",", ":")).replace('"Lambda"', '"\\u004cambda"'))
    return p


def _time_distributed(tmp, marker):
    inp = tf_keras.Input((4, 8, 8, 3))
    x = tf_keras.layers.TimeDistributed(_marker_lambda(marker), name="td")(inp)
    x = tf_keras.layers.TimeDistributed(tf_keras.layers.GlobalAveragePooling2D())(x)
    out = tf_keras.layers.Dense(2)(tf_keras.layers.Flatten()(x))
    return _save(tf_keras.Model(inp, out), tmp / "td.h5", marker)


def _bidirectional(tmp, marker):
    """Bidirectional(LSTM) whose backward layer is swapped for the Lambda of another file."""
    lam = _plain(tmp, marker)
    with h5py.File(lam, "r") as f:
        lambda_cfg = [entry for entry in json.loads(f.attrs["model_config"])["config"]["layers"]
                      if entry["class_name"] == "Lambda"][0]
    inp = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Reshape((8, 24))(inp)
    x = tf_keras.layers.Bidirectional(tf_keras.layers.LSTM(2), name="bi")(x)
    p = tmp / "bi.h5"
    tf_keras.Model(inp, tf_keras.layers.Dense(2)(x)).save(p)

    def swap(cfg):
        bi = [entry for entry in cfg["config"]["layers"] if entry["class_name"] == "Bidirectional"][0]
        bi["config"]["backward_layer"] = {k: lambda_cfg[k] for k in ("class_name", "config")}

    _rewrite_config(p, edit=swap, text=lambda c: json.dumps(c, separators=(",", ":")))
    marker.unlink(missing_ok=True)
    return p


HOSTILE = {"plain": _plain, "minified": _minified, "escaped": _escaped, "nested_sequential": _nested_sequential,
           "time_distributed": _time_distributed, "bidirectional": _bidirectional}


@pytest.fixture(params=sorted(HOSTILE))
def hostile(request, tmp_path):
    marker = tmp_path / "MARKER"
    path = HOSTILE[request.param](tmp_path, marker)
    assert not marker.exists()
    return path, marker, request.param


def test_library_refuses_code_in_h5(hostile):
    path, marker, _ = hostile
    with pytest.raises(ModelLoadError) as err:
        loader.load_model(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "--unsafe" in msg
    assert "evil" in msg or "bi" in msg  # names the layer
    assert not marker.exists()


def test_cli_export_and_parity_refuse_code(hostile, shapes_dataset, tiny_export, tmp_path, capsys):
    path, marker, _ = hostile
    out = tmp_path / "out"
    rc = main(["export", str(path), "--preprocess", "raw", "--formats", "tflite", "--input-size", "8x8",
               "--val", str(shapes_dataset / "val"), "--out", str(out)])
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith(("note: ", "tledge export: note: ")))
    assert rc == 2 and len(err.splitlines()) == 1 and path.name in err and "--unsafe" in err, err
    assert not marker.exists() and not out.exists()
    rc = main(["parity", str(path), str(tiny_export.out / "model_fp32.tflite"), "--images", str(shapes_dataset / "val")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and path.name in err and "--unsafe" in err, err
    assert not marker.exists()


def test_unsafe_loads_the_lambda(tmp_path, shapes_dataset):
    marker = tmp_path / "MARKER"
    path = _plain(tmp_path, marker)
    lm = loader.load_model(path, unsafe=True)
    assert lm.input_hw == (8, 8) and lm.num_outputs == 3
    assert marker.exists()  # its code ran: allowed with --unsafe
    marker.unlink()
    from tledge.errors import TledgeWarning

    with pytest.warns(TledgeWarning, match="near chance"):  # an untrained model: Keras itself is at chance
        rc = main(["export", str(path), "--unsafe", "--preprocess", "raw", "--formats", "tflite",
                   "--val", str(shapes_dataset / "val"), "--out", str(tmp_path / "o")])
    assert rc in (0, 1) and (tmp_path / "o" / "model_fp32.tflite").is_file()


def test_code_in_keras_archive_is_found_by_the_walk(tmp_path):
    import keras

    inp = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp))
    keras.Model(inp, keras.layers.Dense(2)(x)).save(tmp_path / "l.keras")
    with pytest.raises(ModelLoadError, match=r"l\.keras: layer .*double \(Lambda\)"):
        loader.load_model(tmp_path / "l.keras")
    assert loader.load_model(tmp_path / "l.keras", unsafe=True).kind == "keras"


# ---- the walk itself ----------------------------------------------------------------------------

def _layer(cls, name, **extra):
    return {"class_name": cls, "config": {"name": name, **extra}}


@pytest.mark.parametrize("entry, culprit", [
    (_layer("TFOpLambda", "tf_op", function="io.write_file"), "tf_op"),
    (_layer("TensorFlowOpLayer", "op", node_def={"op": "WriteFile"}), "op"),
    (_layer("Dense", "d", kernel_initializer={"class_name": "__lambda__", "config": {"code": "x"}}), "__lambda__"),
    ({"module": "os", "class_name": "system", "config": {"name": "sys"}}, "sys"),
    ({"module": "mypkg.layers", "class_name": "Mine", "config": {"name": "mine"}}, "mine"),
    ({"module": "tledge.layers", "class_name": "Other", "config": {"name": "other"}}, "other"),
    (_layer("Custom>Thing", "thing"), "thing"),
    ({"module": "keras", "class_name": "layers.Lambda", "config": {"name": "dotted"}}, "dotted"),
    ({"module": "keras.layers", "class_name": "Dense", "registered_name": "Lambda", "config": {"name": "rl"}}, "rl"),
    ({"module": "keras.layers", "class_name": "Dense", "registered_name": "evil>Dense",
      "config": {"name": "reg"}}, "reg"),
    (_layer("Dense", "fn", activation={"function_type": "lambda", "function": ["AAAA", None, None]}), "fn"),
    (_layer("TimeDistributed", "td", layer=_layer("Bidirectional", "bi", layer=_layer("Lambda", "deep"))), "deep"),
    ({"module": "keras.layers", "class_name": "TFSMLayer", "config": {"name": "tfsm", "filepath": "/x"}}, "tfsm"),
    (_layer("ClassMethod", "cm", cls_symbol="io.gfile.rmtree", method_name="__call__"), "cm"),
    (_layer("InstanceMethod", "im", attr_name="numpy"), "im"),
    (_layer("InstanceProperty", "ip", attr_name="device"), "ip"),
    (_layer("Dense", "act", activation={"module": "builtins", "class_name": "function", "config": "mine>myact",
                                        "registered_name": "function"}), "act"),  # session 37: a registered function
])
def test_walk_finds_code_anywhere(entry, culprit):
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [
        _layer("InputLayer", "in"),
        {"class_name": "Sequential", "config": {"name": "seq", "layers": [entry]}}]}}
    found = kerasconfig.find_code(config)
    assert len(found) == 1 and culprit in found[0].where, found
    assert found[0].where.startswith("m > seq")


def test_walk_passes_plain_keras_and_tledge_objects(tiny_model):
    assert kerasconfig.find_code(kerasconfig.read_h5_config(tiny_model["h5"])) == []
    assert kerasconfig.find_code(kerasconfig.read_keras_config(tiny_model["keras"])) == []
    ok = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"module": "keras.layers", "class_name": "Dense", "registered_name": None,
         "config": {"name": "d", "activation": {"module": "builtins", "class_name": "function", "config": "relu",
                                                "registered_name": "function"}}},
        {"module": "tledge.layers", "class_name": "Preprocess", "registered_name": "tledge>Preprocess",
         "config": {"name": "p"}},
        {"module": "tf_keras.src.engine.functional", "class_name": "Functional", "config": {"name": "f"}}]}}
    assert kerasconfig.find_code(ok) == []


def test_tledge_objects_table_matches_the_registered_layers():
    from tledge.layers import CUSTOM_OBJECTS

    assert set(CUSTOM_OBJECTS) == set(kerasconfig.TLEDGE_OBJECTS)


@pytest.mark.parametrize("text, why", [
    ('{"class_name": "Dense", "class_name": "Lambda", "config": {}}', "repeats"),
    ('[1, 2]', "not a JSON object"),
    ('{"class_name": ', "not valid JSON"),
])
def test_configs_that_are_not_plain_json_objects_are_refused(text, why):
    with pytest.raises(ModelLoadError, match=why):
        kerasconfig.parse(text, "m.h5")


# ---- SavedModel: TF ops, not Python; ops that act outside the model need --unsafe ----------------

def _saved_model(folder: Path, marker: Path | None, how: str = "write"):
    import tensorflow as tf

    class M(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.ones([3, 3]))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def serve(self, x):
            if marker is not None and how == "write":
                tf.io.write_file(str(marker), "ran")
            elif marker is not None and how in ("cache", "save"):  # tf.data writing files (the walkthrough's)
                ds = tf.data.Dataset.from_tensors(tf.reduce_mean(x))
                if how == "save":
                    ds.save(str(marker))
                else:
                    x = x + 0 * ds.cache(str(marker)).reduce(0.0, lambda a, b: a + b)
            elif marker is not None and how == "debug":  # DebugIdentityV3 was missing from the op list
                x = tf.raw_ops.DebugIdentityV3(input=x, device_name="", tensor_name="pixels:0", io_of_node="",
                                               is_input=False, io_index=0, debug_urls=[f"file://{marker}"])
            elif marker is not None:
                tf.print("ran", output_stream=f"file://{marker}")
            return {"probs": tf.nn.softmax(tf.reduce_mean(x, [1, 2]) @ self.w)}

    m = M()
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})
    return folder


@pytest.mark.parametrize("how, op", [("write", "WriteFile"), ("print", "PrintV2"), ("cache", "Dataset"),
                                     ("save", "Dataset"), ("debug", "DebugIdentityV3")])
def test_saved_model_that_writes_files_is_refused(how, op, tmp_path, shapes_dataset, capsys):
    from tledge.export import savedmodel

    marker = tmp_path / "MARKER"
    bad = _saved_model(tmp_path / "bad", marker, how)
    for made in tmp_path.glob("MARKER*"):  # tf.data's save() also runs while the function is traced
        shutil.rmtree(made) if made.is_dir() else made.unlink()
    with pytest.raises(ModelLoadError, match=rf"bad: op .*\(\w*{op}\w*\) .*--unsafe"):
        loader.load_model(bad)
    rc = main(["export", str(bad), "--preprocess", "raw", "--formats", "tflite",
               "--val", str(shapes_dataset / "val"), "--out", str(tmp_path / "o")])
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith(("note: ", "tledge export: note: ")))
    assert rc == 2 and len(err.splitlines()) == 1 and op in err and not (tmp_path / "o").exists()
    assert not marker.exists() and not list(tmp_path.glob("MARKER*"))
    lm = loader.load_model(bad, unsafe=True)
    lm.model(np.zeros((1, 8, 8, 3), np.float32))
    assert marker.exists() or list(tmp_path.glob("MARKER*"))  # it does write when run: allowed with --unsafe
    good = _saved_model(tmp_path / "good", None)
    assert savedmodel.find_acting_ops(good) == []  # its checkpoint save function is not on the serving path
    assert loader.load_model(good).num_outputs == 3
    import keras

    inp = keras.Input((8, 8, 3))
    keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp))).export(str(tmp_path / "k"), verbose=False)
    assert savedmodel.find_acting_ops(tmp_path / "k") == []  # what Keras itself exports passes


def test_a_config_too_deep_to_walk_is_refused():
    deep: dict = {"class_name": "Dense", "config": {"name": "d"}}
    for _ in range(3000):
        deep = {"class_name": "Sequential", "config": {"name": "s", "layers": [deep]}}
    found = kerasconfig.find_code(deep)
    assert len(found) == 1 and "too deeply" in found[0].reason


def test_every_tf_keras_op_layer_is_refused():
    """tf_keras rebuilds TensorFlow calls from a file's config with the layers of its tf_op_layer module: the
    ClassMethod layer (a TensorFlow function named in the file, called on constants stored in it) was missing from
    the table, and `tledge export` of such an .h5 deleted a folder the file named. Every Layer of that module must
    be in the table (a newer tf_keras adding one fails here)."""
    import inspect

    from tf_keras.src.engine.base_layer import Layer
    from tf_keras.src.layers.core import tf_op_layer

    layers = {name for name, obj in vars(tf_op_layer).items()
              if inspect.isclass(obj) and issubclass(obj, Layer) and obj.__module__ == tf_op_layer.__name__}
    assert {"ClassMethod", "TFOpLambda"} <= layers and layers <= set(kerasconfig.CODE_CLASSES), layers


def test_h5_calling_a_tensorflow_function_is_refused(tmp_path, shapes_dataset, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("data")
    inp = tf_keras.Input((8, 8, 3))
    out = tf_keras.layers.Dense(3, activation="softmax")(tf_keras.layers.GlobalAveragePooling2D()(inp))
    path = tmp_path / "cm.h5"
    tf_keras.Model(inp, out).save(path)
    _rewrite_config(path, edit=lambda cfg: cfg["config"]["layers"].append(
        {"class_name": "ClassMethod", "name": "evil",
         "config": {"name": "evil", "trainable": True, "dtype": "float32", "cls_symbol": "io.gfile.rmtree",
                    "method_name": "__call__"},
         "inbound_nodes": [[["_CONSTANT_VALUE", -1, str(victim), {"kwargs": {}}]]]}))
    rc = main(["export", str(path), "--preprocess", "raw", "--formats", "tflite", "--val", str(shapes_dataset / "val"),
               "--out", str(tmp_path / "out")])
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if ": note: " not in line)
    assert rc == 2 and len(err.splitlines()) == 1 and "evil (ClassMethod)" in err and "--unsafe" in err, err
    assert (victim / "important.txt").read_text() == "data"
