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
