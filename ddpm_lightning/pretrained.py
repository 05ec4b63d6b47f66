"""Diffusion models shipped in `assets/`: `pretrained=mnist | fashion_mnist` for sample/evaluate.

Each is `ddpm_{name}.pt` (the checkpoint's hyper-parameters and its EMA weights as plain
tensors, no optimizer or trainer state) with `ddpm_{name}.json` beside it: SHA-256, how it
was trained and, when given, the evaluate command's metrics.
`python -m ddpm_lightning.pretrained CKPT --name mnist [--metrics metrics.json]` writes them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from omegaconf import OmegaConf

from ddpm_lightning.errors import ConfigError, report_errors
from ddpm_lightning.evaluation.fld import ASSETS_DIR, check_sha256, sha256
from ddpm_lightning.training.checkpoints import read_checkpoint

METRIC_KEYS = ("fld", "mean_confidence", "label_counts", "num_samples", "seed", "sampler")


def pretrained_paths(name: str, directory: Path = ASSETS_DIR) -> dict[str, Path]:
    return {"weights": directory / f"ddpm_{name}.pt", "record": directory / f"ddpm_{name}.json"}


def available(directory: Path = ASSETS_DIR) -> list[str]:
    """Names of the shipped models, e.g. ['fashion_mnist', 'mnist']."""
    return sorted(path.stem.removeprefix("ddpm_") for path in directory.glob("ddpm_*.json"))


def checkpoint_path(
    ckpt_path: str | None, pretrained: str | None, directory: Path = ASSETS_DIR
) -> str | Path | None:
    """The file to load for `ckpt_path=` or `pretrained=` (one of them), SHA-256 checked."""
    if pretrained is None:
        return ckpt_path
    if ckpt_path is not None:
        raise ConfigError(
            f"pass ckpt_path= or pretrained=, not both (got ckpt_path={ckpt_path} "
            f"and pretrained={pretrained})"
        )
    names = available(directory)
    if pretrained not in names:
        raise ConfigError(f"pretrained={pretrained} is not shipped; choose one of {names}")
    paths = pretrained_paths(pretrained, directory)
    check_sha256(paths["weights"], json.loads(paths["record"].read_text())["sha256"])
    return paths["weights"]


def run_overrides(run_dir: Path) -> list[str] | None:
    """The command-line overrides of the Hydra run in `run_dir`, when recorded."""
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return None
    # Hydra writes overrides.yaml as a list of strings; OmegaConf types any container.
    return cast("list[str]", OmegaConf.to_container(OmegaConf.load(overrides)))


def export(
    ckpt_path: Path,
    name: str,
    metrics_path: Path | None = None,
    directory: Path = ASSETS_DIR,
) -> dict[str, Path]:
    """Write `ddpm_{name}.pt` and its JSON record from a training checkpoint."""
    checkpoint = read_checkpoint(ckpt_path)
    state_dict = {key: value.detach().clone() for key, value in checkpoint["state_dict"].items()}
    paths = pretrained_paths(name, directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"hyper_parameters": checkpoint["hyper_parameters"], "state_dict": state_dict},
        paths["weights"],
    )
    record = {
        "name": name,
        "dataset": checkpoint["hyper_parameters"].get("dataset"),
        "weights": paths["weights"].name,
        "sha256": sha256(paths["weights"]),
        "ema": "current_model_state" in checkpoint,
        "global_step": checkpoint.get("global_step"),
        "source": Path(ckpt_path).name,
        "train_overrides": run_overrides(Path(ckpt_path).resolve().parent.parent),
    }
    if metrics_path is not None:
        metrics = json.loads(Path(metrics_path).read_text())
        record["metrics"] = {key: metrics[key] for key in METRIC_KEYS if key in metrics}
        record["evaluate_overrides"] = run_overrides(Path(metrics_path).resolve().parent)
    paths["record"].write_text(json.dumps(record, indent=2) + "\n")
    return paths


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt_path", type=Path, help="a .ckpt from a training run")
    parser.add_argument("--name", required=True, help="what users type: pretrained=NAME")
    parser.add_argument("--metrics", type=Path, help="metrics.json of the evaluate command")
    parser.add_argument("--out-dir", type=Path, default=ASSETS_DIR, help="default: the package")
    return parser.parse_args(argv)


@report_errors
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    paths = export(args.ckpt_path, args.name, args.metrics, args.out_dir)
    size = paths["weights"].stat().st_size / 2**20
    print(f"wrote {paths['weights']} ({size:.2f} MiB) and {paths['record']}")


if __name__ == "__main__":
    main()
