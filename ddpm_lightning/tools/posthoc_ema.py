"""`python -m ddpm_lightning.tools.posthoc_ema RUN_FOLDER sigma_rel=0.07 out=DIR`: the model
folder (config.json + model.safetensors) of a finished run with the power-function EMA of width
`sigma_rel` rebuilt from the run's `ema_snapshots/` (Karras et al. 2024, EDM2 §3.2).

Optional: `step=N`, a step a snapshot was taken at (default: the last), to rebuild the EMA as
it stood then; `ckpt=PATH` (default RUN_FOLDER/checkpoints/last.ckpt), the checkpoint whose
settings and buffers the folder takes. The run must have trained with the post-hoc EMA
callback (`callbacks=[default,posthoc_ema]`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddpm_lightning.errors import ConfigError, report_errors
from ddpm_lightning.sharing.folder import write_folder
from ddpm_lightning.training.checkpoints import read_checkpoint
from ddpm_lightning.training.posthoc_ema import Snapshot, read_snapshots, reconstruct

SNAPSHOTS = "ema_snapshots"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
KEYS = ("sigma_rel", "out", "step", "ckpt")


def parse_settings(pairs: Sequence[str]) -> dict[str, str]:
    """`key=value` arguments as a dict; one line for an unknown or missing key."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"{pair!r}: give key=value with key one of {', '.join(KEYS)}")
        settings[key] = value
    for key in ("sigma_rel", "out"):
        if key not in settings:
            raise ConfigError(f"{key}= is required (e.g. sigma_rel=0.07 out=posthoc_0.07)")
    return settings


def number(settings: dict[str, str], key: str, kind: type) -> Any:
    try:
        return kind(settings[key])
    except ValueError:
        raise ConfigError(f"{key}={settings[key]!r} is not a {kind.__name__}") from None


def updates_at(snapshots: list[Snapshot], step: int | None) -> int:
    """The EMA update count of the snapshots taken at `step` (None: the last step)."""
    if step is None:
        return max(s.num_averaged for s in snapshots)
    counts = {s.num_averaged for s in snapshots if s.step == step}
    if not counts:
        steps = sorted({s.step for s in snapshots})
        raise ConfigError(f"step={step} has no snapshot; choose one of {steps[0]} … {steps[-1]}")
    return counts.pop()


def rebuilt_state_dict(state_dict: dict[str, Any], rebuilt: dict[str, Any], where: str) -> dict:
    """`state_dict` with its parameters replaced by `rebuilt`; one line if they do not fit."""
    misfits = [
        k for k, v in rebuilt.items() if k not in state_dict or state_dict[k].shape != v.shape
    ]
    if misfits:
        raise ConfigError(f"{where}: the snapshots do not fit its weights ({misfits[0]}, …)")
    return {**state_dict, **{k: v.to(state_dict[k].dtype) for k, v in rebuilt.items()}}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_lightning.tools.posthoc_ema", description=__doc__
    )
    parser.add_argument("run", type=Path, help="a training run folder with ema_snapshots/")
    parser.add_argument("settings", nargs="+", help="sigma_rel=… out=… [step=…] [ckpt=…]")
    return parser.parse_args(argv)


@report_errors
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = parse_settings(args.settings)
    sigma_rel = number(settings, "sigma_rel", float)
    step = number(settings, "step", int) if "step" in settings else None
    ckpt = Path(settings.get("ckpt", args.run / LAST_CHECKPOINT))
    snapshots = read_snapshots(args.run / SNAPSHOTS)
    num_averaged = updates_at(snapshots, step)
    checkpoint = read_checkpoint(ckpt)
    weights = rebuilt_state_dict(
        checkpoint["state_dict"], reconstruct(snapshots, sigma_rel, num_averaged), f"ckpt={ckpt}"
    )
    used = [s for s in snapshots if s.num_averaged <= num_averaged]
    record = {
        "ema": True,
        "global_step": max(s.step for s in used),
        "posthoc_ema": {
            "sigma_rel": sigma_rel,
            "snapshots": len(used),
            "tracks": sorted({s.sigma_rel for s in used}),
        },
    }
    out = Path(settings["out"])
    write_folder(out, checkpoint["hyper_parameters"], weights, record)
    print(f"wrote {out} (σ_rel={sigma_rel} from {len(used)} snapshots)")


if __name__ == "__main__":
    main()
