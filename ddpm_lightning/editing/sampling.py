"""The one place the editing methods touch the sampler API: the timesteps a sampler visits, the
denoiser's prediction (x̂₀, ε̂) at one of them, the sampler's update to the next one, and which
samplers a method allows. The noise every method draws is counted here too, in the order it is
used, so a port that draws `SampleNoise` the same way gets the same images."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import Tensor

from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.noise import SampleNoise
from ddpm_lightning.diffusion.samplers import DDIMSampler, DDPMSampler, Sampler, Step
from ddpm_lightning.errors import ConfigError

# Called after each update with (update number, timestep, x_t, x̂₀), like a sampler's callback.
EditCallback = Callable[[int, int, Tensor, Tensor], None]


class EditableModel(Protocol):
    """What the editing methods need of a loaded model (a `DiffusionModule`): a sampler for its
    schedule with its network as the denoiser, its own denoiser, its classes and image shape."""

    model: torch.nn.Module
    data_shape: tuple[int, ...]

    @property
    def num_classes(self) -> int | None: ...

    def make_sampler(self, factory: Callable[..., Sampler], **kwargs: Any) -> Sampler: ...

    def denoiser(self, **settings: Any) -> Denoiser: ...


class GivenNoise:
    """A step's noise z: (B, …), drawn already, where `Sampler.step` asks `at_step(i)`."""

    def __init__(self, z: Tensor):
        self.z = z

    def at_step(self, i: int) -> Tensor:
        return self.z


def visited(sampler: Sampler) -> list[int]:
    """The timesteps the sampler visits, strictly decreasing from T−1."""
    return list(sampler.steps())


def predicted(denoiser: Denoiser, x: Tensor, t: int, y: Tensor | None) -> tuple[Tensor, Tensor]:
    """(x̂₀, ε̂) of the denoiser at x: (B, …), timestep t (guided for labels y)."""
    return denoiser.predict(x, t, y)


def updated(sampler: Sampler, i: int, x: Tensor, x0: Tensor, eps: Tensor, z: Tensor) -> Tensor:
    """The sampler's update of x at its i-th visited timestep to the next one (the clean image
    after the last), with z: (B, …) as the step's noise where it draws any."""
    return sampler.step(Step(i, visited(sampler)[i], x, None, GivenNoise(z)), x0, eps)


def num_timesteps(sampler: Sampler) -> int:
    """T of the sampler's schedule."""
    return sampler.schedule.num_timesteps


def alpha_bar(sampler: Sampler, t: int) -> Tensor:
    """ᾱ_t of the sampler's schedule; t = −1 is the clean image (ᾱ = 1)."""
    return sampler.alpha_bar(t)


def require_sampler(sampler: Sampler, method: str, deterministic: bool = False) -> None:
    """A one-line ConfigError unless `sampler` is DDPM or DDIM (for `deterministic` methods:
    DDIM with η = 0)."""
    if deterministic and not (isinstance(sampler, DDIMSampler) and sampler.eta == 0):
        raise ConfigError(
            f"edit={method} needs deterministic DDIM: sampler=ddim sampler.eta=0 "
            f"(got sampler={sampler.name})"
        )
    if not isinstance(sampler, (DDPMSampler, DDIMSampler)):
        raise ConfigError(
            f"edit={method} works with sampler=ddpm or sampler=ddim, not sampler={sampler.name}"
        )


def denoiser_and_sampler(
    model: EditableModel | Denoiser, sampler: Sampler | None, **defaults: Any
) -> tuple[Denoiser, Sampler]:
    """The denoiser to ask and the sampler to use: `sampler`, or DDIM with `defaults` made for
    the model; the denoiser is `model` itself when it is one, else the sampler's (the model's
    network with the sampler config's clipping and guidance), else the model's default."""
    if sampler is None:
        if isinstance(model, Denoiser):
            raise ConfigError("a bare denoiser needs a sampler: pass sampler=DDIMSampler(...)")
        sampler = model.make_sampler(DDIMSampler, progress=False, **defaults)
    if isinstance(model, Denoiser):
        return model, sampler
    return sampler.denoiser or model.denoiser(), sampler


class Draws:
    """The standard normal draws of an edit, taken in the order the method uses them: x_T
    (`initial`), then draw 0, 1, 2, … (`next`), all from `SampleNoise(seed, indices, shape,
    count)`, so sample i's numbers depend on (seed, i, count) alone."""

    def __init__(
        self, seed: int, indices: Iterable[int], shape: tuple[int, ...], count: int, device: Any
    ):
        self.noise = SampleNoise(seed, indices, shape, max(1, count), device)
        self.taken = 0

    def initial(self) -> Tensor:
        return self.noise.initial()

    def next(self) -> Tensor:
        z = self.noise.at_step(self.taken)
        self.taken += 1
        return z

    def at_step(self, i: int) -> Tensor:
        """Draw i itself: the noise of a sampler's i-th step, as plain sampling draws it."""
        return self.noise.at_step(i)
