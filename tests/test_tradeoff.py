"""The trade-off plot reads two columns of a measurement CSV and names what is missing."""

from __future__ import annotations

import pytest

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.tools.tradeoff import main, read_points

pytest.importorskip("matplotlib")


def write_csv(path, text):
    path.write_text(text)
    return path


def test_points_are_the_rows_in_order_and_the_picture_is_written(tmp_path, capsys):
    path = write_csv(
        tmp_path / "sdedit.csv", "strength,share_correct,fld\n0.2,0.99,30.5\n0.8,0.6,4.25\n"
    )
    assert read_points(path, "share_correct", "fld", "strength") == [
        (0.99, 30.5, "0.2"),
        (0.6, 4.25, "0.8"),
    ]
    out = tmp_path / "plot.png"
    main([str(path), "--out", str(out)])
    assert out.read_bytes().startswith(b"\x89PNG") and f"wrote {out}" in capsys.readouterr().out


def test_a_missing_column_or_file_is_one_line(tmp_path):
    path = write_csv(tmp_path / "rows.csv", "strength,fld\n0.2,3\n")
    with pytest.raises(ConfigError, match="no column share_correct; it has strength, fld"):
        read_points(path, "share_correct", "fld", "strength")
    with pytest.raises(ConfigError, match="no such CSV file"):
        read_points(tmp_path / "absent.csv", "a", "b", "c")
