"""ODE samplers of the flow path (`diffusion.objective=flow`): dx/ds = û(x, s) integrated from
s = 1 (pure noise) to s = 0 (Liu et al. 2023, §2.1; Lipman et al. 2023, §3), by Euler steps or
Heun's method (Karras et al. 2022, Algorithm 1). Velocities come from the denoiser's (x̂₀, ε̂)
as û = ε̂ − x̂₀, so clipping and guidance apply as for every sampler."""

from __future__ import annotations

from torch import Tensor

from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.samplers import (
    NumSteps,
    Sampler,
    Step,
    StepCallback,
    timestep_sequence,
)
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.settings import checked


class FlowEulerSampler(Sampler):
    """Euler steps x_{s'} = x_s + (s' − s) û on `num_steps` timesteps uniform in s, from
    s_{T−1} = 1 down to s_0 = 1/T, then to s = 0, where the step lands on x̂₀ itself."""

    name = "flow_euler"
    flow = True

    @checked("sampler")
    def __init__(
        self,
        schedule: NoiseSchedule,
        # Steps uniform in s; each costs one network call.
        num_steps: NumSteps = 50,
        **kwargs,
    ):
        super().__init__(schedule, **kwargs)
        self.timesteps = timestep_sequence(schedule, num_steps, "uniform")

    def steps(self) -> list[int]:
        return self.timesteps

    def time(self, t: int) -> float:
        """s_t = (t + 1)/T; 0 for t = −1, the clean image."""
        return (t + 1) / self.schedule.num_timesteps

    def step(self, step: Step, x0: Tensor, eps: Tensor) -> Tensor:
        h = self.time(self.next_timestep(step.i)) - self.time(step.t)
        return step.x + h * (eps - x0)


class FlowHeunSampler(FlowEulerSampler):
    """Heun's method: an Euler step to s', then x_{s'} = x_s + (s' − s)(û(x_s) + û(x̄_{s'}))/2
    with û at the Euler estimate x̄_{s'}; the last step, to s = 0, is Euler only (û is not
    defined there). n steps cost 2n − 1 network calls."""

    name = "flow_heun"

    @checked("sampler")
    def __init__(
        self,
        schedule: NoiseSchedule,
        # Steps uniform in s; n steps cost 2n − 1 network calls.
        num_steps: NumSteps = 25,
        **kwargs,
    ):
        super().__init__(schedule, num_steps=num_steps, **kwargs)

    def network_evaluations(self, start: int | None = None) -> int:
        return sum(2 if self.next_timestep(i) >= 0 else 1 for i, _ in self.visited(start))

    def advance(
        self, denoiser: Denoiser, step: Step, callback: StepCallback | None = None
    ) -> Tensor:
        x0, eps = denoiser.predict(step.x, step.t, step.y)
        if callback is not None:
            callback(step.i, step.t, step.x, x0)
        s = self.next_timestep(step.i)
        velocity = eps - x0
        h = self.time(s) - self.time(step.t)
        x_next = step.x + h * velocity
        if s < 0:
            return x_next
        x0_next, eps_next = denoiser.predict(x_next, s, step.y)
        return step.x + h * (velocity + eps_next - x0_next) / 2
