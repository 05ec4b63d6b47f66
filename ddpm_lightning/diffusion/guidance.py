"""Classifier-free guidance (Ho & Salimans 2022, in the form of Lior Sinai's
DenoisingDiffusion.jl) and its label dropout.

One network learns p(x | y) and p(x): during training each label is replaced by the null
label (index `num_classes`) with probability p_uncond; at sampling time the two predictions
are mixed, ε = ε_uncond + γ (ε_cond − ε_uncond), so γ = 1 is plain conditional sampling and
γ = 0 unconditional.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import Tensor

from ddpm_lightning.diffusion.gaussian import Network
from ddpm_lightning.diffusion.schedules import shaped
from ddpm_lightning.errors import ConfigError

# The default recipe's 2-hour conditional model, default sampler, 2,000 samples: γ = 1.25 gave
# the lowest FLD with at least 99% classified as requested (3.4 at 99.5%; γ = 1: 2.0 at 97.8%,
# γ = 1.5: 5.6 at 99.9%); docs/results.md, classifier-free guidance.
DEFAULT_GUIDANCE_SCALE = 1.25
# γ of autoguidance (`guide=`) when the sampler leaves it null. Guided at every step by a d=8
# MNIST guide, 2,000 samples: 2.67 at γ = 1.5 against 2.98 at 2 on the 2-hour model, 2.87 against
# 3.77 on a 25-minute one; docs/results.md, autoguidance.
AUTOGUIDANCE_SCALE = 1.5
# The guidance interval of autoguidance when the command line sets none: every step. On the 2-hour
# MNIST model guided by a 15-minute d=8 one (γ = 1.5, 2,000 samples) it scored FLD 2.67 against
# 3.04 on classifier-free guidance's σ ∈ (0.3, 4]; docs/results.md, autoguidance.
AUTOGUIDANCE_INTERVAL = None
# A network of distilled guidance: model(x_t, t, y, guidance=γ (B,)) → its guided prediction.
GuidedNetwork = Callable[..., Tensor]


def drop_labels(
    y: Tensor, p_uncond: float, null_label: int, generator: torch.Generator | None = None
) -> Tensor:
    """y: (B,) with each entry replaced by `null_label` with probability `p_uncond`."""
    if p_uncond <= 0:
        return y
    drop = torch.rand(y.shape, device=y.device, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, null_label), y)


def takes_guidance(model: object) -> bool:
    """Whether `model` takes γ as an input (distilled guidance, Meng et al. 2023: a student of
    `distill.guidance`, `model.guidance_embedding=true`), so that its guided output is one call."""
    return bool(getattr(model, "takes_guidance", False))


def check_guide_pairing(
    guide: object,
    guide_sigmas: Sequence[float],
    network: object,
    sigmas: Sequence[float],
    *,
    key: str,
    model: str,
    objectives: tuple[str, str] | None = None,
) -> None:
    """A one-line ConfigError naming `key` unless `guide` may autoguide `network` (the `model`):
    the two outputs mix at one noise level σ_t (Karras et al. 2024, eq. 2), so both denoise at
    the same σ_t (T, schedule and, for `objectives` (guide's, model's), path), and neither
    takes γ as an input."""
    if takes_guidance(guide):
        raise ConfigError(
            f"{key} takes γ as an input (a student of distilled guidance): guide with a model "
            "trained as usual"
        )
    if takes_guidance(network):
        raise ConfigError(
            f"{key} mixes two networks' outputs, but the {model} takes γ as an input (a student "
            f"of distilled guidance) and guides itself in one call: drop {key}"
        )
    if list(guide_sigmas) == list(sigmas):
        return
    if objectives is not None and objectives[0] != objectives[1]:
        differs = f"diffusion.objective={objectives[0]} against {objectives[1]}"
    elif len(guide_sigmas) != len(sigmas):
        differs = f"T = {len(guide_sigmas)} against {len(sigmas)}"
    else:
        differs = "another noise schedule"
    raise ConfigError(
        f"{key} has other noise levels than the {model} ({differs}): guide with a model trained "
        "on the same schedule"
    )


def extrapolated(weak: Tensor, strong: Tensor, scale: float | Tensor) -> Tensor:
    """weak + γ (strong − weak), elementwise with γ broadcast: classifier-free guidance (weak the
    unconditional prediction, Ho & Salimans 2022) and autoguidance (weak a guide's, Karras et al.
    2024, eq. 2). γ = 1 gives `strong`, γ = 0 `weak`."""
    return weak + scale * (strong - weak)


def guided_output(
    model: Network,
    x: Tensor,
    t: Tensor,
    y: Tensor | None,
    guidance_scale: float | Tensor | None,
) -> Tensor:
    """The guided network output for x: (B, …) at t: (B,) with labels y: (B,) and γ, one for
    the batch or (B,), one per sample.

    A network that takes γ (`takes_guidance`) gives it in one call, γ as its input. Otherwise
    conditional and unconditional outputs come from one doubled batch; γ = 1 (or None, or no
    labels) needs only the conditional pass. The mix is linear: it holds for ε, x₀ and v alike.
    """
    per_sample = isinstance(guidance_scale, Tensor)
    if y is None or guidance_scale is None or (not per_sample and guidance_scale == 1.0):
        return model(x, t, y)
    if takes_guidance(model):
        scales = torch.as_tensor(guidance_scale, dtype=torch.float32, device=x.device)
        return cast(GuidedNetwork, model)(x, t, y, guidance=scales.expand(x.shape[0]))
    option = "guidance_scale" if per_sample else f"guidance_scale={guidance_scale}"
    null_label = require_conditional(getattr(model, "num_classes", None), option)
    labels = torch.cat([y, torch.full_like(y, null_label)])
    cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), labels).chunk(2)
    if isinstance(guidance_scale, Tensor):
        return extrapolated(uncond, cond, shaped(guidance_scale.to(cond.dtype), cond))
    return extrapolated(uncond, cond, guidance_scale)


def checked_interval(
    interval: Sequence[float] | None, key: str = "sampler.guidance_interval"
) -> tuple[float, float] | None:
    """The noise levels (σ_lo, σ_hi] where guidance applies (Kynkäänniemi et al. 2024, "Applying
    Guidance in a Limited Interval"), or a ConfigError naming `key`. Each σ ≥ 0 is declared
    where the interval is taken (`Denoiser`); here, two in increasing order."""
    if interval is None:
        return None
    values = tuple(float(v) for v in interval)
    if len(values) != 2 or not values[0] < values[1]:
        raise ConfigError(
            f"{key}={list(interval)} must be [sigma_low, sigma_high] with "
            "sigma_low < sigma_high (noise levels σ = √((1−ᾱ)/ᾱ)), or null for every step"
        )
    return values


def balanced_labels(num_samples: int, num_classes: int) -> Tensor:
    """(N,) labels 0,0,…,1,1,…: class counts differ by at most one, sorted by class."""
    return torch.arange(int(num_samples)) * int(num_classes) // int(num_samples)


def require_conditional(num_classes: int | None, option: str) -> int:
    """`num_classes`, or a ConfigError saying that `option` needs a conditional model."""
    if num_classes is None:
        raise ConfigError(
            f"{option} needs a conditional checkpoint but this model is unconditional "
            "(model.num_classes=null); drop it or train with model=unet_cond"
        )
    return num_classes


def check_labels(labels: Tensor, num_classes: int | None) -> None:
    """A ConfigError unless every label is a real class of a conditional model."""
    num_classes = require_conditional(num_classes, "labels")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(
            f"labels must lie in [0, {num_classes}); got {sorted(set(labels.tolist()))}"
        )
