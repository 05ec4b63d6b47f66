"""The LightningModule: a denoising network, its noise schedule and the training objective."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from ddpm_lightning.components import build, component_settings
from ddpm_lightning.components.build import check_optimizer
from ddpm_lightning.diffusion.denoiser import Denoiser, denoiser_options
from ddpm_lightning.diffusion.flow import check_pairing
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion
from ddpm_lightning.diffusion.guidance import balanced_labels, check_labels, drop_labels
from ddpm_lightning.diffusion.samplers import Sampler, StepCallback
from ddpm_lightning.errors import ConfigError, DDPMError
from ddpm_lightning.settings import Range, checked


class NonFiniteLossError(DDPMError, FloatingPointError):
    """The training loss became NaN or infinite."""


def warmup_cosine(step: int, warmup_steps: int, total_steps: float, cosine_decay: bool) -> float:
    """LR factor: linear warm-up over `warmup_steps`, then constant or cosine decay to 0 at
    `total_steps` (infinite: no decay yet), and 0 after it."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine_decay:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1))
    return 0.5 * (1 + math.cos(math.pi * progress))


FAST_PATH_KEYS = ("channels_last", "compile")


def split_fast_paths(model: Any) -> tuple[dict[str, Any], dict[str, bool]]:
    """The model's named settings without the `model.channels_last` / `model.compile`
    switches, and the switches: False when absent, as in the shipped configs and in every
    checkpoint."""
    model = component_settings("model", model)
    flags = {key: model.pop(key, False) for key in FAST_PATH_KEYS}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"model.{key}={value!r} must be true or false")
    return model, flags


@checked("diffusion")
def label_dropout(
    # Conditional models: share of labels swapped for the null label, so one network also
    # learns the unconditional model that classifier-free guidance needs.
    p_uncond: Annotated[float, Range(ge=0, lt=1)] = 0.1,
) -> float:
    """The label dropout p_uncond of conditional training (Ho & Salimans 2022)."""
    return float(p_uncond)


