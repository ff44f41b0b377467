"""tledge.backbones: the registry against keras.applications, and what a user's --weights file and Keras's own output
do to `tledge train` (the backbone is built before any training, so these run in seconds)."""
from __future__ import annotations

import numpy as np
import pytest

from tledge.backbones import contract_for


def test_a_whole_classifier_h5_as_weights_is_refused_with_what_fits():
    """The shared 1000-class MobileNet .h5 is a whole classifier, not no-top backbone weights: the error says which
    file --weights takes (it said only Keras's layer-count mismatch)."""
    from conftest import shared_asset

    from tledge import backbones
    from tledge.errors import TledgeError

    whole = shared_asset("keras_imagenet_models", "mobilenet_v1_0.25_224.h5")
    with pytest.raises(TledgeError, match=r"could not build mobilenet .*no-top ImageNet file.*a whole classifier, "
                                          r"its top included"):
        backbones.build("mobilenet", (224, 224, 3), weights=whole, alpha=0.25)


def test_keras_download_messages_stay_off_stdout(monkeypatch, capfd):
    """keras.applications prints "Downloading data from ..." on stdout: building a backbone keeps stdout for the
    command's results (`tledge train --json` is one JSON document)."""
    import keras

    from tledge import backbones

    def chatty(**kw):
        print("Downloading data from https://storage.googleapis.com/...")  # what Keras's get_file prints
        return "built"

    monkeypatch.setattr(keras.applications, backbones.get("mobilenet").constructor, chatty)
    assert backbones.build("mobilenet", (32, 32, 3), weights="imagenet", alpha=0.25) == "built"
    printed = capfd.readouterr()  # file descriptors: under the CLI fd 2 is the command's log file
    assert printed.out == "" and "Downloading data from" in printed.err


def test_backbone_registry_matches_keras_applications():
    """Every registry entry exists in keras.applications and its mode is what that family's preprocess_input does."""
    import keras

    from tledge.backbones import BACKBONES

    module = {"MobileNet": "mobilenet", "MobileNetV2": "mobilenet_v2", "MobileNetV3": "mobilenet_v3",
              "EfficientNetV2": "efficientnet_v2", "EfficientNet": "efficientnet", "ResNet50V2": "resnet_v2",
              "ResNet101V2": "resnet_v2", "ResNet152V2": "resnet_v2", "ResNet": "resnet", "DenseNet": "densenet",
              "VGG16": "vgg16", "VGG19": "vgg19", "InceptionV3": "inception_v3", "Xception": "xception",
              "InceptionResNetV2": "inception_resnet_v2", "NASNet": "nasnet", "ConvNeXt": "convnext"}
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    for name, spec in BACKBONES.items():
        assert hasattr(keras.applications, spec.constructor), name
        mod = next(m for prefix, m in sorted(module.items(), key=lambda kv: -len(kv[0]))
                   if spec.constructor.startswith(prefix))
        expected = np.asarray(getattr(keras.applications, mod).preprocess_input(x.copy()))
        c = contract_for(name, 5, baked=False)
        got = c.normalize(x) if spec.mode != "raw" else x
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4, err_msg=name)
