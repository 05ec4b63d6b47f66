"""Consistency distillation (Song et al. 2023, "Consistency Models", Algorithm 2) in our
ᾱ-parameterisation, independent of Lightning.

The consistency function maps any x_t on a probability-flow ODE trajectory to its clean end:
f_θ(x_t, t) = c_skip(t) x_t + c_out(t) F_θ(x_t, t) with the boundary condition f(x, −1) = x,
t = −1 being the clean image (ᾱ = 1). c_skip and c_out are the network's own x̂₀ map for its
objective (`consistency_coefficients`), so a student started from the teacher's weights starts
as the teacher's denoiser. With v-prediction they are, in x̃ = x_t/√ᾱ_t and σ_t² = (1−ᾱ_t)/ᾱ_t,
EDM's c_skip = σ_d²/(σ² + σ_d²) and c_out = σ σ_d/√(σ² + σ_d²) for σ_d = 1 (Song et al. 2023,
eq. 24, with σ_min = 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion, Network, Objective
from ddpm_lightning.diffusion.schedules import NoiseSchedule, shaped
from ddpm_lightning.distill.grids import ddim_grid
from ddpm_lightning.errors import ConfigError


def consistency_coefficients(
    alpha_bar: Tensor, objective: Objective | str
) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out), each shaped like ᾱ, such that c_skip x_t + c_out F is the x̂₀ of an
    output F of the objective: eps (1/√ᾱ, −√(1−ᾱ)/√ᾱ) or v (√ᾱ, −√(1−ᾱ)). Both give
    (1, 0) at ᾱ = 1, the boundary condition; x0 prediction (0, 1) cannot meet it."""
    objective = Objective(objective)
    if objective is Objective.X0:
        raise ConfigError(
            "diffusion.objective=x0 cannot give a consistency function with f(x, clean) = x: "
            "distill a teacher of diffusion.objective=v or eps"
        )
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).clamp(min=0).sqrt()
    if objective is Objective.EPS:
        return 1 / alpha, -sigma / alpha
    return alpha, -sigma


class ConsistencyDiffusion(GaussianDiffusion):
    """GaussianDiffusion whose training loss is consistency distillation on the teacher's
    `teacher_steps`-step DDIM grid t_N = T−1 > … > t_1 > t_0 = −1: for n ~ U{0, …, N−1},
    x_{t_{n+1}} = √ᾱ x₀ + √(1−ᾱ) ε, x̂_{t_n} one teacher DDIM (η = 0) step from it, and the
    loss d(f_θ(x_{t_{n+1}}, t_{n+1}), f_θ⁻(x̂_{t_n}, t_n)) with d the diffusion's `loss`
    (l2 / l1 / huber) and θ⁻ = stopgrad(θ) (μ = 0: Song & Dhariwal 2023, §3.2).

    teacher: a `Denoiser` of this schedule and objective, whose network is called with
    per-sample timesteps (B,) and labels as given (no guidance) and whose x̂₀ is clipped when
    its `clip_x0` says so.
    """

    grid: Tensor

    def __init__(
        self,
        schedule: NoiseSchedule,
        teacher: Denoiser,
        teacher_steps: int,
        spacing: str = "trailing",
        objective: str = "v",
        loss: str = "l2",
    ):
        super().__init__(schedule, objective=objective, loss=loss)
        consistency_coefficients(schedule.alphas_cumprod[:1], self.objective)
        if teacher.objective is not self.objective:
            raise ConfigError(
                f"the teacher predicts diffusion.objective={teacher.objective.value} but "
                f"diffusion.objective={self.objective.value}: set "
                f"diffusion.objective={teacher.objective.value}"
            )
        self.teacher = teacher
        self.register_buffer(
            "grid", torch.tensor(ddim_grid(schedule, teacher_steps, spacing)), persistent=False
        )

    def alpha_bar(self, t: Tensor) -> Tensor:
        """ᾱ_t: (B,) float64 for t: (B,), 1 at t = −1 (the clean image)."""
        alphas = self.schedule.alphas_cumprod.double()
        return torch.where(t >= 0, alphas[t.clamp(min=0)], 1.0)

    def consistency_function(
        self, model: Network, x: Tensor, t: Tensor, y: Tensor | None = None
    ) -> Tensor:
        """f_θ(x_t, t) = c_skip(t) x_t + c_out(t) F_θ(x_t, t): (B, …) for x: (B, …), t: (B,);
        exactly x where t = −1 (the network is asked at t = 0 there and weighed by 0)."""
        c_skip, c_out = consistency_coefficients(self.alpha_bar(t), self.objective)
        output = model(x, t.clamp(min=0), y).float()
        f = shaped(c_skip, x) * x.double() + shaped(c_out, x) * output.double()
        return torch.where(shaped(t, x) < 0, x.double(), f).to(x.dtype)

    def sample_timesteps(self, batch_size: int, device: torch.device, generator=None) -> Tensor:
        """Training timesteps t_{n+1} (B,): the grid's times above the clean image, each equally
        likely (Algorithm 2: n ~ U[[1, N−1]], here with the step to the clean image too)."""
        index = torch.randint(
            0, len(self.grid) - 1, (batch_size,), device=device, generator=generator
        )
        return self.grid.to(device)[index]

    def previous_times(self, t: Tensor) -> Tensor:
        """t_n (B,) for grid times t_{n+1}: (B,): the next lower grid time (−1: clean)."""
        match = t[:, None] == self.grid[None, :-1]
        if not bool(match.any(1).all()):
            raise ValueError(
                f"timesteps {t.tolist()} are not all on the grid {self.grid[:-1].tolist()}"
            )
        return self.grid[match.int().argmax(1) + 1]

    @torch.no_grad()
    def teacher_step(self, z: Tensor, t: Tensor, s: Tensor, y: Tensor | None = None) -> Tensor:
        """One teacher DDIM (η = 0) step z_t → z_s = √ᾱ_s x̂₀ + √(1−ᾱ_s) ε̂ (Song et al. 2021,
        eq. 12), z: (B, …), t, s: (B,); the teacher's x̂₀ at s = −1."""
        x0, eps = self.predict_x0_eps(z, t, self.teacher.network(z, t, y).float())
        if self.teacher.clip_x0:
            x0 = x0.clamp(-1, 1)
            alpha_bar = shaped(self.alpha_bar(t), z)
            eps = (z - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        alpha_bar = shaped(self.alpha_bar(s), z)
        return (alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps).to(z.dtype)

    @torch.no_grad()
    def consistency_target(
        self, model: Network, z: Tensor, t: Tensor, y: Tensor | None = None
    ) -> Tensor:
        """f_θ⁻(x̂_{t_n}, t_n): (B, …), for z = x_{t_{n+1}}: (B, …) at grid times t: (B,),
        without gradient (θ⁻ = stopgrad(θ))."""
        previous = self.previous_times(t)
        return self.consistency_function(model, self.teacher_step(z, t, previous, y), previous, y)

    def training_loss(
        self,
        model: Network,
        x0: Tensor,
        y: Tensor | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """mean_B d(f_θ(x_{t_{n+1}}, t_{n+1}), f_θ⁻(x̂_{t_n}, t_n)) for
        x_{t_{n+1}} = √ᾱ x₀ + √(1−ᾱ) ε; t (= t_{n+1}, on the grid) and ε drawn if not given."""
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        z = self.q_sample(x0, t, noise)
        target = self.consistency_target(model, z, t, y)
        return self.loss(self.consistency_function(model, z, t, y), target)
