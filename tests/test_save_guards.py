"""`tledge run --save` never writes over what it reads: not through a linked folder, not over its own inputs."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tiny import IMAGES, TINY

from tledge.cli import main

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="symbolic links")
JPG = next(p for p in IMAGES if p.suffix == ".jpg")


def run(capsys, *argv) -> tuple[int, str]:
    code = main(["run", str(TINY), *map(str, argv)])
    return code, capsys.readouterr().err


def photo(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(JPG, path)
    return path.read_bytes()


@pytest.mark.parametrize("marked", [False, True])
@pytest.mark.parametrize("save, source", [("shots", "shots/*/*.jpg"), ("out", "disk")])
def test_linked_folder_in_save_is_not_written_through(tmp_path, capsys, monkeypatch, marked, save, source):
    """A --save folder holding a link to the photos' folder (a glob through it, or the source folder itself)."""
    monkeypatch.chdir(tmp_path)
    before = photo(tmp_path / "disk" / "day1" / "x.jpg")
    (tmp_path / save).mkdir()
    os.symlink("../disk/day1", tmp_path / save / "day1")
    if marked:  # an earlier --save's folder: no look for foreign images, the copy itself is refused
        (tmp_path / save / ".tledge-save").touch()
    code, err = run(capsys, "--source", source, "--save", save)
    assert code == 2 and f"--save {save}" in err and "Traceback" not in err
    assert (tmp_path / "disk" / "day1" / "x.jpg").read_bytes() == before
    assert os.listdir(tmp_path / "disk" / "day1") == ["x.jpg"]


def test_marked_save_folder_with_a_link_elsewhere(tmp_path, capsys, monkeypatch):
    """Not an input, but outside the --save folder: nothing is written there either."""
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "src" / "day1" / "x.jpg")
    (tmp_path / "elsewhere" / "day1").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".tledge-save").touch()
    os.symlink("../elsewhere/day1", tmp_path / "out" / "day1")
    code, err = run(capsys, "--source", "src", "--save", "out")
    assert code == 2 and "outside" in err
    assert os.listdir(tmp_path / "elsewhere" / "day1") == []


def test_plain_save_still_writes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "src" / "day1" / "x.jpg")
    code, _ = run(capsys, "--source", "src", "--save", "out")
    assert code == 0 and (tmp_path / "out" / "day1" / "x.jpg").is_file()
    code, _ = run(capsys, "--source", "src", "--save", "out")  # again into its own (marked) folder
    assert code == 0


@pytest.mark.parametrize("save", ["shots", "."])
def test_marked_save_folder_holding_a_globs_inputs(tmp_path, capsys, monkeypatch, save):
    """A non-recursive glob whose inputs lie in sub-folders of a --save folder an earlier --save marked."""
    monkeypatch.chdir(tmp_path)
    before = {p: photo(tmp_path / "shots" / p / "x.jpg") for p in ("a", "b")}
    (tmp_path / save / ".tledge-save").touch()
    code, err = run(capsys, "--source", "shots/*/x.jpg", "--save", save)
    assert code == 2 and "holds input files" in err
    assert {p: (tmp_path / "shots" / p / "x.jpg").read_bytes() for p in before} == before
    assert sorted(p.name for p in (tmp_path / "shots").rglob("*") if p.name != ".tledge-save") == ["a", "b", "x.jpg",
                                                                                                 "x.jpg"]


def test_source_folder_inside_a_marked_save_folder(tmp_path, capsys, monkeypatch):
    """out/photos/photos/z.jpg's copy (relative to out/photos) was out/photos/z.jpg: another input."""
    monkeypatch.chdir(tmp_path)
    before = photo(tmp_path / "out" / "photos" / "z.jpg")
    photo(tmp_path / "out" / "photos" / "photos" / "z.jpg")
    (tmp_path / "out" / ".tledge-save").touch()
    code, err = run(capsys, "--source", "out/photos", "--save", "out")
    assert code == 2 and "holds input files" in err
    assert (tmp_path / "out" / "photos" / "z.jpg").read_bytes() == before
