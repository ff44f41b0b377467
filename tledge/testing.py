"""Parity checks for users' own test suites (also a pytest plugin: the `tledge_parity` fixture).

    from tledge.testing import assert_parity

    def test_exported_model_matches_keras():
        assert_parity("model.keras", "model_export/", images="data/val")

Importing this module does not import TensorFlow; checking does.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from tledge.export.parity import ParityReport

try:
    import pytest
except ImportError:  # assert_parity works without pytest (a script, another test runner); the fixture needs it
    pytest = None


def assert_parity(reference: str | Path, exported: str | Path | Sequence[str | Path], images: str | Path, *,
                  thresholds: str | Path | dict | None = None, preprocess: str | None = None,
                  mean=None, std=None) -> "ParityReport":
    """Raise AssertionError listing every failing file; return the report when all pass. `preprocess`, `mean` and
    `std` as tledge.export.check.parity takes them (`tledge parity --preprocess/--mean/--std`): --mean/--std complete
    the files made elsewhere, and --preprocess is then the reference's only."""
    from tledge.export.check import parity
    from tledge.export.parity import load_thresholds

    if isinstance(thresholds, (str, Path)):
        thresholds = load_thresholds(thresholds)
    elif thresholds is not None:  # a table, checked before the parity run (a list failed after it)
        from tledge.export.parity import thresholds_from_dict

        thresholds = thresholds_from_dict(thresholds)
    files = [exported] if isinstance(exported, (str, Path)) else list(exported)
    report = parity(reference, files, images, thresholds=thresholds, preprocess=preprocess, mean=mean, std=std)
    unmatched = report.unmatched(thresholds)
    if unmatched:  # as `tledge parity --thresholds` warns: that file stayed on its precision's defaults
        import warnings

        from tledge.errors import TledgeWarning

        warnings.warn(f"thresholds for {', '.join(unmatched)} match no checked file "
                      f"({', '.join(r.file for r in report.results)})", TledgeWarning, stacklevel=2)
    if not report.passed:
        raise AssertionError("tledge parity failed\n" + report.table() + "\n" + "\n".join(
            f"  {r.file}: {f}" for r in report.results for f in r.failures))
    return report


if pytest is not None:
    @pytest.fixture
    def tledge_parity():
        """The `assert_parity` function, as a fixture."""
        return assert_parity
