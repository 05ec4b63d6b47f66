"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models" (EDM2), §3.1–3.2 and Appendix C.1–C.2): during training, power-function EMAs of a few
widths σ_rel are saved as snapshots every n steps (`PostHocEMA`); after training, the EMA of any
other width is a least-squares combination of those snapshots (`solve_posthoc_coefficients`).

An EMA with β_t = (1 − 1/t)^(γ+1) (`power_decay`) gives θ_τ at step t the weight
∫_{τ−1}^{τ} p_{t,γ}, with the profile p_{t,γ}(τ) = (γ+1) τ^γ / t^(γ+1) on 0 < τ ≤ t (eq. 2), so
matching profiles in L² matches the averages' weights. t counts the track's updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import lightning as L
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.settings import Range, checked
from ddpm_lightning.training.ema import MAX_SIGMA_REL, power_decay, power_gamma

SNAPSHOT_SUFFIX = ".safetensors"


def profile_inner_products(
    t_a: np.ndarray, gamma_a: np.ndarray, t_b: np.ndarray, gamma_b: np.ndarray
) -> np.ndarray:
    """⟨p_{t_a,γ_a}, p_{t_b,γ_b}⟩ = ∫₀^∞ p_a p_b dτ in closed form (EDM2 Algorithm 3, `p_dot_p`):
    (γ_a+1)(γ_b+1) min(t_a,t_b)^(γ_a+γ_b+1) / ((γ_a+γ_b+1) t_a^(γ_a+1) t_b^(γ_b+1)), written
    with ratios so large t do not overflow. Arrays broadcast against each other."""
    t_ratio = t_a / t_b
    t_exp = np.where(t_a < t_b, gamma_b, -gamma_a)
    numerator = (gamma_a + 1) * (gamma_b + 1) * t_ratio**t_exp
    return numerator / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def solve_posthoc_coefficients(
    in_t: Sequence[float],
    in_gamma: Sequence[float],
    out_t: Sequence[float],
    out_gamma: Sequence[float],
) -> np.ndarray:
    """(N_in, N_out) coefficients x minimising ‖Σ_i x_i p_i − p_out‖² for each output profile:
    the normal equations A x = B with A the snapshots' Gram matrix and B their products with
    the outputs (EDM2 Algorithm 3, `solve_posthoc_coefficients`), solved in float64 by lstsq."""
    t_in, g_in = (np.asarray(v, dtype=np.float64).reshape(-1, 1) for v in (in_t, in_gamma))
    t_out, g_out = (np.asarray(v, dtype=np.float64).reshape(1, -1) for v in (out_t, out_gamma))
    gram = profile_inner_products(t_in, g_in, t_in.T, g_in.T)
    cross = profile_inner_products(t_in, g_in, t_out, g_out)
    return np.linalg.lstsq(gram, cross, rcond=None)[0]


@dataclass(frozen=True)
class Snapshot:
    """One saved EMA: its file, width σ_rel (exponent γ), its track's update count t and the
    training step it was taken at."""

    path: Path
    sigma_rel: float
    gamma: float
    num_averaged: int
    step: int


def snapshot_metadata(sigma_rel: float, gamma: float, num_averaged: int, step: int) -> dict:
    """The safetensors metadata (strings only) a snapshot file carries."""
    values = {"sigma_rel": sigma_rel, "gamma": gamma, "num_averaged": num_averaged, "step": step}
    return {key: repr(value) for key, value in values.items()}


def read_snapshot(path: Path) -> Snapshot:
    """The metadata of one snapshot file (no tensors are read); DataError if it has none."""
    try:
        with safe_open(path, framework="pt") as file:
            meta = file.metadata() or {}
        return Snapshot(
            path,
            float(meta["sigma_rel"]),
            float(meta["gamma"]),
            int(meta["num_averaged"]),
            int(meta["step"]),
        )
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path} is not a post-hoc EMA snapshot ({exc})") from None


def read_snapshots(folder: str | Path) -> list[Snapshot]:
    """Every snapshot in `folder` (a run's `ema_snapshots/`), by step then σ_rel."""
    folder = Path(folder)
    paths = sorted(folder.glob(f"*{SNAPSHOT_SUFFIX}")) if folder.is_dir() else []
    if not paths:
        raise ConfigError(
            f"{folder} holds no EMA snapshots: train with callbacks=[default,posthoc_ema] (it "
            "writes them into the run folder's ema_snapshots/)"
        )
    return sorted((read_snapshot(p) for p in paths), key=lambda s: (s.step, s.sigma_rel))


