"""Reverse-process samplers: DDPM (ancestral), DDIM and DPM-Solver++(2M).

Each sampler works with any `model(x_t, t, y) -> prediction` callable and any training
objective (eps / x0 / v): predictions are converted to (x̂₀, ε̂) first, optionally with x̂₀
clipped to [-1, 1]. Timesteps are 0-based (index t is step t+1 of the papers).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from rich.progress import Progress
from torch import Tensor

from ddpm_lightning.diffusion import Denoiser, GaussianDiffusion
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.guidance import guided_output
from ddpm_lightning.schedules import NoiseSchedule

StepCallback = Callable[[int, int, Tensor, Tensor], None]
SPACINGS = ("uniform", "quadratic", "trailing", "logsnr")


def timestep_sequence(
    schedule: NoiseSchedule, num_steps: int, spacing: str = "uniform"
) -> list[int]:
    """The `num_steps` timesteps a sampler visits, strictly decreasing, starting at T−1.

    uniform: round(linspace(T−1, 0)), ends at 0. quadratic: DDIM's quadratic spacing,
    round(linspace(0, √(T−1))²), ends at 0. trailing: round(T − i·T/n) − 1 (Lin et al. 2024),
    ends at round(T/n) − 1. logsnr: nearest to uniform steps in λ = log(√ᾱ/√(1−ᾱ)) (Lu et al.
    2022), ends at 0. Steps that would repeat after rounding are moved to the next free one.
    """
    if spacing not in SPACINGS:
        raise ConfigError(f"sampler.spacing={spacing!r} is unknown; choose one of {SPACINGS}")
    T, n = schedule.num_timesteps, int(num_steps)
    if not 1 <= n <= T:
        raise ConfigError(
            f"sampler.num_steps={num_steps} must be between 1 and schedule.num_timesteps={T}"
        )
    if n == 1:
        return [T - 1]
    if spacing == "uniform":
        ascending = [round(i * (T - 1) / (n - 1)) for i in range(n)]
    elif spacing == "quadratic":
        ascending = [round((i * math.sqrt(T - 1) / (n - 1)) ** 2) for i in range(n)]
    elif spacing == "trailing":
        ascending = [round(T - i * T / n) - 1 for i in range(n)][::-1]
    else:
        a = schedule.alphas_cumprod.double().cpu()
        lam = 0.5 * (a.log() - torch.log1p(-a))
        grid = torch.linspace(lam[0].item(), lam[-1].item(), n, dtype=torch.float64)
        ascending = [int((lam - value).abs().argmin()) for value in grid]
    return strictly_decreasing(ascending, T)


def strictly_decreasing(ascending: list[int], num_timesteps: int) -> list[int]:
    """Make ascending proposals distinct within [0, T−1] (moving repeats up), then reverse."""
    n = len(ascending)
    steps = list(ascending)
    for i in range(1, n):
        steps[i] = max(steps[i], steps[i - 1] + 1)
    for i in range(n - 1, -1, -1):
        steps[i] = min(steps[i], num_timesteps - n + i)
    return steps[::-1]


class Sampler:
    """Shared machinery: chunked sampling, generators, guidance, clipping, progress, callbacks.

    Subclasses define `steps()` (the timesteps visited) and `step()` (one update).
    """

    name = "sampler"

    def __init__(
        self,
        schedule: NoiseSchedule,
        objective: str = "eps",
        clip_x0: bool = True,
        batch_size: int = 256,
        progress: bool = True,
        guidance_scale: float | None = None,
    ):
        if int(batch_size) < 1:
            raise ConfigError(f"sampler.batch_size={batch_size} must be at least 1")
        self.diffusion = GaussianDiffusion(schedule, objective=objective)
        self.schedule = schedule
        self.clip_x0 = clip_x0
        self.batch_size = int(batch_size)
        self.progress = progress
        self.guidance_scale = None if guidance_scale is None else float(guidance_scale)

    def steps(self) -> list[int]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget multistep history before a new chunk."""

    def step(self, i: int, x: Tensor, x0: Tensor, eps: Tensor, generator) -> Tensor:
        raise NotImplementedError

    def predict(
        self, model: Denoiser, x: Tensor, t: int, y: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂) at x: (B, …), timestep t, guided by `guidance_scale` when labels y: (B,)."""
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        output = guided_output(model, x, t_batch, y, self.guidance_scale)
        x0, eps = self.diffusion.predict_x0_eps(x, t_batch, output.float())
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = self.eps_from_x0(x, t, x0)
        return x0, eps

    def eps_from_x0(self, x: Tensor, t: int, x0: Tensor) -> Tensor:
        """ε = (x_t − √ᾱ_t x₀) / √(1−ᾱ_t)."""
        s = self.schedule
        return (x - s.sqrt_alphas_cumprod[t] * x0) / s.sqrt_one_minus_alphas_cumprod[t]

    def alpha_bar(self, t: int) -> Tensor:
        """ᾱ_t, with t = −1 meaning the clean image (ᾱ = 1)."""
        return (
            self.schedule.alphas_cumprod[t] if t >= 0 else self.schedule.alphas_cumprod.new_ones(())
        )

    @torch.no_grad()
    def sample(
        self,
        model: Denoiser,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
        callback: StepCallback | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Samples of `shape` (N, C, H, W) in [-1, 1], drawn `batch_size` at a time.

        y: (N,) labels for conditional models. noise: (N, C, H, W) starting x_T instead of
        fresh draws. `callback(i, t, x_t, x̂₀)` is called after every step's prediction.
        """
        device = self.schedule.betas.device
        chunks = []
        steps = self.steps()
        with Progress(disable=not self.progress, transient=True) as progress:
            task = progress.add_task(
                f"{self.name} sampling", total=len(steps) * math.ceil(shape[0] / self.batch_size)
            )
            for start in range(0, shape[0], self.batch_size):
                n = min(self.batch_size, shape[0] - start)
                labels = None if y is None else y[start : start + n].to(device)
                x = (
                    torch.randn((n, *shape[1:]), device=device, generator=generator)
                    if noise is None
                    else noise[start : start + n].to(device)
                )
                self.reset()
                for i, t in enumerate(steps):
                    x0, eps = self.predict(model, x, t, labels)
                    if callback is not None:
                        callback(i, t, x, x0)
                    x = self.step(i, x, x0, eps, generator)
                    progress.advance(task)
                chunks.append(x.clamp(-1, 1))
        return torch.cat(chunks)

    def noise_like(self, x: Tensor, generator) -> Tensor:
        return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


