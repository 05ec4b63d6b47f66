import csv
import subprocess
from pathlib import Path

import pytest
import yaml

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.tools.summarize import load_jobs, main
from tests.conftest import PYTHON, cli_env

SHARED = ["data.root=/data", "trainer.max_epochs=1"]


def fake_job(
    sweep: Path,
    num: int,
    overrides: list[str],
    rows: list[dict[str, str]] | None,
    optimized_metric: str = "val/loss",
) -> None:
    """A job folder as Hydra and Lightning's CSV logger leave it; rows=None: it failed early."""
    hydra_dir = sweep / str(num) / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump([*overrides, *SHARED]))
    config = {"seed": 42, "optimized_metric": optimized_metric, "paths": {"x": "${y}"}}
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if rows is None:
        return
    metrics = sweep / str(num) / "csv" / "metrics.csv"
    metrics.parent.mkdir()
    columns = ["epoch", "step", "train/loss", "val/fld", "val/loss"]
    with metrics.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows)


def epoch_rows(train_loss: str, val_loss: str, fld: str = "") -> list[dict[str, str]]:
    """Lightning's sparse rows: a train step row, then a validation row; earlier values first."""
    return [
        {"epoch": "0", "step": "0", "train/loss": "9.0"},
        {"epoch": "0", "step": "0", "val/loss": "9.0", "val/fld": "99" if fld else ""},
        {"epoch": "1", "step": "1", "train/loss": train_loss},
        {"epoch": "1", "step": "1", "val/loss": val_loss, "val/fld": fld},
    ]


def read_summary(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "summary.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_jobs_are_sorted_by_val_loss_with_failed_jobs_last(tmp_path, capsys):
    sweep = tmp_path / "multirun"
    fake_job(sweep, 0, ["schedule=linear", "model.block_groups=5"], None)
    fake_job(sweep, 1, ["schedule=linear", "model.block_groups=4"], epoch_rows("0.5", "0.30"))
    fake_job(sweep, 2, ["schedule=cosine", "model.block_groups=4"], epoch_rows("0.4", "0.20"))
    fake_job(sweep, 3, ["schedule=cosine", "model.block_groups=2"], [])
    (sweep / "multirun.yaml").write_text("hydra: {}\n")

    path = main([str(sweep)])

    assert path == sweep / "summary.csv"
    rows = read_summary(sweep)
    assert [row["job"] for row in rows] == ["2", "1", "0", "3"]
    assert [row["status"] for row in rows] == ["ok", "ok", "failed", "failed"]
    assert list(rows[0]) == [
        "job",
        "status",
        "schedule",
        "model.block_groups",
        "val/loss",
        "train/loss",
    ]
    assert rows[0]["schedule"] == "cosine" and rows[0]["model.block_groups"] == "4"
    assert float(rows[0]["val/loss"]) == 0.2 and float(rows[0]["train/loss"]) == 0.4
    assert rows[2]["val/loss"] == "" and rows[2]["model.block_groups"] == "5"
    out = capsys.readouterr().out
    assert "sorted by val/loss" in out and "failed" in out
    assert "data.root=/data" in out
    assert f"wrote {path}" in out


def test_optimized_metric_comes_from_the_job_config(tmp_path):
    sweep = tmp_path / "multirun"
    fake_job(sweep, 0, ["lr=1"], epoch_rows("0.5", "0.1", fld="7.5"), "val/fld")
    fake_job(sweep, 1, ["lr=2"], epoch_rows("0.5", "0.9", fld="2.5"), "val/fld")
    fake_job(sweep, 2, ["lr=3"], epoch_rows("0.5", "0.05"), "val/fld")
    jobs = load_jobs(sweep)
    assert [job.num for job in jobs] == [1, 0, 2]
    assert [job.score for job in jobs] == [2.5, 7.5, None]
    main([str(sweep)])
    assert list(read_summary(sweep)[0])[:4] == ["job", "status", "lr", "val/fld"]


def test_missing_or_empty_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        load_jobs(tmp_path / "missing")
    (tmp_path / ".hydra").mkdir()
    with pytest.raises(ConfigError, match=r"has no job folders \(0/, 1/, \.\.\.\)"):
        load_jobs(tmp_path)


@pytest.mark.parametrize("name", ["missing", "empty"])
def test_cli_errors_are_one_line(tmp_path, name):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [PYTHON, "-m", "ddpm_lightning.tools.summarize", str(tmp_path / name)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert str(tmp_path / name) in result.stderr
