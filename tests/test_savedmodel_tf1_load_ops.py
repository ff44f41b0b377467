"""What a TF1 SavedModel runs when it loads (session 37): a `tf.compat.v1.saved_model.Builder` main_op, or an op the
saver's restore op depends on, that saves a checkpoint to a path of its own ran during `tledge export` and
`tledge parity` without --unsafe: only the signatures were followed. The init collections and the restore op are
followed too; the restore op's own RestoreV2 (the SavedModel's variables) stays allowed."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402
from tledge.export.savedmodel import find_acting_ops  # noqa: E402


def _builder_savedmodel(path, marker, how, as_text=False):
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.ops import gen_io_ops

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default(), v1.Session(graph=g) as sess:
        images = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        w = v1.get_variable("w", [3, 2], initializer=v1.random_normal_initializer(seed=0))
        probs = tf.nn.softmax(tf.matmul(tf.reduce_mean(images, axis=[1, 2]) / 255.0, w))
        sess.run(v1.global_variables_initializer())
        save = gen_io_ops.save_v2(tf.constant(str(marker)), tf.constant(["x"]), tf.constant([""]),
                                  [tf.constant("written at load")], name="evil_save") if marker else None
        sigs = {"serving_default": v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={"images": images}, outputs={"probabilities": probs})}
        builder = v1.saved_model.Builder(str(path))
        main_op = tf.group(save, name="evil_init") if how == "main_op" else None
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=sigs, main_op=main_op)
        if how == "tags":  # a second MetaGraph (an Estimator exports one per mode): TensorFlow asks for `tags=`
            builder.add_meta_graph(["serve", "gpu"], signature_def_map=sigs)
        builder.save(as_text=as_text)
        save_name = save.name if save is not None else None
    if how == "restore":  # the saver's restore op made to depend on the save
        sm = saved_model_pb2.SavedModel()
        sm.ParseFromString((path / "saved_model.pb").read_bytes())
        graph = sm.meta_graphs[0]
        node = graph.graph_def.node.add()
        node.name, node.op = "restore_all_and_more", "NoOp"
        node.input.extend(["^" + graph.saver_def.restore_op_name, "^" + save_name])
        graph.saver_def.restore_op_name = "restore_all_and_more"
        (path / "saved_model.pb").write_bytes(sm.SerializeToString())
    return path


@pytest.mark.parametrize("how", ["main_op", "restore"])
def test_a_save_at_load_is_refused_before_loading(how, tmp_path, shapes_dataset, capsys):
    marker = tmp_path / "pwned" / "ckpt"
    model = _builder_savedmodel(tmp_path / "sm", marker, how)
    (found,) = [f for f in find_acting_ops(model) if f.op == "SaveV2"]
    assert "when the model loads" in found.reason
    assert main(["export", str(model), "--out", str(tmp_path / "o"), "--formats", "tflite", "--preprocess", "raw",
                 "--val", str(shapes_dataset / "val")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tledge export: error:") and "--unsafe" in err and not marker.parent.exists()


def test_a_plain_builder_savedmodel_still_loads(tmp_path):
    model = _builder_savedmodel(tmp_path / "sm", None, None)
    assert find_acting_ops(model) == []  # its restore op reads its own variables (RestoreV2): expected


def test_several_metagraphs_load_the_serving_one(tmp_path):
    from tledge.export import loader

    model = _builder_savedmodel(tmp_path / "sm", None, "tags")
    lm = loader.load_model(model)  # was TensorFlow's "Pass a `tags=` argument", which tledge has no option for
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    assert np.asarray(lm.model(x)).shape == (2, 2)


def test_a_text_savedmodel_is_read_and_checked(tmp_path):
    """`Builder.save(as_text=True)` writes saved_model.pbtxt, which TensorFlow loads: it was "not a SavedModel"."""
    from tledge.export import loader

    plain = _builder_savedmodel(tmp_path / "plain", None, None, as_text=True)
    assert (plain / "saved_model.pbtxt").is_file() and not (plain / "saved_model.pb").exists()
    assert np.asarray(loader.load_model(plain).model(np.zeros((1, 8, 8, 3), np.float32))).shape == (1, 2)
    evil = _builder_savedmodel(tmp_path / "evil", tmp_path / "pwned" / "ckpt", "main_op", as_text=True)
    assert [f.op for f in find_acting_ops(evil)] == ["SaveV2"]


def _resource_savedmodel(path, marker, via_save=False):
    """A TF2 SavedModel whose resource's `_initialize` saves a checkpoint at `marker`: tf.saved_model.load calls
    it itself. With the init-op signature, the saver_def and the main-op collection stripped, nothing tledge
    followed reached it: it wrote files during `tledge export` without --unsafe (helper hunt, session 38)."""
    from tensorflow.core.protobuf import saved_model_pb2

    class Evil(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

        def _initialize(self):
            tf.raw_ops.SaveV2(prefix=tf.constant(str(marker)), tensor_names=tf.constant(["x"]),
                              shape_and_slices=tf.constant([""]), tensors=[tf.constant([1.0, 2.0])])
            return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=tf.constant(0.0))

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.evil, self.w = Evil(), tf.Variable(tf.random.stateless_normal([3, 2], seed=[0, 1]))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def serve(self, x):
            return {"out": tf.nn.softmax(tf.matmul(tf.reduce_mean(x, [1, 2]) / 255.0, self.w))}

    m = M()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((path / "saved_model.pb").read_bytes())
    g = sm.meta_graphs[0]
    del g.signature_def["__saved_model_init_op"]
    if via_save:  # the saver's save function calls the initialiser: "only the save function is inert" let it by
        from tensorflow.core.framework import types_pb2

        fns = {f.signature.name: f for f in g.graph_def.library.function}
        save = next(f for n, f in fns.items() if "traced_save" in n)
        init = next(f for n, f in fns.items() if "initializer" in n)
        call = save.node_def.add()
        call.name, call.op = "call_the_initialiser", "StatefulPartitionedCall"
        call.input.append(next(a.name for a in save.signature.input_arg if a.type == types_pb2.DT_RESOURCE))
        call.attr["f"].func.name = init.signature.name
        call.attr["Tin"].list.type.append(types_pb2.DT_RESOURCE)
        call.attr["Tout"].list.SetInParent()
    else:
        g.ClearField("saver_def")
    if "saved_model_main_op" in g.collection_def:
        del g.collection_def["saved_model_main_op"]
    for f in g.graph_def.library.function:  # the save made a control output: it always runs
        if any(n.op == "SaveV2" for n in f.node_def) and "initializer" in f.signature.name:
            f.control_ret["SaveV2"] = "SaveV2"
            f.signature.control_output.append("SaveV2")
    (path / "saved_model.pb").write_bytes(sm.SerializeToString())
    return path


@pytest.mark.parametrize("via_save", [False, True])
def test_a_save_in_a_function_loading_calls_itself_is_refused(via_save, tmp_path, shapes_dataset, capsys):
    marker = tmp_path / "pwned" / "ckpt"
    model = _resource_savedmodel(tmp_path / "sm", marker, via_save)
    assert any(f.op == "SaveV2" and "a function loading may call itself" in f.reason
               for f in find_acting_ops(model))
    assert main(["export", str(model), "--out", str(tmp_path / "o"), "--formats", "tflite", "--preprocess", "raw",
                 "--val", str(shapes_dataset / "val")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tledge export: error:") and "--unsafe" in err and not marker.parent.exists()


def test_a_tf2_savedmodels_own_save_function_is_not_refused(tmp_path):
    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([3, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def serve(self, x):
            return {"out": tf.nn.softmax(tf.matmul(tf.reduce_mean(x, [1, 2]), self.w))}

    m = M()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures={"serving_default": m.serve})
    assert find_acting_ops(tmp_path / "sm") == []  # its _traced_save (SaveV2, MergeV2Checkpoints) is the saver's


def test_a_tf1_graph_with_an_unused_input_pipeline_still_loads(tmp_path):
    """A TF1 export made from the training session keeps its tf.data pipeline's functions, which nothing calls (no
    object graph, no signature reaches them): checking every function outside the save function refused it."""
    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default(), v1.Session(graph=g) as sess:
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(["a.jpg", "b.jpg"])).map(tf.io.read_file).batch(2)
        v1.data.make_one_shot_iterator(ds).get_next()
        images = v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        w = v1.get_variable("w", [3, 2], initializer=v1.random_normal_initializer(seed=0))
        probs = tf.nn.softmax(tf.matmul(tf.reduce_mean(images, axis=[1, 2]) / 255.0, w))
        sess.run(v1.global_variables_initializer())
        sigs = {"serving_default": v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={"images": images}, outputs={"probabilities": probs})}
        builder = v1.saved_model.Builder(str(tmp_path / "sm"))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=sigs)
        builder.save()
    assert find_acting_ops(tmp_path / "sm") == []