class DiffusionModule(L.LightningModule):
    """Trains `model(x_t, t, y)` to denoise under `schedule` with `diffusion.objective`.

    All arguments are plain values (components' named settings such as `{name: unet, …}`, the
    data shape and dataset name), saved as hyperparameters with the names, so a checkpoint
    alone rebuilds the module and never names code (`ddpm_lightning.components`).
    `model.channels_last` and `model.compile` only change how the network runs: they are left
    out of the saved hyperparameters, so resuming or loading never depends on them.
    """

    def __init__(
        self,
        model: dict[str, Any],
        schedule: dict[str, Any],
        diffusion: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        lr_schedule: dict[str, Any] | None = None,
        data_shape: tuple[int, ...] = (1, 32, 32),
        dataset: str | None = None,
        dataset_record: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        schedule = component_settings("schedule", schedule)
        self.hparams["schedule"] = schedule
        if optimizer is not None:
            optimizer = component_settings("optimizer", optimizer)
            check_optimizer(optimizer["name"], optimizer, "optimizer")
            self.hparams["optimizer"] = optimizer
        optimizer = optimizer or {"name": "adam", "lr": 2e-4}
        self.optimizer_config = optimizer
        self.lr_schedule = {"warmup_steps": 0, "cosine_decay": False, **(lr_schedule or {})}
        self.data_shape = tuple(data_shape)
        # The schedule first: a bad schedule.num_timesteps is named as the user wrote it, not
        # as the model's copy of it.
        noise_schedule = build("schedule", schedule)
        model, self.fast_paths = split_fast_paths(model)
        self.hparams["model"] = model
        self.model = build("model", model)
        self.model.check_input_shape(self.data_shape)
        self.apply_fast_paths()
        if not self.fast_paths["compile"]:
            # The model summary's FLOPs and tensor sizes (skipped when compiled: it would
            # compile an extra graph for batch size 1).
            self.example_input_array = self.example_input()
        diffusion = dict(diffusion or {})
        dropout = {"p_uncond": diffusion.pop("p_uncond")} if "p_uncond" in diffusion else {}
        self.p_uncond = label_dropout(**dropout)
        self.diffusion = GaussianDiffusion(noise_schedule, **diffusion)
        # The objective is recorded even when left to its default: files never make it a guess.
        self.hparams["diffusion"] = {
            **dict(self.hparams["diffusion"] or {}),
            "objective": self.diffusion.objective.value,
        }
        # A weaker model that sampling guides away from (`guided_by`); never trained or saved.
        self.guide: DiffusionModule | None = None
        embedded = model.get("num_timesteps")
        steps = self.diffusion.schedule.num_timesteps
        if embedded is not None and embedded != steps:
            raise ConfigError(
                f"model.num_timesteps={embedded} but schedule.num_timesteps={steps}: the network "
                "embeds the schedule's timesteps; set them equal"
            )

    def apply_fast_paths(self) -> None:
        """channels_last weights (NHWC convolutions) and the compiled network, as the model
        config asks."""
        if self.fast_paths["channels_last"]:
            if len(self.data_shape) != 3:
                raise ConfigError(
                    f"model.channels_last=true needs images (C, H, W) but the data gives shape "
                    f"{self.data_shape}; drop the +model.channels_last=true override"
                )
            self.model.to(memory_format=torch.channels_last)
        if self.fast_paths["compile"]:
            self.compile_network()

    def compile_network(self) -> None:
        """Compiles the network in place (`nn.Module.compile`), which keeps the state_dict keys,
        so checkpoints stay interchangeable with eager runs."""
        self.model.compile()
        self.fast_paths["compile"] = True

    def to_memory_format(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) in channels_last layout when `model.channels_last` is on, else x."""
        if self.fast_paths["channels_last"] and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def num_classes(self) -> int | None:
        """Number of classes of a conditional model (its null label's index); None otherwise."""
        return getattr(self.model, "num_classes", None)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The network's prediction for x_t: (B, C, H, W) at t: (B,)."""
        return self.model(x_t, t, y)

    def denoiser(self, **settings: Any) -> Denoiser:
        """This network as samplers see it: its schedule and objective, with the sampler
        settings clip_x0, guidance_scale and guidance_interval (`Denoiser`), guided away from
        `guide` when there is one."""
        diffusion = self.diffusion
        guide = None if self.guide is None else self.guide.denoiser(clip_x0=False, guidance_scale=1)
        return Denoiser(
            self.model, diffusion.schedule, diffusion.objective.value, **settings, guide=guide
        )

    def make_sampler(self, factory: Callable[..., Sampler], **kwargs: Any) -> Sampler:
        """A sampler from `factory` (e.g. a `_partial_` config) and `kwargs` for this schedule,
        with `denoiser` this network wrapped with the settings that are the denoiser's
        (clip_x0, guidance_scale, guidance_interval; `denoiser_options`).

        Guidance defaults to DEFAULT_GUIDANCE_SCALE for conditional models and is refused for
        unconditional ones, which keep no guidance interval. A sampler of the other path (a
        flow sampler for an ᾱ-path model, or the reverse) is refused here, before any drawing.
        """
        factory, options, denoising = denoiser_options(factory, kwargs)
        denoiser = self.denoiser(**denoising)
        try:
            sampler = factory(schedule=self.diffusion.schedule, **options)
        except TypeError as exc:
            name = getattr(getattr(factory, "func", factory), "__name__", "the sampler")
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(
                f"sampler: {name} does not take that setting ({reason}); drop it or pick a "
                "sampler that takes it"
            ) from None
        check_pairing(sampler.name, sampler.flow, self.diffusion.objective.value)
        sampler.denoiser = denoiser
        return sampler

    def sample_labels(self, num_samples: int, labels: Tensor | None = None) -> Tensor | None:
        """`labels` checked, or an equal share of every class for conditional models, or None."""
        if labels is None:
            if self.num_classes is None:
                return None
            return balanced_labels(num_samples, self.num_classes)
        labels = torch.as_tensor(labels, dtype=torch.long)
        check_labels(labels, self.num_classes)
        return labels

    def generate(
        self,
        sampler: Sampler,
        num_samples: int,
        seed: int,
        callback: StepCallback | None = None,
        labels: Tensor | None = None,
        noise: Tensor | None = None,
        indices: Iterable[int] | None = None,
    ) -> Tensor:
        """`num_samples` samples (N, *data_shape) in [-1, 1], reproducible from `seed`.

        labels: (N,) classes for conditional models (default: `sample_labels`); noise: x_T.
        indices: which samples of the run these are (default 0 … N−1); each sample's noise
        depends on (seed, index) alone, so a run split over processes draws the same images.
        """
        shape = (int(num_samples), *self.data_shape)
        y = self.sample_labels(num_samples, labels)
        if y is not None and len(y) != shape[0]:
            raise ConfigError(f"{len(y)} labels given for {shape[0]} samples")
        if sampler.denoiser is None:
            raise ValueError("generate needs a sampler from make_sampler (it sets its denoiser)")
        return sampler.sample(
            sampler.denoiser,
            shape,
            seed=int(seed),
            indices=indices,
            y=None if y is None else y.to(self.device),
            callback=callback,
            noise=noise,
        )

    def example_input(
        self, device: torch.device | str = "cpu"
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """One zero input: x (1, *data_shape), t (1,) and, for conditional models, y (1,)."""
        t = torch.zeros(1, dtype=torch.long, device=device)
        y = None if self.num_classes is None else torch.zeros_like(t)
        return torch.zeros((1, *self.data_shape), device=device), t, y

    def training_flops_per_image(self) -> int:
        """FLOPs of one image's forward + backward pass (torch.utils.flop_counter).

        Runs `forward` eagerly, so a compiled model is not compiled again for batch size 1.
        """
        x, t, y = self.example_input(self.device)
        x = self.to_memory_format(x)
        with FlopCounterMode(display=False) as counter:
            self.model.forward(x, t, y).sum().backward()
        self.model.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    def on_fit_start(self) -> None:
        """Sets `flops_per_batch`, from which Lightning's ThroughputMonitor reports FLOP/s, and
        checks that a conditional model's data has no label beyond its classes."""
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning
        if self.num_classes is not None:
            for split in getattr(datamodule, "splits", {}).values():
                labels = split.labels
                if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                    raise ConfigError(
                        f"the data has labels in [{int(labels.min())}, {int(labels.max())}] "
                        f"but model.num_classes={self.num_classes}: set model.num_classes to "
                        "the number of classes, or check the label files"
                    )
        batch_size = getattr(datamodule, "batch_size", None)
        if batch_size:
            self.flops_per_batch = self.training_flops_per_image() * int(batch_size)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the torch random states, so a resumed run draws the same t, ε and batch order
        as an uninterrupted one."""
        checkpoint["rng_states"] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["cpu"])
        if "cuda" in states and torch.cuda.device_count() == len(states["cuda"]):
            torch.cuda.set_rng_state_all(states["cuda"])

    def labels(self, y: Tensor) -> Tensor | None:
        """Labels for conditional models, None for unconditional ones."""
        return y if self.num_classes is not None else None

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        x = self.to_memory_format(x)
        labels = (
            None if self.num_classes is None else drop_labels(y, self.p_uncond, self.num_classes)
        )
        loss = self.diffusion.training_loss(self.model, x, labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}, before "
                "the update: stopped, the last checkpoint is kept; lower optimizer.lr or check "
                "the data"
            )
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def evaluation_loss(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Loss with t and ε from a generator seeded by `batch_idx`: comparable across epochs."""
        x, y = batch
        x = self.to_memory_format(x)
        generator = torch.Generator(device=x.device).manual_seed(batch_idx)
        return self.diffusion.training_loss(self.model, x, self.labels(y), generator=generator)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.evaluation_loss(batch, batch_idx), prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("test/loss", self.evaluation_loss(batch, batch_idx), sync_dist=True)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """The optimizer with warm-up and cosine decay over `planned_steps`: the epoch plan, or
        the steps that fit `trainer.max_time` once `TimeBudget` re-plans them."""
        optimizer = build("optimizer", self.optimizer_config)(params=self.parameters())
        self.planned_steps = self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(
                step,
                int(self.lr_schedule["warmup_steps"]),
                self.planned_steps,
                bool(self.lr_schedule["cosine_decay"]),
            ),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


# The arguments that rebuild a DiffusionModule: what checkpoints and model folders store.
MODULE_KEYS = tuple(inspect.signature(DiffusionModule.__init__).parameters)[1:]
