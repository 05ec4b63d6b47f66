import csv
import json
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
    columns += sorted({key for row in rows for key in row} - set(columns))
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
    assert "4 jobs ranked by val/loss (lowest first)" in out and "failed" in out
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


def grid_sweep(sweep: Path) -> None:
    """Three jobs over four keys with a long shared override and metrics the table leaves out."""
    long_shared = "paths.log_dir=/home/someone/experiments/a_rather_long_folder_for_sweep_logs"
    grid = [
        ("linear", "16", "eps", "0.000228922", "0.30"),
        ("cosine", "32", "v", "0.001", "0.20"),
        ("sigmoid", "16", "v", "0.002", "0.25"),
    ]
    for num, (schedule, channels, objective, lr, loss) in enumerate(grid):
        overrides = [
            f"schedule={schedule}",
            f"model.model_channels={channels}",
            f"diffusion.objective={objective}",
            f"optimizer.lr={lr}",
            long_shared,
        ]
        extra = {"epoch": "1", "step": "1", "train/samples_per_sec": "123.4", "lr-Adam": "0.001"}
        fake_job(sweep, num, overrides, [*epoch_rows("0.5", loss), extra])


def test_the_table_fits_80_columns_with_whole_values(tmp_path, monkeypatch, capsys):
    """Only the varying overrides and the ranked metric, keys broken at their dots, values
    whole; the other metrics stay in summary.csv."""
    sweep = tmp_path / "multirun"
    grid_sweep(sweep)
    monkeypatch.setenv("COLUMNS", "80")
    main([str(sweep)])
    lines = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    assert lines[:-1] == [
        "3 jobs ranked by val/loss (lowest first)",
        "┏━━━━━┳━━━━━━━━━━┳━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━━┓",
        "┃     ┃          ┃ model.         ┃ diffusion. ┃ optimizer. ┃          ┃",
        "┃ job ┃ schedule ┃ model_channels ┃ objective  ┃ lr         ┃ val/loss ┃",
        "┡━━━━━╇━━━━━━━━━━╇━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━┩",
        "│ 1   │ cosine   │ 32             │ v          │ 0.001      │      0.2 │",
        "│ 2   │ sigmoid  │ 16             │ v          │ 0.002      │     0.25 │",
        "│ 0   │ linear   │ 16             │ eps        │ 0.0002289  │      0.3 │",
        "└─────┴──────────┴────────────────┴────────────┴────────────┴──────────┘",
        "every job:",
        "paths.log_dir=/home/someone/experiments/a_rather_long_folder_for_sweep_logs",
        "data.root=/data trainer.max_epochs=1",
        "note: the jobs differ in schedule and diffusion.objective, which changes what",
        "val/loss measures, so it ranks them unfairly; rank such sweeps by samples, e.g.",
        "optimized_metric=val/fld",
    ]
    assert lines[-1] == f"wrote {sweep / 'summary.csv'}"
    assert "train/samples_per_sec" in read_summary(sweep)[0]