def reconstruct(
    snapshots: Sequence[Snapshot], sigma_rel: float, num_averaged: int | None = None
) -> dict[str, Tensor]:
    """The power-function EMA of width `sigma_rel` after `num_averaged` updates (default: the
    last snapshot's), as Σ_i x_i θ̄_i over the snapshots taken up to then (float64 sums, cast
    back to each tensor's dtype). Returns {parameter name: tensor}."""
    if not 0 < sigma_rel <= MAX_SIGMA_REL:
        raise ConfigError(f"sigma_rel={sigma_rel} must lie in (0, {MAX_SIGMA_REL:.4f}]")
    t_out = num_averaged if num_averaged is not None else max(s.num_averaged for s in snapshots)
    used = [s for s in snapshots if s.num_averaged <= t_out]
    if not used:
        raise ConfigError(f"no snapshot was taken within the first {t_out} updates")
    coefficients = solve_posthoc_coefficients(
        [s.num_averaged for s in used], [s.gamma for s in used], [t_out], [power_gamma(sigma_rel)]
    )[:, 0]
    total: dict[str, Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for snapshot, x in zip(used, coefficients, strict=True):
        with safe_open(snapshot.path, framework="pt") as file:
            for key in file.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = file.get_tensor(key)
                dtypes[key] = tensor.dtype
                total[key] = total.get(key, 0) + float(x) * tensor.double()
    return {key: value.to(dtypes[key]) for key, value in total.items()}


class PostHocEMA(L.Callback):
    """Power-function EMA tracks of widths `sigma_rels`, updated after every optimizer step and
    saved every `every_n_steps` steps (and when training ends) into `dirpath`, one safetensors
    file per track and step: `sigma_rel-0.050_step-0001000.safetensors`, holding the averaged
    parameters (float32, by their `state_dict` names) and its σ_rel, γ, t and step as metadata.

    Separate from `callbacks.ema`, which is what validation and checkpoints use; the tracks
    ride in checkpoints (`state_dict`), so a resumed run continues them.
    """

    @checked("callbacks.posthoc_ema")
    def __init__(
        self,
        # Folder the snapshots go to (the run folder's ema_snapshots/).
        dirpath: str | Path,
        # Widths of the tracks stored; any width up to about twice the largest is rebuilt well.
        sigma_rels: Annotated[Sequence[float], Range(gt=0, le=MAX_SIGMA_REL)] = (0.05, 0.1),
        # Optimizer steps between snapshots.
        every_n_steps: Annotated[int, Range(ge=1)] = 1000,
    ):
        self.dirpath = Path(dirpath)
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(power_gamma(s) for s in self.sigma_rels)
        self.every_n_steps = int(every_n_steps)
        self.names: list[str] = []
        self.tracks: list[list[Tensor]] = []
        self.num_averaged = 0
        self.last_step = -1
        self.saved_step = -1

    def current_weights(self, pl_module: L.LightningModule) -> list[Tensor]:
        return [p.detach() for p in pl_module.parameters()]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.names = [name for name, _ in pl_module.named_parameters()]
        if self.tracks:
            self.tracks = [[a.to(pl_module.device) for a in track] for track in self.tracks]

    def update(self, current: list[Tensor]) -> None:
        """One EMA step of every track: θ̄ ← β θ̄ + (1 − β) θ with β = (1 − 1/t)^(γ+1)."""
        if not self.tracks:
            self.tracks = [[p.float().clone() for p in current] for _ in self.gammas]
        else:
            floats = [p.float() for p in current]
            for gamma, track in zip(self.gammas, self.tracks, strict=True):
                torch._foreach_lerp_(track, floats, 1.0 - power_decay(gamma, self.num_averaged))
        self.num_averaged += 1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if step == self.last_step:
            return
        self.last_step = step
        self.update(self.current_weights(pl_module))
        if step % self.every_n_steps == 0:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.tracks and self.saved_step != trainer.global_step:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """Write one snapshot per track for the current step (process 0 only; none in a
        `fast_dev_run` smoke test, which writes no checkpoints either)."""
        self.saved_step = trainer.global_step
        # Trainer.__init__ sets fast_dev_run (in _init_debugging_flags) without declaring it.
        if not trainer.is_global_zero or trainer.fast_dev_run:  # type: ignore[attr-defined]
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        for sigma_rel, gamma, track in zip(self.sigma_rels, self.gammas, self.tracks, strict=True):
            tensors = {n: a.cpu().contiguous() for n, a in zip(self.names, track, strict=True)}
            meta = snapshot_metadata(sigma_rel, gamma, self.num_averaged, trainer.global_step)
            name = f"sigma_rel-{sigma_rel:.3f}_step-{trainer.global_step:07d}{SNAPSHOT_SUFFIX}"
            save_file(tensors, self.dirpath / name, metadata=meta)

    def state_dict(self) -> dict[str, Any]:
        return {
            "sigma_rels": list(self.sigma_rels),
            "num_averaged": self.num_averaged,
            "last_step": self.last_step,
            "saved_step": self.saved_step,
            "tracks": [[a.cpu() for a in track] for track in self.tracks],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if tuple(state_dict["sigma_rels"]) != self.sigma_rels:
            raise ConfigError(
                f"callbacks.posthoc_ema.sigma_rels={list(self.sigma_rels)} but the checkpoint's "
                f"tracks are {state_dict['sigma_rels']}: resume with the same widths"
            )
        self.num_averaged = int(state_dict["num_averaged"])
        self.last_step = int(state_dict["last_step"])
        self.saved_step = int(state_dict["saved_step"])
        self.tracks = [list(track) for track in state_dict["tracks"]]
