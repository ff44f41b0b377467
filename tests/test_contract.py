"""The preprocessing contract: JSON round trip, golden file, validation, reference prepare()."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tledge.backbones import contract_for
from tledge.contract import Contract, Fit, Layout, Norm, Quant
from tledge.labels import read_labels
from tledge.errors import ContractError

GOLDEN = Path(__file__).parent / "golden"


def golden_contract() -> Contract:
    return contract_for("mobilenet_v2", 96, labels=("ants", "bees")).replace(
        input_dtype="uint8", input_quant=Quant(1.0, 0), output_quant=Quant(1 / 256, 0))


def test_json_round_trip_is_lossless():
    c = golden_contract().replace(fit="crop", crop_fraction=0.9, layout="nchw", norm="custom",
                                  baked=False, mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    assert Contract.from_json(c.to_json()) == c
    assert Contract.from_dict(json.loads(c.to_json())).to_json() == c.to_json()


def test_golden_file_pins_the_format():
    # If this fails the on-disk format changed: bump CONTRACT_VERSION and regenerate on purpose.
    expected = (GOLDEN / "contract_mobilenet_v2.json").read_text()
    assert golden_contract().to_json() + "\n" == expected
    assert Contract.from_json(expected) == golden_contract()


def test_for_backbone_knows_modes_and_sizes():
    assert contract_for("resnet50").norm is Norm.CAFFE
    assert contract_for("densenet121").norm is Norm.TORCH
    assert contract_for("inception_v3").size == (299, 299)
    assert contract_for("efficientnet_b0").norm is Norm.RAW


@pytest.mark.parametrize("bad", [
    dict(height=0), dict(channels=2), dict(channels=1), dict(norm="nope"), dict(fit="zoom"),
    dict(crop_fraction=1.5), dict(norm="custom"), dict(input_dtype="int64"),
    dict(norm="custom", mean=(1, 2), std=(1, 1, 1)), dict(norm="custom", mean=(0,), std=(0,)),
])
def test_invalid_contracts_are_refused(bad):
    fields = dict(height=8, width=8) | bad
    with pytest.raises(ContractError):
        Contract(**fields)


def test_unknown_and_newer_fields_are_refused():
    d = golden_contract().to_dict()
    with pytest.raises(ContractError, match=r"unknown contract fields: \['zoom'\] \(a file from a newer tledge\? "):
        Contract.from_dict(d | {"zoom": 2})
    with pytest.raises(ContractError, match="newer"):
        Contract.from_dict(d | {"version": 99})
    # a value added after version 1 (warp-linear was): an old tledge refused it without saying why
    with pytest.raises(ContractError, match=r"resize='warp-cubic' is not one of: .* \(a file from a newer tledge\? "
                                            r"upgrade tledge here\)"):
        Contract.from_dict(d | {"resize": "warp-cubic"})
    with pytest.raises(ContractError):
        Contract.from_json("{not json")


@pytest.mark.parametrize("change, said", [
    ({"mean": ["x", 0, 0], "norm": "custom", "std": [1, 1, 1]}, "list of numbers"), ({"mean": 5}, "list of numbers"),
    ({"version": "x"}, "not an integer"), ({"input_quant": {"scale": "x", "zero_point": 0}}, "positive finite scale"),
    ({"input_quant": [1, 2]}, "positive finite scale"), ({"labels": "ab"}, "list of strings"),
    ({"labels": [{"a": 1}, None]}, "list of strings"), ({"baked": "no"}, "true or false"),
    ({"height": 32.7}, "an integer"), ({"height": 10 ** 12}, "1..16384"), ({"pad_value": 10 ** 9}, "0..255"),
    ({"norm": "custom", "mean": [float("nan")] * 3, "std": [1, 1, 1]}, "list of numbers"),  # (NaN read as null)
    ({"norm": "custom", "mean": [0, 0, 0], "std": [float("inf")] * 3}, "list of numbers"),
])
def test_contract_json_from_a_file_is_checked_before_use(change, said):
    """Read from files tledge may not have written (an ONNX file's metadata, a tledge.json): tracebacks for some
    (exit 1), silently used nonsense for others ("baked": "no" skipped normalisation, NaN scores)."""
    d = golden_contract().to_dict() | change
    with pytest.raises(ContractError, match=said):
        Contract.from_json(json.dumps(d))
    with pytest.raises(ContractError, match="nested too deeply"):
        Contract.from_json('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _image(h=30, w=40):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_prepare_stretch_crop_letterbox_shapes_and_content():
    img = _image()
    for fit in Fit:
        x = Contract(16, 16, fit=fit).prepare(img)
        assert x.shape == (16, 16, 3) and x.dtype == np.uint8
    # stretch is exactly cv2.resize with INTER_AREA
    np.testing.assert_array_equal(Contract(16, 16).prepare(img), cv2.resize(img, (16, 16), interpolation=cv2.INTER_AREA))
    # letterbox pads the short side with pad_value
    lb = Contract(20, 20, fit="letterbox", pad_value=7).prepare(np.full((10, 20, 3), 200, np.uint8))
    assert (lb[0] == 7).all() and (lb[10] == 200).all()
    # centre crop of a wide image keeps the centre
    wide = np.zeros((10, 40, 3), np.uint8)
    wide[:, 15:25] = 255
    cropped = Contract(10, 10, fit="crop", crop_fraction=1.0, resize="nearest").prepare(wide)
    assert cropped.mean() == 255


def test_prepare_colour_layout_and_normalisation():
    img = _image()
    bgr = Contract(8, 8, color="bgr").prepare(img)
    np.testing.assert_array_equal(bgr, Contract(8, 8).prepare(img)[..., ::-1])
    gray = Contract(8, 8, channels=1, color="gray").prepare(img)
    assert gray.shape == (8, 8, 1)
    nchw = Contract(8, 8, layout=Layout.NCHW).prepare(img)
    np.testing.assert_array_equal(nchw, Contract(8, 8).prepare(img).transpose(2, 0, 1))
    tf = Contract(8, 8, norm="tf", baked=False).prepare(img)
    np.testing.assert_allclose(tf, Contract(8, 8).prepare(img) / 127.5 - 1, atol=1e-6)
    assert tf.dtype == np.float32


def test_prepare_accepts_gray_rgba_16bit_and_float_arrays():
    c = Contract(8, 8)
    gray = np.full((12, 12), 100, np.uint8)
    assert (c.prepare(gray) == 100).all()
    rgba = np.dstack([_image(12, 12), np.full((12, 12), 9, np.uint8)])
    np.testing.assert_array_equal(c.prepare(rgba), c.prepare(rgba[..., :3]))
    sixteen = np.full((12, 12, 3), 65535, np.uint16)
    assert (c.prepare(sixteen) == 255).all()
    assert (c.prepare(np.ones((12, 12, 3), np.float32)) == 255).all()
    with pytest.raises(Exception):
        c.prepare(np.zeros((3, 3, 5), np.uint8))


def test_quant_round_trip():
    q = Quant(0.5, 10, "uint8")
    x = np.array([-5.0, 0.0, 3.2, 200.0], np.float32)
    assert q.quantize(x).tolist() == [0, 10, 16, 255]
    np.testing.assert_allclose(q.dequantize(q.quantize(np.array([1.0, 2.0]))), [1.0, 2.0])


def test_read_labels_plain_and_teachable_machine(tmp_path):
    (tmp_path / "a.txt").write_text("cat\ndog\n\n")
    (tmp_path / "tm.txt").write_text("0 Class 1\n1 Class 2\n")
    (tmp_path / "bg.txt").write_text("background\n1 thing\n")
    assert read_labels(tmp_path / "a.txt") == ("cat", "dog")
    assert read_labels(tmp_path / "tm.txt") == ("Class 1", "Class 2")
    assert read_labels(tmp_path / "bg.txt") == ("background", "1 thing")
    (tmp_path / "tab.txt").write_text("0\ttench\n1\tgreat white shark\n")  # the index was kept: `3\ttiger_shark`
    assert read_labels(tmp_path / "tab.txt") == ("tench", "great white shark")
    with pytest.raises(ContractError):
        read_labels(tmp_path / "missing.txt")
    (tmp_path / "gap.txt").write_text("\ncircle\n\nvstripes\n")  # dropping line 3 shifted vstripes to class 1
    with pytest.raises(ContractError, match="line 3 is empty between labels"):
        read_labels(tmp_path / "gap.txt")


def test_labels_file_not_utf8_is_refused_not_mangled(tmp_path):
    """`abeille \xe9` (Latin-1) was read as `abeille \ufffd` and embedded so in every exported file."""
    (tmp_path / "l.txt").write_bytes(b"ants\nabeille \xe9\n")
    with pytest.raises(ContractError, match=r"line 2 is not UTF-8 \(byte 0xe9\)"):
        read_labels(tmp_path / "l.txt")


def test_python_callers_values_are_checked_or_taken_as_meant():
    c = Contract(np.int64(10), np.int32(12), labels=["a", "b"], mean=127.5, std=127.5, norm="custom")
    assert (c.height, c.width, type(c.height)) == (10, 12, int) and c.mean == (127.5,) * 3
    assert Contract.from_json(c.to_json()) == c  # numpy ints broke to_json
    for bad, said in (({"labels": "cat"}, "one class: labels=\\('name',\\)"), ({"height": "10"}, "height must be an integer"),
                      ({"height": 10.5}, "height must be an integer"), ({"baked": "no"}, "baked must be True or False"),
                      ({"crop_fraction": None}, "crop_fraction must be a number")):
        with pytest.raises(ContractError, match=said):
            Contract(**{"height": 10, "width": 10, **bad})


def test_prepare_batch_takes_any_iterable_and_refuses_one_path():
    c = Contract(8, 8, labels=("a", "b"))
    img = np.zeros((10, 12, 3), np.uint8)
    assert c.prepare_batch(x for x in [img, img]).shape == (2, 8, 8, 3)
    empty = c.prepare_batch([])
    assert empty.shape == (0, 8, 8, 3) and empty.dtype == c.prepare(img).dtype
    with pytest.raises(ContractError, match="one image goes to prepare"):
        c.prepare_batch("photo.jpg")


def test_quantize_rounds_to_nearest_half_to_even():
    # q = clip(rint(x / scale) + zero_point): 6.6 -> 7, -1.4 -> -1, 2.5 -> 2 (numpy's rint: half to even)
    assert Quant(0.5, 10).quantize(np.array([3.3, -0.7, 1.25], np.float32)).tolist() == [17, 9, 12]


def test_gray_is_itu_r_bt601_of_rgb():
    """Gray = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601), rounded: pure red, green and blue give 76, 150, 29."""
    c = Contract(4, 4, channels=1, color="gray")
    for rgb, weight in [((255, 0, 0), 0.299), ((0, 255, 0), 0.587), ((0, 0, 255), 0.114)]:
        x = c.prepare(np.full((4, 4, 3), rgb, np.uint8))
        assert x.dtype == np.uint8 and x.shape == (4, 4, 1)
        assert (x == round(weight * 255)).all(), (rgb, x[0, 0])


@pytest.mark.parametrize("norm,mean,std", [
    ("torch", (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),  # ImageNet, RGB
    ("caffe", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),  # ImageNet means, BGR
])
def test_gray_mean_and_std_are_the_average_of_the_three_channels(norm, mean, std):
    c = Contract(4, 4, channels=1, color="gray", norm=norm, baked=False)
    m, s = c.mean_std()
    assert m.tolist() == pytest.approx([sum(mean) / 3]) and s.tolist() == pytest.approx([sum(std) / 3])
    x = c.prepare(np.full((4, 4), 100, np.uint8))
    np.testing.assert_allclose(x, (100 - sum(mean) / 3) / (sum(std) / 3), rtol=1e-5)


def test_16_bit_and_float_pixels_are_rounded_to_the_nearest_8_bit_value():
    c = Contract(4, 4)
    assert (c.prepare(np.full((6, 6, 3), 65280, np.uint16)) == round(65280 * 255 / 65535)).all()  # 254.008 -> 254
    assert (c.prepare(np.full((6, 6, 3), 0.5, np.float32)) == 128).all()  # 127.5 -> 128 (not truncated to 127)
    assert (c.prepare(np.full((6, 6, 3), 100.6, np.float32)) == 101).all()  # 0..255 floats: 100.6 -> 101
