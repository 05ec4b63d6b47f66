"""Our UNet (model=unet, unet_cond, unet_large) as diffusers components, so a folder written by
`export format=diffusers` loads with diffusers and this package, and holds no code.

`DDPMLightningUNet`: the UNet behind diffusers' model call (ModelMixin + ConfigMixin: config.json
and safetensors). `DDPMLightningPipeline`: sampling with any diffusers scheduler, with class labels
and classifier-free guidance for conditional models. Importing this module imports diffusers (the
`hf` extra); it is also what lets `DiffusionPipeline.from_pretrained` find the UNet's class, as
diffusers takes classes outside its own libraries only from modules the program imported.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from os import PathLike
from typing import Annotated, Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from ddpm_lightning.diffusion.guidance import (
    DEFAULT_GUIDANCE_SCALE,
    checked_interval,
    guided_output,
)
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models.unet import UNet
from ddpm_lightning.settings import Range, checked

# What ModelMixin.from_pretrained and SchedulerMixin.from_pretrained both take: where the files are.
HUB_OPTIONS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
OUTPUT_TYPES = ("pil", "np", "pt")


def batch_timesteps(timestep: Tensor | float | int, sample: Tensor) -> Tensor:
    """(B,) int64 timesteps for sample (B, …) from a number, a 0-d or a (B,) tensor; fractional
    timesteps (Euler-type schedulers) rounded to the nearest integer one, the only ones our
    UNet's sinusoidal table holds."""
    t = torch.as_tensor(timestep, device=sample.device)
    if t.is_floating_point():
        t = t.round()
    return t.long().reshape(-1).expand(sample.shape[0])


class DDPMLightningUNet(ModelMixin, ConfigMixin):  # type: ignore[misc]  # as UNet2DModel
    """ddpm_lightning's UNet with diffusers' UNet2DModel call: sample (B, C, H, W), timestep (a
    number or (B,)) in [0, T), class_labels (B,) or None → UNet2DOutput(sample=(B, C, H, W)).

    The arguments are UNet's (`ddpm_lightning.models.unet`), plus `sample_size`, the image's
    (H, W) or its side, which diffusers' pipelines draw noise of. A conditional model without
    labels gives the null label's (unconditional) prediction.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | Sequence[int] = 32,
        in_channels: int = 1,
        model_channels: int = 16,
        num_timesteps: int = 100,
        channel_multipliers: Sequence[int] = (1, 2, 3),
        block_layer: str = "resblock",
        num_blocks_per_level: int = 1,
        block_groups: int = 8,
        num_attention_heads: int = 4,
        num_classes: int | None = None,
        guidance_embedding: bool = False,
    ):
        super().__init__()
        self.network = UNet(
            in_channels=in_channels,
            model_channels=model_channels,
            num_timesteps=num_timesteps,
            channel_multipliers=channel_multipliers,
            block_layer=block_layer,
            num_blocks_per_level=num_blocks_per_level,
            block_groups=block_groups,
            num_attention_heads=num_attention_heads,
            num_classes=num_classes,
            guidance_embedding=guidance_embedding,
        )

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a conditional model (the null label's index), else None."""
        return self.network.num_classes

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | float | int,
        class_labels: Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[Tensor]:
        """The network's prediction (ε, x₀ or v: the scheduler's prediction_type) for sample
        (B, C, H, W) at `timestep`, with class_labels (B,) for conditional models."""
        if class_labels is not None and self.num_classes is None:
            raise ConfigError(
                "class_labels were given to an unconditional model (num_classes is null in "
                "unet/config.json); call it without class_labels"
            )
        output = self.network(sample, batch_timesteps(timestep, sample), class_labels)
        return UNet2DOutput(sample=output) if return_dict else (output,)


def labels_for(class_labels: Tensor | Sequence[int] | int | None, batch_size: int) -> Tensor | None:
    """(B,) int64 labels from one label, a sequence or a tensor of B of them; None stays None."""
    if class_labels is None:
        return None
    labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
    if labels.numel() == 1:
        return labels.expand(batch_size).clone()
    if labels.numel() != batch_size:
        raise ConfigError(
            f"class_labels has {labels.numel()} labels for batch_size={batch_size}; pass one "
            "label or one per image"
        )
    return labels


def step_options(scheduler: Any, generator: Any, eta: float) -> dict[str, Any]:
    """The `generator` and `eta` of `scheduler.step`, where it takes them (DDIM takes both)."""
    accepted = inspect.signature(scheduler.step).parameters
    options: dict[str, Any] = {}
    if "generator" in accepted:
        options["generator"] = generator
    if "eta" in accepted:
        options["eta"] = float(eta)
    return options