def test_a_wide_terminal_keeps_the_keys_whole(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "multirun"
    grid_sweep(sweep)
    monkeypatch.setenv("COLUMNS", "120")
    main([str(sweep)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == (
        "┃ job ┃ schedule ┃ model.model_channels ┃ diffusion.objective ┃ optimizer.lr ┃ val/loss ┃"
    )
    assert lines[8].startswith("every job: paths.log_dir=/home/someone/")
    assert max(len(line.rstrip()) for line in lines[:-1]) <= 120


def ranked_sweep(sweep: Path, record: str) -> None:
    """Three jobs whose val/loss order is the reverse of their val/fld order, the sweep's own
    config (multirun.yaml) holding `record`; the jobs' configs say val/loss."""
    fake_job(sweep, 0, ["lr=1"], epoch_rows("0.5", "0.1", fld="7.5"))
    fake_job(sweep, 1, ["lr=2"], epoch_rows("0.5", "0.2", fld="2.5"))
    fake_job(sweep, 2, ["lr=3"], epoch_rows("0.5", "0.3", fld="5.0"))
    fake_job(sweep, 3, ["lr=4"], epoch_rows("0.5", "0.05"))
    (sweep / "multirun.yaml").write_text(record)


@pytest.mark.parametrize(
    ("direction", "order", "title"),
    [
        ("", [1, 2, 0, 3], "4 jobs ranked by val/fld (lowest first)"),
        ("hydra: {sweeper: {direction: minimize}}\n", [1, 2, 0, 3], "(lowest first)"),
        ("hydra: {sweeper: {direction: maximize}}\n", [0, 2, 1, 3], "val/fld (highest first)"),
    ],
)
def test_jobs_are_ranked_by_the_sweeps_optimized_metric_in_its_direction(
    tmp_path, capsys, direction, order, title
):
    sweep = tmp_path / "multirun"
    ranked_sweep(sweep, "optimized_metric: val/fld\n" + direction)
    main([str(sweep)])
    rows = read_summary(sweep)
    assert [int(row["job"]) for row in rows] == order
    assert [row["status"] for row in rows] == ["ok", "ok", "ok", "failed"]
    assert list(rows[0])[:4] == ["job", "status", "lr", "val/fld"]
    out = capsys.readouterr().out
    assert title in out and "note:" not in out


def test_a_direction_summarize_cannot_follow_is_a_config_error(tmp_path):
    sweep = tmp_path / "multirun"
    ranked_sweep(sweep, "hydra: {sweeper: {direction: [minimize, maximize]}}\n")
    with pytest.raises(ConfigError, match=r"multirun.yaml: hydra.sweeper.direction=\['minimize"):
        load_jobs(sweep)


def test_markdown_and_csv_files(tmp_path, capsys):
    sweep = tmp_path / "multirun"
    fake_job(sweep, 0, ["schedule=linear", "model.block_groups=5"], None)
    fake_job(sweep, 1, ["schedule=linear", "model.block_groups=4"], epoch_rows("0.5", "0.30"))
    fake_job(sweep, 2, ["schedule=cos|ine", "model.block_groups=4"], epoch_rows("0.4", "0.2"))
    markdown, table = tmp_path / "sweep.md", tmp_path / "sweep.csv"
    main([str(sweep), "--markdown", str(markdown), "--csv", str(table)])
    assert markdown.read_text() == (
        "3 jobs ranked by val/loss (lowest first); every job: "
        "`data.root=/data trainer.max_epochs=1`\n"
        "\n"
        "| job | schedule | model.block_groups | val/loss |\n"
        "|---|---|---|---:|\n"
        "| 2 | cos\\|ine | 4 | 0.2 |\n"
        "| 1 | linear | 4 | 0.3 |\n"
        "| 0 | linear | 5 | failed |\n"
    )
    assert table.read_bytes() == (
        b"job,status,schedule,model.block_groups,val/loss,train/loss\r\n"
        b"2,ok,cos|ine,4,0.2,0.4\r\n"
        b"1,ok,linear,4,0.3,0.5\r\n"
        b"0,failed,linear,5,,\r\n"
    )
    assert (sweep / "summary.csv").read_bytes() == table.read_bytes()
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == [f"wrote {sweep / 'summary.csv'}", f"wrote {table}", f"wrote {markdown}"]


def test_an_unwritable_markdown_path_is_one_line(tmp_path, capsys):
    sweep = tmp_path / "multirun"
    fake_job(sweep, 0, ["lr=1"], epoch_rows("0.5", "0.1"))
    markdown = tmp_path / "missing" / "sweep.md"
    with pytest.raises(SystemExit, match="1"):
        main([str(sweep), "--markdown", str(markdown)])
    assert capsys.readouterr().err == (
        f"error: cannot write {markdown} (No such file or directory): "
        "pass --markdown a writable path\n"
    )


def test_an_evaluate_sweep_is_ranked_by_fld_with_its_network_calls(tmp_path, capsys):
    """`python -m ddpm_lightning.evaluate -m sampler.num_steps=2,4,8`: each job has a
    metrics.json and no CSV logger; the table is FLD against network calls, lowest FLD first."""
    sweep = tmp_path / "multirun"
    for num, (steps, fld) in enumerate([(2, 845.9), (4, 110.3), (8, 19.9)]):
        hydra_dir = sweep / str(num) / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "overrides.yaml").write_text(
            yaml.safe_dump(["pretrained=mnist", f"sampler.num_steps={steps}"])
        )
        (hydra_dir / "config.yaml").write_text(yaml.safe_dump({"seed": 0}))
        record = {"seed": 0, "sampler": {"num_steps": steps}, "network_evaluations": steps}
        (sweep / str(num) / "metrics.json").write_text(json.dumps({**record, "fld": fld}))
    summarize_path = main([str(sweep)])
    printed = capsys.readouterr().out
    assert "3 jobs ranked by fld (lowest first)" in printed
    rows = read_summary(sweep)
    assert [row["sampler.num_steps"] for row in rows] == ["8", "4", "2"]
    assert [float(row["network_evaluations"]) for row in rows] == [8.0, 4.0, 2.0]
    assert [float(row["fld"]) for row in rows] == [19.9, 110.3, 845.9]
    assert "seed" not in rows[0] and summarize_path == sweep / "summary.csv"
