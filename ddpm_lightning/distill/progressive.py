"""Progressive distillation's target and loss (Salimans & Ho 2022, "Progressive Distillation for
Fast Sampling of Diffusion Models", Algorithm 2 and §4), independent of Lightning.

With α_t = √ᾱ_t, σ_t = √(1−ᾱ_t) and SNR_t = α_t²/σ_t², a student step t → t'' replaces the
teacher's DDIM (η = 0) steps t → t' → t''; t = −1 is the clean image (α = 1, σ = 0). With
distilled guidance (Meng et al. 2023, "On Distillation of Guided Diffusion Models", §3) the
teacher's steps are guided, ε̃ = ε_u + γ(ε_c − ε_u), and the student takes γ as an input.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch
from torch import Tensor

from ddpm_lightning.diffusion.gaussian import GaussianDiffusion, Network, parse_choice
from ddpm_lightning.diffusion.guidance import guided_output
from ddpm_lightning.diffusion.schedules import NoiseSchedule, shaped
from ddpm_lightning.distill.grids import halving_grids


class SNRWeighting(str, enum.Enum):
    """w(λ_t) on ‖x̃ − x̂‖² (§4): SNR + 1 ("SNR+1", = ‖ṽ − v̂‖²) or max(SNR, 1) ("truncated
    SNR", = max(‖x̃ − x̂‖², ‖ε̃ − ε̂‖²))."""

    SNR_PLUS_ONE = "snr_plus_one"
    TRUNCATED_SNR = "truncated_snr"


class ProgressiveDiffusion(GaussianDiffusion):
    """GaussianDiffusion whose training loss is one round of progressive distillation: the
    student's output at z_t, t on its N/2-step DDIM grid, against the target that makes one
    student DDIM step land where two teacher steps of the N-step grid do.

    teacher: the teacher's `model(x_t, t, y)`, of this schedule and objective, held so that it
    is no submodule (`FrozenTeacher`). `diffusion.weighting` and `noise_levels` of ordinary
    training do not apply: t is drawn from the student's grid, weighted by `weighting`.

    guidance: [γ_min, γ_max] of distilled guidance (None: the teacher unguided). Each sample's γ
    is drawn uniformly in it; where σ_t of the student's time lies in `guidance_interval`
    (σ_lo, σ_hi] (None: everywhere) both teacher steps take the guided output at γ and the
    student gets γ, else both are plain conditional and the student gets 1: what its sampler
    passes at that step (`Denoiser.guidance_scale_at`), so its input holds all its target
    depends on.
    """

    student_times: Tensor
    middle_times: Tensor
    guided_times: Tensor

    def __init__(
        self,
        schedule: NoiseSchedule,
        teacher: Network,
        teacher_steps: int,
        spacing: str = "trailing",
        weighting: str = "snr_plus_one",
        objective: str = "v",
        loss: str = "l2",
        guidance: Sequence[float] | None = None,
        guidance_interval: Sequence[float] | None = None,
    ):
        super().__init__(schedule, objective=objective, loss=loss)
        teacher_grid, student_grid = halving_grids(schedule, teacher_steps, spacing)
        self.teacher = teacher
        self.snr_weighting = parse_choice(SNRWeighting, weighting, "distill.weighting")
        self.register_buffer("student_times", torch.tensor(student_grid), persistent=False)
        self.register_buffer("middle_times", torch.tensor(teacher_grid[1::2]), persistent=False)
        self.guidance = None if guidance is None else (float(guidance[0]), float(guidance[1]))
        sigmas = schedule.sigmas()
        low, high = (0.0, float("inf")) if guidance_interval is None else guidance_interval
        self.register_buffer("guided_times", (low < sigmas) & (sigmas <= high), persistent=False)

    def sample_timesteps(self, batch_size: int, device: torch.device, generator=None) -> Tensor:
        """Training timesteps (B,): the student's grid times, each equally likely (Algorithm 2:
        t = i/N with i ~ U{1, …, N})."""
        index = torch.randint(
            0, len(self.middle_times), (batch_size,), device=device, generator=generator
        )
        return self.student_times.to(device)[index]

    def half_steps(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(t', t''), each (B,), for student times t: (B,): the teacher's middle time and the
        student's next time (−1: clean)."""
        match = t[:, None] == self.student_times[None, :-1]
        if not bool(match.any(1).all()):
            raise ValueError(
                f"timesteps {t.tolist()} are not all on the student's grid "
                f"{self.student_times[:-1].tolist()}"
            )
        index = match.int().argmax(1)
        return self.middle_times[index], self.student_times[index + 1]

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t), each (B,), for t: (B,), with t = −1 the clean image (1, 0)."""
        alpha_bar = torch.where(t >= 0, self.schedule.alphas_cumprod[t.clamp(min=0)], 1.0)
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

    def draw_guidance(self, t: Tensor, generator: torch.Generator | None = None) -> Tensor | None:
        """γ (B,) of a guided round at student times t: (B,), each uniform in `guidance` where
        `guided_times` holds, 1 elsewhere; None without guidance."""
        if self.guidance is None:
            return None
        low, high = self.guidance
        draws = torch.rand(t.shape, device=t.device, generator=generator)
        return torch.where(self.guided_times[t], low + (high - low) * draws, 1.0)

    def teacher_step(
        self, z: Tensor, t: Tensor, s: Tensor, y: Tensor | None, guidance: Tensor | None = None
    ) -> Tensor:
        """One teacher DDIM (η = 0) step z_t → z_s = α_s x̂ + σ_s ε̂ (Song et al. 2021, eq. 12),
        z: (B, …), t, s: (B,), from the teacher's output guided at γ: (B,) (`guided_output`)."""
        output = guided_output(self.teacher, z, t, y, guidance)
        x0, eps = self.predict_x0_eps(z, t, output.float())
        alpha, sigma = self.alpha_sigma(s)
        return shaped(alpha, z) * x0 + shaped(sigma, z) * eps

    @torch.no_grad()
    def distillation_target(
        self, z: Tensor, t: Tensor, y: Tensor | None = None, guidance: Tensor | None = None
    ) -> Tensor:
        """The student's target (B, …) at z_t: (B, …), t: (B,) on its grid, in the objective's
        terms: from the two teacher steps z_t → z_t' → z_t'', guided at γ: (B,) when given,
        Algorithm 2's x̃ = (z_t'' − (σ_t''/σ_t) z_t) / (α_t'' − (σ_t''/σ_t) α_t),
        ε̃ = (z_t − α_t x̃)/σ_t, and for v-prediction ṽ = α_t ε̃ − σ_t x̃. A student DDIM step
        predicting it lands on z_t'' exactly."""
        middle, following = self.half_steps(t)
        z_middle = self.teacher_step(z, t, middle, y, guidance)
        z_next = self.teacher_step(z_middle, middle, following, y, guidance)
        alpha, sigma = (shaped(value, z) for value in self.alpha_sigma(t))
        alpha_next, sigma_next = (shaped(value, z) for value in self.alpha_sigma(following))
        ratio = sigma_next / sigma
        x = (z_next - ratio * z) / (alpha_next - ratio * alpha)
        return self.target(x, t, (z - alpha * x) / sigma)

    def distillation_weights(self, t: Tensor) -> Tensor:
        """Per-sample weights (B,) on the squared error of the objective's output that make the
        loss w(λ_t)‖x̃ − x̂‖² (`SNRWeighting`): ‖ṽ − v̂‖² = (SNR + 1)‖x̃ − x̂‖² and
        ‖ε̃ − ε̂‖² = SNR ‖x̃ − x̂‖², so v with SNR+1 weighs every sample 1."""
        alpha_bar = self.schedule.alphas_cumprod.double()[t]
        snr = alpha_bar / (1 - alpha_bar)
        plus_one = self.snr_weighting is SNRWeighting.SNR_PLUS_ONE
        weight = snr + 1 if plus_one else snr.clamp(min=1)
        scale = {"v": snr + 1, "eps": snr, "x0": torch.ones_like(snr)}
        return (weight / scale[self.objective.value]).float()

    def training_loss(
        self,
        model: Network,
        x0: Tensor,
        y: Tensor | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """mean_B w(λ_t)‖x̃ − x̂_θ(z_t)‖², computed on the objective's output, for
        z_t = α_t x₀ + σ_t ε; t (on the student's grid) and ε drawn if not given, and with
        guidance each sample's γ (`draw_guidance`), the student's input and its target's."""
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        z = self.q_sample(x0, t, noise)
        guidance = self.draw_guidance(t, generator)
        target = self.distillation_target(z, t, y, guidance)
        output = guided_output(model, z, t, y, guidance)
        return self.loss(output, target, self.distillation_weights(t))