def images_as(images: Tensor, output_type: str) -> Any:
    """images (B, C, H, W) in [0, 1] as PIL images, a (B, H, W, C) array or the tensor itself."""
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return DiffusionPipeline.numpy_to_pil(array) if output_type == "pil" else array


class DDPMLightningPipeline(DiffusionPipeline):
    """Images from noise with `unet` (a DDPMLightningUNet) and any diffusers `scheduler`
    following its schedule (the folder's DDPMScheduler, or e.g. DDIMScheduler.from_config of
    its config), with class labels and classifier-free guidance for conditional models."""

    def __init__(self, unet: DDPMLightningUNet, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | PathLike[Any], **kwargs: Any):
        """The pipeline of a folder or Hub repo that `export format=diffusers` wrote: unet/ as
        DDPMLightningUNet (with `kwargs`, e.g. torch_dtype) and scheduler/ as DDPMScheduler,
        whatever classes the files name, so no name read from a file selects code."""
        unet = DDPMLightningUNet.from_pretrained(
            pretrained_model_name_or_path, subfolder="unet", **kwargs
        )
        where = {key: value for key, value in kwargs.items() if key in HUB_OPTIONS}
        scheduler = DDPMScheduler.from_pretrained(
            pretrained_model_name_or_path, subfolder="scheduler", **where
        )
        return cls(unet=unet, scheduler=scheduler)

    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the UNet was trained on."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return (self.unet.config.in_channels, height, width)

    def checked_labels(
        self, class_labels: Tensor | Sequence[int] | int | None, batch_size: int
    ) -> Tensor | None:
        """(B,) labels on the pipeline's device (`labels_for`), refused for an unconditional
        model."""
        labels = labels_for(class_labels, batch_size)
        if labels is None:
            return None
        if self.unet.num_classes is None:
            raise ConfigError(
                "class_labels needs a conditional model; this one has num_classes=null in "
                "unet/config.json"
            )
        return labels.to(self.device)

    def guidance_at(
        self, t: Tensor, scale: float | None, interval: tuple[float, float] | None
    ) -> float | None:
        """γ at timestep t: `scale` where σ_t = √((1−ᾱ_t)/ᾱ_t) lies in `interval` (lo, hi] (or
        everywhere for None), as our samplers apply it; plain conditional sampling elsewhere."""
        if interval is None:
            return scale
        alpha_bar = self.scheduler.alphas_cumprod[int(t)].double()
        sigma = ((1 - alpha_bar) / alpha_bar).sqrt().item()
        return scale if interval[0] < sigma <= interval[1] else None

    @torch.no_grad()
    @checked("sampler")
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: Tensor | Sequence[int] | int | None = None,
        guidance_scale: float | None = DEFAULT_GUIDANCE_SCALE,
        guidance_interval: Annotated[Sequence[float], Range(ge=0)] | None = (0.3, 4.0),
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple[Any]:
        """`batch_size` images in [0, 1] over `num_inference_steps` of the scheduler (default:
        all T), from noise drawn by `generator` (one per image: each image's noise is its own).

        class_labels: one label or (B,) for conditional models (None: unconditional samples,
        the null label's). guidance_scale γ (1 or None: none) at the noise levels σ in
        `guidance_interval` (None: every step). eta: DDIMScheduler's η. output_type: pil, np
        ((B, H, W, C) array) or pt ((B, C, H, W) tensor).
        """
        if output_type not in OUTPUT_TYPES:
            raise ConfigError(
                f"output_type={output_type!r} is unknown; choose one of {OUTPUT_TYPES}"
            )
        labels = self.checked_labels(class_labels, batch_size)
        interval = checked_interval(guidance_interval)
        shape = (batch_size, *self.image_shape())
        image = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        image = image * self.scheduler.init_noise_sigma
        steps = num_inference_steps or self.scheduler.config.num_train_timesteps
        self.scheduler.set_timesteps(steps, device=self.device)
        options = step_options(self.scheduler, generator, eta)
        for t in self.progress_bar(self.scheduler.timesteps):
            x = self.scheduler.scale_model_input(image, t)
            scale = self.guidance_at(t, guidance_scale, interval)
            output = guided_output(self.unet.network, x, batch_timesteps(t, x), labels, scale)
            image = self.scheduler.step(output, t, image, **options).prev_sample
        images = images_as((image / 2 + 0.5).clamp(0, 1), output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
