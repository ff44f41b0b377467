"""--val class folders mapped to the model's labels by name (subsets, other spellings, clear errors)."""
import numpy as np
import pytest

from tledge.errors import DataError
from tledge.images import labelled_images
from tledge.labels import match_labels

LABELS1000 = tuple(f"{i:03d}_class_{i}" for i in range(1000))


def _folder(tmp_path, names, per=2):
    import cv2

    img = np.full((8, 8, 3), 127, np.uint8)
    for n in names:
        (tmp_path / n).mkdir()
        for j in range(per):
            cv2.imwrite(str(tmp_path / n / f"{j}.png"), img)
    return tmp_path


def test_a_subset_of_a_1000_class_set_gets_the_models_indices(tmp_path):
    root = _folder(tmp_path, ["007_class_7", "002_class_2", "999_class_999"])
    files, y, names = labelled_images(root, LABELS1000)
    assert names == ("002_class_2", "007_class_7", "999_class_999")
    assert y.tolist() == [2, 2, 7, 7, 999, 999]
    assert [f.parent.name for f in files] == ["002_class_2"] * 2 + ["007_class_7"] * 2 + ["999_class_999"] * 2


def test_names_match_across_spellings_and_index_prefixes():
    labels = ("0 Great White Shark", "1 tench", "2 Golden-Retriever")  # Teachable Machine style labels.txt
    m = match_labels(["tench", "great_white_shark", "002_golden retriever"], labels)
    assert m == {"tench": 1, "great_white_shark": 0, "002_golden retriever": 2}
    assert match_labels(["ants", "bees"], ("bees", "ants")) == {"ants": 1, "bees": 0}


def test_unmatched_and_ambiguous_folders_are_named():
    with pytest.raises(DataError, match=r"'wasps', 'bee' in /data match none of the model's 2 labels.*"
                                         r"closest to 'bee': 'bees'"):
        match_labels(["ants", "wasps", "bee"], ("ants", "bees"), where="/data")
    with pytest.raises(DataError, match="map to the same label"):
        match_labels(["Ants", "ants_"], ("ants", "bees"))
    # two labels that normalise alike are never guessed between
    with pytest.raises(DataError, match=r"name more than one of the model's labels \(classes 0, 1\).*0_crane or 1_crane"):
        match_labels(["crane"], ("134_crane", "517_crane"))
    assert match_labels(["517_crane"], ("134_crane", "517_crane")) == {"517_crane": 1}


def test_a_folder_named_like_two_labels_is_refused_not_given_the_later_class():
    """Keras's ImageNet names say "crane" twice (134, the bird; 517, the machine): a `crane` folder of bird photos
    was mapped to 517, and the export reported accuracy 0.333 where it was 0.667."""
    labels = ("tench", "crane", "goldfish", "crane")
    for folder in ("crane", "Crane", "2_crane"):
        with pytest.raises(DataError, match=r"'(?i:crane|2_crane)' name more than one .*\(classes 1, 3\)"):
            match_labels(["tench", folder], labels)
    assert match_labels(["tench", "1_crane", "003 crane"], labels) == {"tench": 0, "1_crane": 1, "003 crane": 3}


def test_without_labels_folders_are_the_classes(tmp_path):
    _, y, names = labelled_images(_folder(tmp_path, ["b", "a"], per=1))
    assert names == ("a", "b") and y.tolist() == [0, 1]


def test_prepare_all_keeps_order_and_puts_a_rejected_file_s_error_in_its_place(tmp_path):
    """The threaded reader gives what a loop over the files gives, image by image, and one bad file does not
    stop the others (the export skips and counts it)."""
    import cv2

    from tledge.contract import Contract
    from tledge.errors import TledgeError
    from tledge.images import prepare_all

    rng = np.random.default_rng(0)
    files = []
    for i in range(9):
        files.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(files[-1]), rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8))
    (tmp_path / "4.png").write_bytes(b"not an image")
    c = Contract(height=8, width=8, channels=3)
    got = prepare_all(c.prepare, files, threads=3)
    assert isinstance(got[4], TledgeError)
    for i, f in enumerate(files):
        if i != 4:
            np.testing.assert_array_equal(got[i], c.prepare(f))
    assert [type(x) for x in prepare_all(c.prepare, files, threads=1)] == [type(x) for x in got]


def test_an_empty_class_folder_keeps_its_number(tmp_path):
    """Without labels, folder i (sorted) is class i, an empty one too: a/ (1 image), b/ (none), c/ (1 image) give
    y = [0, 2] (as parity's folder truth counts them), not c's images labelled 1."""
    root = _folder(tmp_path, ["a", "c"], per=1)
    (root / "b").mkdir()
    files, y, names = labelled_images(root)
    assert names == ("a", "b", "c") and y.tolist() == [0, 2]
    assert [f.parent.name for f in files] == ["a", "c"]


def test_a_labels_file_shifted_by_a_background_line_is_not_answered_with_a_rename():
    """Coral's 1001-line ImageNet labels (a 'background' line first) against the 1000-class model's val folders
    (outside audit, 2026-12-08): the ambiguous 'crane' folders were reported first and told to become '135_crane or
    518_crane' - the shifted indices - though they were numbered right and 356 folders matched nothing. The
    unmatched folders come first now, and a numbered ambiguous folder is told what its number names in the file."""
    shifted = ("background", "tench", "crane", "goldfish", "crane")
    with pytest.raises(DataError, match=r"'zebra' match none of the model's 5 labels"):
        match_labels(["000_tench", "001_crane", "003_crane", "zebra"], shifted)
    with pytest.raises(DataError) as err:
        match_labels(["000_tench", "001_crane", "003_crane"], shifted)
    text = str(err.value)
    assert "find their label one line after their number" in text and "background" in text and "2_crane" not in text, \
        text


def test_a_folder_numbered_its_own_way_still_gets_the_rename_advice():
    """Review of 2026-12-08: folders numbered by the user (01_crane) against a labels file in the right order were told
    the file might be shifted; that hint is for a file with the folder's label one line off its number."""
    labels = ("tench", "goldfish", "crane", "cat", "crane", "dog")
    with pytest.raises(DataError, match=r"put the class index in front of the name \(2_crane or 4_crane\)"):
        match_labels(["01_crane", "02_dog"], labels)
    with pytest.raises(DataError, match=r"are the folders numbered from 1\? .*\('2_crane' -> '1_crane'\)"):
        match_labels(["1_tench", "2_crane", "3_goldfish"], ("tench", "crane", "goldfish", "crane"))
    with pytest.raises(DataError) as err:  # review 197: 518_crane numbered from 1 is 517, not "134_crane or 517_crane"
        match_labels(["1_tench", "2_goldfish", "518_crane"], ("tench", "goldfish") + ("x",) * 132 + ("crane",) +
                     ("y",) * 382 + ("crane",))
    assert "'518_crane' -> '517_crane'" in str(err.value) and "134" not in str(err.value).split("->")[-1], err.value
