"""Export a `model=diffusers_unet` model as a folder that diffusers' `DDPMPipeline.from_pretrained`
loads: model_index.json, unet/ (UNet2DModel.save_pretrained) and scheduler/ (a DDPMScheduler
built from the model's noise schedule and objective)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddpm_lightning.diffusion.diffusers_bridge import schedule_options
from ddpm_lightning.errors import ConfigError, import_optional
from ddpm_lightning.sharing.export import Source
from ddpm_lightning.sharing.folder import build_module
from ddpm_lightning.training.module import DiffusionModule

DIFFUSERS_MODEL = "diffusers_unet"
PIPELINE_FILES = ("model_index.json", "unet", "scheduler")


def ddpm_scheduler(module: DiffusionModule) -> Any:
    """diffusers' DDPMScheduler for `module`: its β_t, T and objective, x̂₀ clipped to [-1, 1]
    and the posterior variance β̃_t, as our default DDPM sampler; fewer steps than T start at
    T−1 (timestep_spacing=trailing)."""
    diffusers = import_optional("diffusers", "format=diffusers", "hf")
    diffusion = module.diffusion
    return diffusers.DDPMScheduler(
        **schedule_options(diffusion.schedule, diffusion.objective.value),
        clip_sample=True,
        clip_sample_range=1.0,
        variance_type="fixed_small",
        timestep_spacing="trailing",
    )


def export_pipeline(out_dir: Path, source: Source) -> dict[str, Path]:
    """Write `source` (a `model=diffusers_unet` model) as a DDPMPipeline folder into
    `out_dir`; its entries by name. Other models are refused with one line."""
    hyper_parameters, state_dict, _ = source
    name = hyper_parameters["model"].get("name")
    if name != DIFFUSERS_MODEL:
        raise ConfigError(
            f"format=diffusers exports models trained with model=diffusers_unet or "
            f"model=diffusers_unet_cond (diffusers' UNet2DModel), not {name}; use format=folder"
        )
    module = build_module(hyper_parameters, state_dict, "ckpt_path")
    diffusers = import_optional("diffusers", "format=diffusers", "hf")
    pipeline = diffusers.DDPMPipeline(unet=module.model.unet, scheduler=ddpm_scheduler(module))
    pipeline.save_pretrained(out_dir)
    return {name: out_dir / name for name in PIPELINE_FILES}
