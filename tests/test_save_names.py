"""`tledge run --save FOLDER`: the names of the annotated copies."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from tiny import TINY

from tledge.cli import main


def test_an_input_keeping_its_name_wins_over_a_renamed_copy(tmp_path, capsys):
    """x.gif's copy (a .gif is saved as .png) took x.gif.png, and the real x.gif.png's copy became x.gif_2.png."""
    src = tmp_path / "src"
    src.mkdir()
    if not cv2.imwrite(str(src / "x.gif"), np.full((64, 64, 3), 250, np.uint8)):
        pytest.skip("this OpenCV writes no GIF")
    cv2.imwrite(str(src / "x.gif.png"), np.full((64, 64, 3), 5, np.uint8))
    code = main(["run", str(TINY), "-q", "--source", str(src), "--save", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    bottom = {p.name: int(cv2.imread(str(p))[-1, -1].mean()) for p in (tmp_path / "out").glob("*.png")}
    assert bottom.keys() == {"x.gif.png", "x.gif_2.png"}
    assert bottom["x.gif.png"] < 50 < bottom["x.gif_2.png"]  # the dark x.gif.png kept its name


def drawn(monkeypatch, width: int, *preds) -> list[str]:
    """The texts annotate() draws on a frame `width` px wide, each checked to fit in it."""
    from tledge.runtime.model import Prediction
    from tledge.runtime.outputs import annotate
    from tledge.runtime.pipeline import Result

    texts, put = [], cv2.putText

    def record(img, text, org, font, scale, color, thickness, *rest):
        texts.append(text)
        assert org[0] + cv2.getTextSize(text, font, scale, thickness)[0][0] <= img.shape[1], text
        return put(img, text, org, font, scale, color, thickness, *rest)

    monkeypatch.setattr(cv2, "putText", record)
    annotate(np.zeros((120, width, 3), np.uint8), Result("x", 0, "ok", [Prediction(*p) for p in preds]))
    return texts


def test_a_label_hershey_cannot_draw_is_its_class_index(monkeypatch):
    """cv2.putText drew `fourmi ??? 0.90` for `fourmi ailée`, and `???` for a label in another script."""
    assert drawn(monkeypatch, 640, (1, "fourmi ailée", 0.9), (2, "蜜蜂", 0.05), (0, "ants", 0.05)) == \
        ["#1 0.90", "#2 0.05", "ants 0.05"]


def test_a_long_label_is_cut_and_keeps_its_score(monkeypatch):
    """The score of a long label was drawn past the image's right edge."""
    label = "Galeocerdo cuvieri, tiger shark of the warm seas " * 4
    for width in (64, 200, 640):
        (text,) = drawn(monkeypatch, width, (3, label, 0.87))
        assert text == "0.87" or text.endswith(" 0.87") and text.startswith(label[:len(text) - 8] + "...")
        assert len(text) > 20 or width < 640
    (text,) = drawn(monkeypatch, 640, (3, "short", 0.87))
    assert text == "short 0.87"
