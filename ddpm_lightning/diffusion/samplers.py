"""Reverse-process samplers: DDPM (ancestral), DDIM, DPM-Solver++(2M) and Heun (EDM).

Each sampler draws through a `Denoiser`, which gives (x̂₀, ε̂) at (x_t, t, y) whatever the
network was trained to predict, clipped and guided as its settings say; a sampler only turns
(x̂₀, ε̂) into the next x. Timesteps are 0-based (index t is step t+1 of the papers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

import torch
from rich.progress import Progress
from torch import Tensor

from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.flow import check_pairing
from ddpm_lightning.diffusion.noise import SampleNoise
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.settings import OneOf, Range, checked

StepCallback = Callable[[int, int, Tensor, Tensor], None]
SPACINGS = ("uniform", "quadratic", "trailing", "logsnr", "karras")
Spacing = Annotated[str, OneOf(SPACINGS)]
NumSteps = Annotated[int, Range(ge=1)]
# Karras et al. 2022 (EDM), Table 1: σ_max of the ρ-spaced grid and its exponent ρ.
KARRAS_SIGMA_MAX, KARRAS_RHO = 80.0, 7.0


class StepNoise(Protocol):
    """Where a stochastic step takes its noise z: (B, …) (`SampleNoise`, or noise drawn already)."""

    def at_step(self, i: int) -> Tensor: ...


@dataclass(frozen=True)
class Step:
    """One update's context: the i-th visited timestep t (of `Sampler.steps()`), the sample
    x_t: (B, …) there, labels y: (B,) or None, and the noise z of stochastic steps."""

    i: int
    t: int
    x: Tensor
    y: Tensor | None
    noise: StepNoise


def nearest_timesteps(schedule: NoiseSchedule, values: Tensor) -> list[int]:
    """For each σ in `values`, the timestep whose σ_t is nearest in log σ."""
    log_sigmas = schedule.sigmas().cpu().log()
    return [int((log_sigmas - value.log()).abs().argmin()) for value in values]


def karras_grid(schedule: NoiseSchedule, num_steps: int) -> list[int]:
    """Ascending timesteps nearest to σ_i = (σ_max^(1/ρ) + i/(n−1)(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ
    (Karras et al. 2022, eq. 5), σ_min = σ_0, σ_max = min(80, σ_{T−1}); the largest is T−1."""
    all_sigmas = schedule.sigmas().cpu()
    low, high = all_sigmas[0].item(), min(KARRAS_SIGMA_MAX, all_sigmas[-1].item())
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    grid = high ** (1 / KARRAS_RHO) + ramp * (low ** (1 / KARRAS_RHO) - high ** (1 / KARRAS_RHO))
    ascending = nearest_timesteps(schedule, grid**KARRAS_RHO)[::-1]
    ascending[-1] = schedule.num_timesteps - 1
    return ascending


@checked("sampler")
def step_count(schedule: NoiseSchedule, num_steps: NumSteps) -> int:
    """The steps a sampler takes for `sampler.num_steps`: at least 1 (else a ConfigError), and
    at most the schedule's T, so more steps than timesteps visit every timestep once."""
    return min(int(num_steps), schedule.num_timesteps)


@checked("sampler")
def timestep_sequence(
    schedule: NoiseSchedule, num_steps: int, spacing: Spacing = "uniform"
) -> list[int]:
    """The `num_steps` timesteps a sampler visits, strictly decreasing, starting at T−1.

    uniform: round(linspace(T−1, 0)), ends at 0. quadratic: DDIM's quadratic spacing,
    round(linspace(0, √(T−1))²), ends at 0. trailing: round(T − i·T/n) − 1 (Lin et al. 2024),
    ends at round(T/n) − 1. logsnr: nearest to uniform steps in λ = log(√ᾱ/√(1−ᾱ)) (Lu et al.
    2022), ends at 0. karras: nearest to EDM's ρ = 7 grid in σ (`karras_grid`), ends at 0.
    Steps that would repeat after rounding are moved to the next free one. More steps than
    the schedule has visit every timestep, so the default of 50 also serves models with T < 50.
    """
    T = schedule.num_timesteps
    n = step_count(schedule, num_steps)
    if n == 1:
        return [T - 1]
    if spacing == "uniform":
        ascending = [round(i * (T - 1) / (n - 1)) for i in range(n)]
    elif spacing == "quadratic":
        ascending = [round((i * math.sqrt(T - 1) / (n - 1)) ** 2) for i in range(n)]
    elif spacing == "trailing":
        ascending = [round(T - i * T / n) - 1 for i in range(n)][::-1]
    elif spacing == "karras":
        ascending = karras_grid(schedule, n)
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
    """Shared machinery: chunked sampling, per-sample noise, progress and callbacks.

    Subclasses define `steps()` (the timesteps visited) and `step()` (one update from the
    denoiser's (x̂₀, ε̂)), or `advance()` where an update asks the denoiser more than once.
    `DiffusionModule.make_sampler` sets `denoiser`, the module's network with the sampler
    config's clip_x0 and guidance settings, which `DiffusionModule.generate` samples through.
    """

    name = "sampler"
    denoiser: Denoiser | None = None
    # Whether it integrates the flow path of `diffusion.objective=flow` (`flow_samplers.py`).
    flow = False

    @checked("sampler")
    def __init__(
        self,
        schedule: NoiseSchedule,
        # Samples per network call; more are drawn in chunks of this size.
        batch_size: Annotated[int, Range(ge=1)] = 256,
        progress: bool = True,
    ):
        self.schedule = schedule
        self.batch_size = int(batch_size)
        self.progress = progress
        self.sigmas = schedule.sigmas()

    def steps(self) -> list[int]:
        raise NotImplementedError

    def visited(self, start: int | None = None) -> list[tuple[int, int]]:
        """(i, t) of each visited timestep t ≤ `start` (all for None), i its index in `steps()`."""
        return [(i, t) for i, t in enumerate(self.steps()) if start is None or t <= start]

    def network_evaluations(self, start: int | None = None) -> int:
        """Network calls per sample from timestep `start` (a guided call, one doubled batch or
        a distilled-guidance student's one with γ, counts once)."""
        return len(self.visited(start))

    def reset(self) -> None:
        """Forget multistep history before a new chunk."""

    def step(self, step: Step, x0: Tensor, eps: Tensor) -> Tensor:
        """`step.x` at the visited timestep `step.t` → the sample at the next, from (x̂₀, ε̂) and
        `step.noise.at_step(step.i)` where the update is stochastic."""
        raise NotImplementedError

    def alpha_bar(self, t: int) -> Tensor:
        """ᾱ_t, with t = −1 meaning the clean image (ᾱ = 1)."""
        return (
            self.schedule.alphas_cumprod[t] if t >= 0 else self.schedule.alphas_cumprod.new_ones(())
        )

    def next_timestep(self, i: int) -> int:
        """The timestep visited after the i-th, −1 (the clean image) after the last."""
        steps = self.steps()
        return steps[i + 1] if i + 1 < len(steps) else -1

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        shape: tuple[int, ...],
        seed: int = 0,
        indices: Iterable[int] | None = None,
        y: Tensor | None = None,
        callback: StepCallback | None = None,
        noise: Tensor | None = None,
        start: int | None = None,
    ) -> Tensor:
        """Samples of `shape` (N, C, H, W) in [-1, 1], drawn `batch_size` at a time.

        seed, indices: which samples of the run seeded `seed` these are (default 0 … N−1);
        sample i's noise depends on (seed, i) alone (`SampleNoise`), so samples [0, 4) and
        [4, 10) drawn apart equal samples [0, 10) drawn at once. y: (N,) labels for conditional
        models. noise: (N, C, H, W) starting x_T instead of the samples' own; with `start`, the
        x_t at timestep `start`, from which only the visited timesteps ≤ `start` are taken
        (`network_evaluations(start)` calls) with the run's own step noise, so a run stopped at
        `start` and started again from its x_t gives the same images. `callback(i, t, x_t, x̂₀)`
        is called after every step's prediction.
        """
        if not isinstance(denoiser, Denoiser):
            raise TypeError(
                f"{type(self).__name__}.sample takes a Denoiser (the network with its objective), "
                f"not {type(denoiser).__name__}: wrap it as Denoiser(network, schedule, objective)"
            )
        check_pairing(self.name, self.flow, denoiser.objective.value)
        if start is not None and noise is None:
            raise ValueError("start needs noise: the x_t to start from")
        device = self.schedule.betas.device
        order = list(range(shape[0]) if indices is None else map(int, indices))
        if len(order) != shape[0]:
            raise ValueError(f"{len(order)} sample indices for {shape[0]} samples")
        chunks = []
        visited, total = self.visited(start), len(self.steps())
        with Progress(disable=not self.progress, transient=True) as progress:
            task = progress.add_task(
                f"{self.name} sampling",
                total=len(visited) * math.ceil(shape[0] / self.batch_size),
            )
            for first in range(0, shape[0], self.batch_size):
                n = min(self.batch_size, shape[0] - first)
                labels = None if y is None else y[first : first + n].to(device)
                draws = SampleNoise(seed, order[first : first + n], shape[1:], total, device)
                x = draws.initial() if noise is None else noise[first : first + n].to(device)
                if start is not None:
                    draws.initial()  # x_T set aside: the steps draw the run's own noise
                self.reset()
                for i, t in visited:
                    x = self.advance(denoiser, Step(i, t, x, labels, draws), callback)
                    progress.advance(task)
                chunks.append(x.clamp(-1, 1))
        return torch.cat(chunks)

    def advance(
        self, denoiser: Denoiser, step: Step, callback: StepCallback | None = None
    ) -> Tensor:
        """`step.x` at the visited timestep `step.t` → the sample at the next one (the clean
        image after the last): one `denoiser.predict`, then `step`."""
        x0, eps = denoiser.predict(step.x, step.t, step.y)
        if callback is not None:
            callback(step.i, step.t, step.x, x0)
        return self.step(step, x0, eps)


class DDPMSampler(Sampler):
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2).

    x_{t−1} = μ̃_t(x_t, x̂₀) + σ_t z with σ_t² = β̃_t (`fixed_small`) or β_t (`fixed_large`).
    """

    name = "ddpm"

    @checked("sampler")
    def __init__(
        self,
        schedule: NoiseSchedule,
        # σ_t² of each step: fixed_small (the posterior's β̃_t) or fixed_large (β_t).
        variance: Literal["fixed_small", "fixed_large"] = "fixed_small",
        **kwargs,
    ):
        super().__init__(schedule, **kwargs)
        self.variance = variance

    def steps(self) -> list[int]:
        return list(range(self.schedule.num_timesteps - 1, -1, -1))

    def step(self, step: Step, x0: Tensor, eps: Tensor) -> Tensor:
        s, t, x = self.schedule, step.t, step.x
        mean = s.posterior_mean_coef1[t] * x0 + s.posterior_mean_coef2[t] * x
        if t == 0:
            return mean
        variance = s.posterior_variance[t] if self.variance == "fixed_small" else s.betas[t]
        return mean + variance.sqrt() * step.noise.at_step(step.i).to(x.dtype)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eq. 12) over a sub-sequence of timesteps.

    x_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s − σ²) ε̂ + σ z, σ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s);
    η = 0 is deterministic, η = 1 (the default, measured best) matches DDPM's posterior
    variance.
    """

    name = "ddim"

    @checked("sampler")
    def __init__(
        self,
        schedule: NoiseSchedule,
        # Network calls per sample (at most the schedule's T).
        num_steps: NumSteps = 50,
        # η: 0 is deterministic, 1 matches DDPM's posterior variance.
        eta: Annotated[float, Range(ge=0)] = 1.0,
        # The visited timesteps: uniform or quadratic in t, trailing (from T−1), logsnr (even in
        # log-SNR) or karras (EDM's ρ = 7 grid in σ).
        spacing: Spacing = "uniform",
        **kwargs,
    ):
        super().__init__(schedule, **kwargs)
        self.timesteps = timestep_sequence(schedule, num_steps, spacing)
        self.spacing = spacing
        self.eta = float(eta)

    def steps(self) -> list[int]:
        return self.timesteps

    def step(self, step: Step, x0: Tensor, eps: Tensor) -> Tensor:
        s = self.next_timestep(step.i)
        a_t, a_s = self.alpha_bar(step.t), self.alpha_bar(s)
        sigma = self.eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).clamp(min=0).sqrt()
        x = a_s.sqrt() * x0 + (1 - a_s - sigma**2).clamp(min=0).sqrt() * eps
        if self.eta > 0 and s >= 0:
            x = x + sigma * step.noise.at_step(step.i).to(x.dtype)
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

    @checked("sampler")
    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: NumSteps = 20,
        spacing: Spacing = "logsnr",
        **kwargs,
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

    def step(self, step: Step, x0: Tensor, eps: Tensor) -> Tensor:
        s = self.next_timestep(step.i)
        if s < 0:
            return x0
        h = self.lambda_(s) - self.lambda_(step.t)
        d = x0
        if self.previous is not None:
            x0_prev, h_prev = self.previous
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        self.previous = (x0, h)
        a_s, a_t = self.alpha_bar(s), self.alpha_bar(step.t)
        sigma_ratio = ((1 - a_s) / (1 - a_t)).sqrt()
        return sigma_ratio * step.x - a_s.sqrt() * torch.expm1(-h) * d


