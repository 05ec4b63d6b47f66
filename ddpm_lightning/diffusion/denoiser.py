"""The network as every sampler sees it: (x̂₀, ε̂) at (x_t, t, y), whatever it was trained to
predict, with x̂₀ clipped and classifier-free guidance or autoguidance applied (k-diffusion's
`Denoiser` wrapper, in our ᾱ-parameterisation). A sampler never learns the objective, so it
cannot be handed the wrong one."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import torch
from torch import Tensor

from ddpm_lightning.diffusion.flow import eps_from_x0, flow_sigmas
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion, Network, Objective
from ddpm_lightning.diffusion.guidance import (
    AUTOGUIDANCE_SCALE,
    DEFAULT_GUIDANCE_SCALE,
    check_guide_pairing,
    checked_interval,
    extrapolated,
    guided_output,
    require_conditional,
)
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.settings import Range, checked


class Denoiser:
    """`network(x_t, t, y)`, trained under `schedule` to predict `objective` (eps / x0 / v /
    flow), as (x̂₀, ε̂); for flow, x_t is the flow path's x_s at s_t = (t + 1)/T (`flow.py`).
    Guidance γ applies at the noise levels σ in `guidance_interval` (σ_lo, σ_hi], for flow
    σ = s/(1 − s); a conditional network (one with `num_classes`) defaults to
    γ = DEFAULT_GUIDANCE_SCALE, an unconditional one refuses γ ≠ 1 and keeps no interval. A
    student of distilled guidance (`takes_guidance`) gets each step's γ as an input, one call.

    With a `guide` (a weaker model's denoiser on the same noise levels), γ guides away from
    the guide's x̂₀ instead of the network's unconditional one: autoguidance, which any model,
    conditional or not, takes, γ = AUTOGUIDANCE_SCALE unless set."""

    @checked("sampler")
    def __init__(
        self,
        network: Network,
        schedule: NoiseSchedule,
        objective: Objective | str,
        # Clip the network's x̂₀ to [-1, 1] at every step.
        clip_x0: bool = True,
        # Guidance γ: classifier-free for conditional models (null: 1.25), or away from a
        # weaker model, guide= (autoguidance; null: 1.5).
        guidance_scale: Annotated[float, Range(ge=0)] | None = None,
        # Noise levels (σ_lo, σ_hi] where guidance applies; null: every step (with guide=,
        # unless the command line sets it).
        guidance_interval: Annotated[Sequence[float], Range(ge=0)] | None = (0.3, 4),
        *,
        guide: Denoiser | None = None,
    ):
        self.network = network
        self.schedule = schedule
        self.objective = Objective(objective)
        self.diffusion = GaussianDiffusion(schedule, objective=self.objective.value)
        self.clip_x0 = bool(clip_x0)
        self.num_classes: int | None = getattr(network, "num_classes", None)
        flow = self.objective is Objective.FLOW
        sigmas = flow_sigmas(schedule.num_timesteps) if flow else schedule.sigmas()
        self.sigma_values = sigmas.tolist()
        self.guide = guide
        if guide is not None:
            self.check_guide(guide)
        scale = None if guidance_scale is None else float(guidance_scale)
        if scale not in (None, 1.0) and guide is None:
            require_conditional(self.num_classes, f"sampler.guidance_scale={scale}")
        if scale is None and guide is not None:
            scale = AUTOGUIDANCE_SCALE
        if self.num_classes is not None and scale is None:
            scale = DEFAULT_GUIDANCE_SCALE
        self.guidance_scale = scale
        interval = checked_interval(guidance_interval)
        guided = self.num_classes is not None or guide is not None
        self.guidance_interval = interval if guided else None

    def check_guide(self, guide: Denoiser) -> None:
        """A ConfigError unless `guide` denoises at this network's noise levels (the same path,
        T and schedule) and neither network takes γ as an input (`check_guide_pairing`)."""
        check_guide_pairing(
            guide.network,
            guide.sigma_values,
            self.network,
            self.sigma_values,
            key="guide=",
            model="model",
            objectives=(guide.objective.value, self.objective.value),
        )

    def settings(self) -> dict[str, Any]:
        """clip_x0, guidance_scale and guidance_interval as applied (γ's default filled in), in
        the form a sampler config holds them."""
        interval = self.guidance_interval
        return {
            "clip_x0": self.clip_x0,
            "guidance_scale": self.guidance_scale,
            "guidance_interval": None if interval is None else list(interval),
        }

    def guidance_scale_at(self, t: int) -> float | None:
        """γ at timestep t: `guidance_scale` where σ_t lies in `guidance_interval` (lo, hi],
        plain conditional sampling (None) elsewhere. σ_t is read from a host copy: no device sync
        per step."""
        if self.guidance_interval is None:
            return self.guidance_scale
        low, high = self.guidance_interval
        return self.guidance_scale if low < self.sigma_values[t] <= high else None

    def predict(self, x: Tensor, t: int, y: Tensor | None) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂), each (B, …), at x_t: (B, …), timestep t, guided when labels y: (B,) at
        `guidance_scale_at(t)` (`guided_output`: one call, of a doubled batch or with γ)."""
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        if self.guide is None:
            output = guided_output(self.network, x, t_batch, y, self.guidance_scale_at(t))
            x0, eps = self.diffusion.predict_x0_eps(x, t_batch, output.float())
        else:
            x0, eps = self.autoguided(x, t, t_batch, y)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = self.eps_from_x0(x, t, x0)
        return x0, eps

    def autoguided(
        self, x: Tensor, t: int, t_batch: Tensor, y: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Unclipped (x̂₀, ε̂) of the network guided away from `guide`'s x̂₀ (Karras et al. 2024,
        "Guiding a Diffusion Model with a Bad Version of Itself", eq. 2):
        x̂₀ = x̂₀_guide + γ (x̂₀ − x̂₀_guide), the guide called with the labels if it takes them."""
        assert self.guide is not None
        output = self.network(x, t_batch, y)
        x0, eps = self.diffusion.predict_x0_eps(x, t_batch, output.float())
        scale = self.guidance_scale_at(t)
        if scale is None or scale == 1.0:
            return x0, eps
        labels = y if self.guide.num_classes is not None else None
        weak, _ = self.guide.predict(x, t, labels)
        x0 = extrapolated(weak, x0, scale)
        return x0, self.eps_from_x0(x, t, x0)

    def eps_from_x0(self, x: Tensor, t: int, x0: Tensor) -> Tensor:
        """ε = (x_t − √ᾱ_t x₀) / √(1−ᾱ_t) (Ho et al. 2020, eq. 4 solved for ε), or, for a flow
        model, ε = (x_s − (1 − s_t) x₀)/s_t."""
        if self.objective is Objective.FLOW:
            return eps_from_x0(x, (t + 1) / self.schedule.num_timesteps, x0)
        s = self.schedule
        return (x - s.sqrt_alphas_cumprod[t] * x0) / s.sqrt_one_minus_alphas_cumprod[t]


# The keys of a sampler config that are the denoiser's: clip_x0, guidance_scale, guidance_interval.
DENOISER_SETTINGS = tuple(
    name
    for name, parameter in inspect.signature(Denoiser).parameters.items()
    if parameter.default is not inspect.Parameter.empty
    and parameter.kind is not inspect.Parameter.KEYWORD_ONLY
)


def denoiser_options(
    factory: Callable[..., Any], options: Mapping[str, Any]
) -> tuple[Callable[..., Any], dict[str, Any], dict[str, Any]]:
    """A sampler's settings split in two: (`factory` without them, its own options, the
    denoiser's `DENOISER_SETTINGS`), from `options` and, for a `functools.partial` (a sampler
    config), its keywords too; `options` win."""
    if isinstance(factory, functools.partial):
        options = {**factory.keywords, **options}
        factory = functools.partial(factory.func, *factory.args)
    own = {key: value for key, value in options.items() if key not in DENOISER_SETTINGS}
    denoising = {key: value for key, value in options.items() if key in DENOISER_SETTINGS}
    return factory, own, denoising
