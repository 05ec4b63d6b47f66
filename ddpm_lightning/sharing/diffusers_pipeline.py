"""Export a model as a folder that diffusers loads: model_index.json (a DDPMPipeline), unet/
(config.json and safetensors weights), scheduler/ (a DDPMScheduler built from the model's noise
schedule and objective), README.md (the model card) and samples.png.

Our UNet (model=unet, unet_cond, unet_large) goes into unet/ as `DDPMLightningUNet`, a
diffusers model class of this package (`sharing.diffusers_model`); diffusers' UNet2DModel
(model=diffusers_unet) goes as itself. Other networks are refused with one line.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from torch import nn

from ddpm_lightning.components import component_settings
from ddpm_lightning.diffusion.diffusers_bridge import schedule_options
from ddpm_lightning.diffusion.guidance import takes_guidance
from ddpm_lightning.errors import ConfigError, import_optional
from ddpm_lightning.models import DiffusersUNet, UNet
from ddpm_lightning.sharing.card import pipeline_card
from ddpm_lightning.sharing.export import CARD_NAME, SAMPLES_NAME, Source, samples_picture
from ddpm_lightning.sharing.folder import build_module, model_files
from ddpm_lightning.sharing.portable import portable_record
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.outputs import replacing

PIPELINE_ENTRIES = ("model_index.json", "unet", "scheduler")
PIPELINE_FILES = (*PIPELINE_ENTRIES, CARD_NAME, SAMPLES_NAME)
EXPORTED_MODELS = "model=unet, unet_cond, unet_large, diffusers_unet or diffusers_unet_cond"


def diffusers_module() -> Any:
    """diffusers, or a one-line ConfigError naming the `hf` extra that installs it."""
    return import_optional("diffusers", "format=diffusers", "hf")


def ddpm_scheduler(module: DiffusionModule) -> Any:
    """diffusers' DDPMScheduler for `module`: its β_t, T and objective, x̂₀ clipped to [-1, 1]
    and the posterior variance β̃_t, as our default DDPM sampler; fewer steps than T start at
    T−1 (timestep_spacing=trailing)."""
    diffusion = module.diffusion
    return diffusers_module().DDPMScheduler(
        **schedule_options(diffusion.schedule, diffusion.objective.value),
        clip_sample=True,
        clip_sample_range=1.0,
        variance_type="fixed_small",
        timestep_spacing="trailing",
    )


def unet_arguments(settings: dict[str, Any]) -> dict[str, Any]:
    """Every argument of our UNet: the model's settings, UNet's defaults for the rest."""
    parameters = inspect.signature(UNet).parameters
    return {key: settings.get(key, parameter.default) for key, parameter in parameters.items()}


def pipeline_unet(module: DiffusionModule) -> nn.Module:
    """The pipeline's network with `module`'s weights: our UNet as DDPMLightningUNet, diffusers'
    UNet2DModel as itself; a one-line ConfigError for any other network."""
    if isinstance(module.model, DiffusersUNet):
        return module.model.unet
    if not isinstance(module.model, UNet):
        name = module.hparams["model"].get("name", type(module.model).__name__)
        raise ConfigError(
            f"format=diffusers exports models trained with {EXPORTED_MODELS}, not model={name}; "
            "use format=folder or format=onnx"
        )
    if takes_guidance(module.model):
        raise ConfigError(
            "format=diffusers cannot export a student of distilled guidance "
            "(model.guidance_embedding=true): diffusers' pipeline has no γ input; use "
            "format=folder or format=onnx"
        )
    settings = unet_arguments(component_settings("model", module.hparams["model"]))
    _, height, width = module.data_shape
    diffusers_module()
    from ddpm_lightning.sharing.diffusers_model import DDPMLightningUNet

    unet = DDPMLightningUNet(sample_size=height if height == width else [height, width], **settings)
    unet.network.load_state_dict(module.model.state_dict())
    return unet.eval()


def export_pipeline(
    out_dir: Path, source: Source, sampler: dict[str, Any], name: str, num_samples: int = 64
) -> dict[str, Path]:
    """Write `source` (see sharing.export.checkpoint_source) as a diffusers DDPMPipeline folder
    into `out_dir`, with its card (README.md, `name` being what `from_pretrained` takes) and,
    unless num_samples=0, samples.png of `sampler` (our recommended sampler, also in the card).
    Every file is built first, then the set replaces the folder's old one whole. The written
    entries by name."""
    hyper_parameters, state_dict, record = source
    module = build_module(hyper_parameters, state_dict, "ckpt_path")
    unet = pipeline_unet(module)
    pipeline = diffusers_module().DDPMPipeline(unet=unet, scheduler=ddpm_scheduler(module))
    config, _ = model_files(
        out_dir, hyper_parameters, state_dict, {"sampler": sampler, **portable_record(record)}
    )
    picture = samples_picture(module, config["sampler"], num_samples) if num_samples else None
    card = pipeline_card(config, name, num_samples if picture else 0)
    with replacing(out_dir, PIPELINE_FILES) as folder:
        pipeline.save_pretrained(folder)
        (folder / CARD_NAME).write_text(card)
        if picture is not None:
            picture.save(folder / SAMPLES_NAME, optimize=True)
    names = [*PIPELINE_ENTRIES, CARD_NAME] + ([SAMPLES_NAME] if picture else [])
    return {entry: out_dir / entry for entry in names}