class HeunSampler(Sampler):
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 2).

    In the variable x̃ = x_t/√ᾱ_t with noise level σ_t = √((1−ᾱ_t)/ᾱ_t), the ODE is
    dx̃/dσ = (x̃ − D(x̃; σ))/σ, D being the network's x̂₀. Each step is an Euler step to the next
    σ plus a trapezoidal correction with D there. Euler only (one network call, = DDIM η = 0)
    are the last step, to σ = 0, and steps from σ above EDM's σ_max = 80: from the top of a
    cosine schedule (σ_{T−1} ≈ 2·10⁴ at T = 1000) the correction multiplies the change of D by
    σ/σ_next and diverges. With `churn` > 0, steps with σ in [`churn_min`,
    `churn_max`] first raise σ by γ = min(churn/n, √2 − 1), adding fresh noise (×`noise_scale`),
    to the nearest trained noise level. Timesteps default to EDM's ρ = 7 grid (`karras`).
    """

    name = "heun"

    @checked("sampler")
    def __init__(
        self,
        schedule: NoiseSchedule,
        # Steps; n steps cost 2n − 1 network calls.
        num_steps: NumSteps = 18,
        spacing: Spacing = "karras",
        # Stochasticity: each step first raises σ by γ = min(churn/num_steps, √2 − 1).
        churn: Annotated[float, Range(ge=0)] = 0.0,
        # Lowest σ that churn applies to.
        churn_min: Annotated[float, Range(ge=0)] = 0.0,
        # Highest σ that churn applies to.
        churn_max: Annotated[float, Range(ge=0, le=math.inf)] = math.inf,
        # Scale of the noise that churn adds.
        noise_scale: Annotated[float, Range(gt=0)] = 1.0,
        **kwargs,
    ):
        super().__init__(schedule, **kwargs)
        self.timesteps = timestep_sequence(schedule, num_steps, spacing)
        self.churn = float(churn)
        self.churn_range = (float(churn_min), float(churn_max))
        self.noise_scale = float(noise_scale)

    def steps(self) -> list[int]:
        return self.timesteps

    def network_evaluations(self, start: int | None = None) -> int:
        return sum(1 if self.euler_only(i) else 2 for i, _ in self.visited(start))

    def euler_only(self, i: int) -> bool:
        """Whether step i skips the correction: the last step, or σ̂ above σ_max."""
        sigma_hat = self.sigmas[self.churned(self.timesteps[i])].item()
        return i + 1 == len(self.timesteps) or sigma_hat > KARRAS_SIGMA_MAX

    def churned(self, t: int) -> int:
        """The timestep whose σ is nearest to σ_t (1 + γ): t itself when churn is off."""
        sigma = self.sigmas[t]
        low, high = self.churn_range
        if self.churn == 0 or not low <= sigma.item() <= high:
            return t
        gamma = min(self.churn / len(self.timesteps), math.sqrt(2) - 1)
        return max(t, nearest_timesteps(self.schedule, (sigma * (1 + gamma)).reshape(1))[0])

    def denoised(self, denoiser: Denoiser, x_tilde: Tensor, t: int, y: Tensor | None) -> Tensor:
        """D(x̃; σ_t) = x̂₀ of the denoiser at x_t = √ᾱ_t x̃."""
        return denoiser.predict(self.alpha_bar(t).sqrt() * x_tilde, t, y)[0]

    def advance(
        self, denoiser: Denoiser, step: Step, callback: StepCallback | None = None
    ) -> Tensor:
        """One Heun step from the visited timestep `step.t` to the next (σ = 0 after the last)."""
        i, t, x, y = step.i, step.t, step.x, step.y
        x_tilde = x / self.alpha_bar(t).sqrt()
        t_hat = self.churned(t)
        sigma_hat = self.sigmas[t_hat].to(x.dtype)
        if t_hat != t:
            extra = (sigma_hat**2 - self.sigmas[t] ** 2).sqrt().to(x.dtype)
            x_tilde = x_tilde + extra * self.noise_scale * step.noise.at_step(i).to(x.dtype)
        x0 = self.denoised(denoiser, x_tilde, t_hat, y)
        if callback is not None:
            callback(i, t, x, x0)
        s = self.next_timestep(i)
        if s < 0:
            return x0
        sigma_next = self.sigmas[s].to(x.dtype)
        slope = (x_tilde - x0) / sigma_hat
        x_next = x_tilde + (sigma_next - sigma_hat) * slope
        if self.euler_only(i):
            return self.alpha_bar(s).sqrt() * x_next
        slope_next = (x_next - self.denoised(denoiser, x_next, s, y)) / sigma_next
        x_next = x_tilde + (sigma_next - sigma_hat) * (slope + slope_next) / 2
        return self.alpha_bar(s).sqrt() * x_next
