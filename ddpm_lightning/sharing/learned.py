"""The sampler a distilled student learned to take, read from its round's checkpoint
(`checkpoint["distill"]`, written by distill.module), so that `sample`, `evaluate` and `export`
of a round's checkpoint use the student's own steps unless the command line chooses a sampler
(as `pretrained=` folders recommend theirs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddpm_lightning.diffusion.guidance import DEFAULT_GUIDANCE_SCALE
from ddpm_lightning.training.checkpoints import read_checkpoint


def learned_sampler(record: dict[str, Any]) -> dict[str, Any]:
    """Progressive: deterministic DDIM at teacher_steps / 2 on the round's spacing; a guided
    student also at the round's guidance interval and the default γ, clipped to the range it
    learned. Consistency: one-step consistency sampling on the round's spacing."""
    if record["method"] == "consistency":
        return {"name": "consistency", "spacing": record["spacing"]}
    sampler = {
        "name": "ddim",
        "num_steps": record["teacher_steps"] // 2,
        "eta": 0.0,
        "spacing": record["spacing"],
    }
    if record.get("guidance") is None:
        return sampler
    low, high = record["guidance"]
    return {
        **sampler,
        "guidance_scale": min(max(DEFAULT_GUIDANCE_SCALE, low), high),
        "guidance_interval": record["guidance_interval"],
    }


def checkpoint_learned_sampler(ckpt_path: str | Path | None) -> dict[str, Any] | None:
    """`learned_sampler` of the round whose checkpoint is `ckpt_path`; None for no path or a
    checkpoint of plain training."""
    if ckpt_path is None:
        return None
    record = read_checkpoint(ckpt_path, mmap=True).get("distill")
    return None if record is None else learned_sampler(record)
