"""tledge.backbones.build: what a user's --weights file and Keras's own output do to `tledge train` (the backbone is
built before any training, so these run in seconds)."""
from __future__ import annotations

import pytest


def test_a_whole_classifier_h5_as_weights_is_refused_with_what_fits():
    """The shared 1000-class MobileNet .h5 is a whole classifier, not no-top backbone weights: the error says which
    file --weights takes (it said only Keras's layer-count mismatch)."""
    from conftest import shared_asset

    from tledge import backbones
    from tledge.errors import TledgeError

    whole = shared_asset("keras_imagenet_models", "mobilenet_v1_0.25_224.h5")
    with pytest.raises(TledgeError, match=r"could not build mobilenet .*no-top ImageNet file.*1000-class top"):
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
