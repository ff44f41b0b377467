"""Bad options of `tledge train`, `demo` and `doctor` refused with exit 2 and one line, before TensorFlow,
data or any model is loaded (tledge/cli/validate.py and each verb's checks)."""
from __future__ import annotations

import sys

from tledge.cli import main


def _err(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> bool:
    return "Traceback" not in err and len([ln for ln in err.splitlines() if ln.strip()]) == 1


def _classes(tmp_path):
    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
    return data


def test_train_nan_rates_and_fake_weights_refused_before_tensorflow(tmp_path, capsys):
    had_tf = "tensorflow" in sys.modules
    data, out = _classes(tmp_path), tmp_path / "run"
    fake_h5, fake_keras = tmp_path / "w.h5", tmp_path / "w.keras"
    fake_h5.write_text("hello\n")
    fake_keras.write_text("hello\n")
    for argv, want in ((["--lr", "nan"], "--lr must be in (0, 10], got nan"),
                       (["--lr", "inf"], "--lr must be in (0, 10], got inf"),  # it trained on NaN losses
                       (["--fine-tune-lr", "nan"], "--fine-tune-lr must be in (0, 10], got nan"),
                       (["--alpha", "nan"], "--alpha must be in (0, 4], got nan"),
                       (["--alpha", "inf"], "--alpha must be in (0, 4], got inf"),
                       (["--alpha", "-1"], "--alpha must be in (0, 4], got -1"),
                       (["--weights", fake_h5], "is not an HDF5 file"),
                       (["--weights", fake_keras], "not a .keras (zip) archive")):
        code, stdout, err = _err(capsys, "train", data, "--out", out, *argv)
        assert code == 2 and want in err and _one_line(err) and stdout == "", (argv, err)
    assert not out.exists()
    assert had_tf or "tensorflow" not in sys.modules


def test_demo_fake_weights_and_non_numbers(tmp_path, capsys):
    fake = tmp_path / "w.h5"
    fake.write_text("hello\n")
    out = tmp_path / "demo"
    code, stdout, err = _err(capsys, "demo", "--out", out, "--weights", fake)
    assert code == 2 and "is not an HDF5 file" in err and _one_line(err) and stdout == ""  # was exit 1, after data
    assert not out.exists()
    code, _, err = _err(capsys, "demo", "--out", out, "--size", "x")
    assert code == 2 and "argument --size: invalid int value: 'x'" in err and "_positive" not in err


def test_doctor_refuses_a_file_that_is_not_a_model(tmp_path, capsys):
    text, empty = tmp_path / "notes.txt", tmp_path / "model.tflite"
    text.write_text("hello\n")
    empty.write_bytes(b"")
    code, out, err = _err(capsys, "doctor", text)
    assert code == 2 and "unsupported file type '.txt'" in err and _one_line(err) and out == ""
    code, out, err = _err(capsys, "doctor", empty)
    assert code == 2 and "is empty (0 bytes)" in err and _one_line(err) and out == ""


def test_no_command_lists_the_commands_and_says_why_on_stderr(capsys):
    code, out, err = _err(capsys)
    assert code == 2 and _one_line(err) and "no command given" in err
    assert "export" in out and "run" in out  # the help, on stdout