class DDPMSampler(Sampler):
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2).

    x_{t−1} = μ̃_t(x_t, x̂₀) + σ_t z with σ_t² = β̃_t (`fixed_small`) or β_t (`fixed_large`).
    """

    name = "ddpm"

    def __init__(self, schedule: NoiseSchedule, variance: str = "fixed_small", **kwargs):
        super().__init__(schedule, **kwargs)
        if variance not in ("fixed_small", "fixed_large"):
            raise ConfigError(
                f"sampler.variance={variance!r} is unknown; choose fixed_small or fixed_large"
            )
        self.variance = variance

    def steps(self) -> list[int]:
        return list(range(self.schedule.num_timesteps - 1, -1, -1))

    def step(self, i: int, x: Tensor, x0: Tensor, eps: Tensor, generator) -> Tensor:
        s = self.schedule
        t = self.schedule.num_timesteps - 1 - i
        mean = s.posterior_mean_coef1[t] * x0 + s.posterior_mean_coef2[t] * x
        if t == 0:
            return mean
        variance = s.posterior_variance[t] if self.variance == "fixed_small" else s.betas[t]
        return mean + variance.sqrt() * self.noise_like(x, generator)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eq. 12) over a sub-sequence of timesteps.

    x_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s − σ²) ε̂ + σ z, σ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s);
    η = 0 is deterministic, η = 1 matches DDPM's posterior variance.
    """

    name = "ddim"

    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int = 50,
        eta: float = 0.0,
        spacing: str = "uniform",
        **kwargs,
    ):
        super().__init__(schedule, **kwargs)
        self.timesteps = timestep_sequence(schedule, num_steps, spacing)
        self.eta = float(eta)

    def steps(self) -> list[int]:
        return self.timesteps

    def step(self, i: int, x: Tensor, x0: Tensor, eps: Tensor, generator) -> Tensor:
        t = self.timesteps[i]
        s = self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1
        a_t, a_s = self.alpha_bar(t), self.alpha_bar(s)
        sigma = self.eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).clamp(min=0).sqrt()
        x = a_s.sqrt() * x0 + (1 - a_s - sigma**2).clamp(min=0).sqrt() * eps
        if self.eta > 0 and s >= 0:
            x = x + sigma * self.noise_like(x, generator)
        return x


class DPMSolverSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep, data prediction.

    With α_t = √ᾱ_t, σ_t = √(1−ᾱ_t), λ_t = log(α_t/σ_t), h = λ_s − λ_t:
    x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) D, where D = x̂₀ at the first step and
    D = (1 + 1/(2r)) x̂₀ − 1/(2r) x̂₀_prev, r = h_prev/h after it. The last step jumps to
    the clean image (σ = 0), which is D itself; it is first order, as the paper recommends.
    Steps are uniform in λ by default (`spacing=logsnr`), the paper's choice for pixel space.
    """

    name = "dpm_solver"

    def __init__(
        self, schedule: NoiseSchedule, num_steps: int = 20, spacing: str = "logsnr", **kwargs
    ):
        super().__init__(schedule, **kwargs)
        self.timesteps = timestep_sequence(schedule, num_steps, spacing)
        self.previous: tuple[Tensor, Tensor] | None = None

    def steps(self) -> list[int]:
        return self.timesteps

    def reset(self) -> None:
        self.previous = None

    def lambda_(self, t: int) -> Tensor:
        a = self.alpha_bar(t)
        return 0.5 * (torch.log(a) - torch.log1p(-a))

    def step(self, i: int, x: Tensor, x0: Tensor, eps: Tensor, generator) -> Tensor:
        t = self.timesteps[i]
        if i + 1 == len(self.timesteps):
            return x0
        s = self.timesteps[i + 1]
        h = self.lambda_(s) - self.lambda_(t)
        d = x0
        if self.previous is not None:
            x0_prev, h_prev = self.previous
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        self.previous = (x0, h)
        a_s, a_t = self.alpha_bar(s), self.alpha_bar(t)
        sigma_ratio = ((1 - a_s) / (1 - a_t)).sqrt()
        return sigma_ratio * x - a_s.sqrt() * torch.expm1(-h) * d
