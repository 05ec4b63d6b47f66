"""`python -m ddpm_lightning.tools.bench`: training and sampling throughput of the UNets.

Training: for `model=unet` (d=16), `model=unet_cond` (the same with class labels),
`model=unet_large` (d=32) and `model=unet_mp` (EDM2's magnitude-preserving UNet) on random
in-memory images (N, 1, 32, 32), and `model=unet_64` on colour ones (N, 3, 64, 64), our
Lightning loop and a bare PyTorch loop (same model, data tensors, optimizer and loss) alternate
`--repeats` times; the table gives median and min-max images/s, the framework overhead
1 − Lightning/bare, the share of Lightning's step time spent between steps (data wait), FLOPs
per image, the model FLOP utilisation (MFU) against this machine's dense matmul rate measured in
the same run, and peak memory. `--precision` applies to every loop, `--channels-last` and
`--compile` to our models. Optional peers (diffusers, lucidrains) run in the bare loop when
installed. Sampling: each sampler with the default UNet; the sampler's overhead is the share of
sampling time spent outside the model's forward pass.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from ddpm_lightning.config import compose_config
from ddpm_lightning.data.images import InMemoryDataModule, TensorBatches
from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion, Network
from ddpm_lightning.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, Sampler
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.errors import ConfigError, report_errors
from ddpm_lightning.models import UNet
from ddpm_lightning.models.data_fit import fitted_to_data
from ddpm_lightning.training.module import FAST_PATH_KEYS, DiffusionModule

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
SECTIONS = ("training", "peers", "sampling")
# Trainer precision → the dtypes it computes in; MFU is against the fastest one's matmul rate
# (a CPU without bf16 instructions multiplies bfloat16 far slower than float32).
PRECISIONS = {"32-true": ("float32",), "bf16-mixed": ("bfloat16", "float32")}
TRAINING_MODELS = {
    "unet": "default UNet (d=16, (1,2,3))",
    "unet_cond": "default UNet with 10 class labels",
    "unet_large": "d=32, (1,2,3)",
    "unet_64": "the UNet for 64 px colour images",
    "unet_mp": "magnitude-preserving UNet (Karras et al. 2024)",
}
# The images (C, H, W) each training row trains on; the network's channels follow them
# (`fitted_to_data`), as they follow `data=` in training.
TRAINING_SHAPES = {
    "unet": (1, 32, 32),
    "unet_cond": (1, 32, 32),
    "unet_large": (1, 32, 32),
    "unet_64": (3, 64, 64),
    "unet_mp": (1, 32, 32),
}
# diffusers' UNet2DModel exactly as `model=diffusers_unet` trains it (widths 16, 32, 48, one
# ResNet block per level and side, attention with 4 heads of 12 only in the middle, GroupNorm(8)):
# 425,281 parameters with diffusers 0.42, 5.4% more than the default UNet's 403,409 (T=100).
DIFFUSERS_CONFIG = "model=diffusers_unet (conf/model/diffusers_unet.yaml)"
# lucidrains' Unet exactly as `model=lucidrains_unet` trains it, at the default UNet's widths: it
# adds linear attention at every level, so it is larger (544,049 parameters with version 2.3.4).
LUCIDRAINS_CONFIG = "model=lucidrains_unet (conf/model/lucidrains_unet.yaml)"


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run (the defaults, or `--quick`'s tiny ones)."""

    batch_size: int = 128
    warmup_steps: int = 5
    steps: int = 20
    repeats: int = 3
    num_timesteps: int = 100
    sampling_batch_size: int = 256
    matmul_size: int = 2048
    channels_last: bool = False
    compile: bool = False
    precision: Literal["32-true", "bf16-mixed"] = "32-true"  # the keys of PRECISIONS
    models: tuple[str, ...] = tuple(TRAINING_MODELS)

    def __post_init__(self) -> None:
        unknown = set(self.models) - set(TRAINING_MODELS)
        if unknown or not self.models:
            raise ConfigError(f"--models={list(self.models)}: choose from {list(TRAINING_MODELS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision={self.precision} is not one of {list(PRECISIONS)}")
        for name in ("batch_size", "warmup_steps", "steps", "repeats", "sampling_batch_size"):
            if getattr(self, name) < 1:
                option = "--" + name.replace("_", "-")
                raise ConfigError(f"{option}={getattr(self, name)} must be at least 1")

    @classmethod
    def quick(cls, **changes: Any) -> Settings:
        """Seconds-long sizes, to check that the benchmark runs (its numbers mean little)."""
        sizes = {"batch_size": 4, "warmup_steps": 1, "steps": 2, "repeats": 1}
        sampling = {"num_timesteps": 5, "sampling_batch_size": 2, "matmul_size": 256}
        return cls(**{**sizes, **sampling, **changes})


class TimedModel:
    """Wraps a model, adding up the seconds spent in its forward pass."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device, self.seconds = model, device, 0.0

    def sync(self) -> None:
        synchronize(self.device)

    def __call__(self, x, t, y=None):
        self.sync()
        start = time.perf_counter()
        out = self.model(x, t, y)
        self.sync()
        self.seconds += time.perf_counter() - start
        return out


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so perf_counter brackets it; nothing to do on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def time_sampler(sampler: Sampler, model: TimedModel, batch_size: int) -> dict[str, float]:
    """One timed run of an ε-prediction `model`: images/s and the share of time outside it."""
    denoiser = Denoiser(model, sampler.schedule, "eps")
    model.seconds = 0.0
    model.sync()
    start = time.perf_counter()
    sampler.sample(denoiser, (batch_size, 1, 32, 32))
    model.sync()
    total = time.perf_counter() - start
    return {"images_per_s": batch_size / total, "overhead": (total - model.seconds) / total}


def bench_sampling(
    num_timesteps: int, batch_size: int, repeats: int, device: torch.device
) -> list[dict]:
    """Rows for DDPM (all T steps), DDIM-50 and DPM-Solver++-20 with the default UNet."""
    schedule = NoiseSchedule("cosine", num_timesteps).to(device)
    model = UNet(num_timesteps=num_timesteps).to(device).eval()
    options: dict[str, Any] = {"batch_size": batch_size, "progress": False}
    ddim_steps, dpm_steps = min(50, num_timesteps), min(20, num_timesteps)
    samplers = {
        f"ddpm-{num_timesteps}": DDPMSampler(schedule, **options),
        f"ddim-{ddim_steps}": DDIMSampler(schedule, num_steps=ddim_steps, **options),
        f"dpm_solver-{dpm_steps}": DPMSolverSampler(schedule, num_steps=dpm_steps, **options),
    }
    timed = TimedModel(model, device)
    time_sampler(samplers[f"dpm_solver-{dpm_steps}"], timed, min(batch_size, 16))  # warm-up
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in samplers}
    for _ in range(repeats):
        for name, sampler in samplers.items():
            runs[name].append(time_sampler(sampler, timed, batch_size))
    rows = []
    for name, results in runs.items():
        speed = summary([r["images_per_s"] for r in results])
        rows.append(
            {
                "sampler": name,
                "steps": len(samplers[name].steps()),
                "images_per_s": speed,
                "overhead": summary([r["overhead"] for r in results]),
                "seconds_for_10k": 10_000 / speed["median"],
            }
        )
    return rows


def markdown(rows: list[dict], header: str) -> str:
    """The sampling table under `header`."""
    lines = [
        header,
        "",
        "| sampler | steps | images/s (median, min-max) | sampler overhead | "
        "time for 10k samples |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        s, o = row["images_per_s"], row["overhead"]
        lines.append(
            f"| {row['sampler']} | {row['steps']} "
            f"| {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"
            f" | {100 * o['median']:.2f}% (max {100 * o['max']:.2f}%) "
            f"| {row['seconds_for_10k'] / 60:.1f} min |"
        )
    return "\n".join(lines)


class RandomImages(InMemoryDataModule):
    """Random images (N, *shape) in [-1, 1] with labels (N,), served like MNIST's batches;
    N is set so the training split holds at least `num_train` images."""

    def __init__(
        self,
        num_train: int,
        batch_size: int,
        seed: int = 0,
        shape: tuple[int, ...] = (1, 32, 32),
    ):
        super().__init__(batch_size=batch_size)
        self.num_images = math.ceil(num_train / (1 - self.val_fraction)) + 1
        self.seed = seed
        self.shape = shape

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.shape

    def load(self) -> tuple[TensorBatches, TensorBatches]:
        generator = torch.Generator().manual_seed(self.seed)
        images = torch.rand((self.num_images, *self.data_shape), generator=generator) * 2 - 1
        labels = torch.randint(0, 10, (self.num_images,), generator=generator)
        test = TensorBatches(images[: self.batch_size], labels[: self.batch_size])
        return TensorBatches(images, labels), test


class StepTimer(L.Callback):
    """perf_counter at every training batch's start and end (after a GPU sync)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        synchronize(self.device)
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(self.device)
        self.ends.append(time.perf_counter())

    def result(self, warmup_steps: int, batch_size: int) -> dict[str, float]:
        """images/s over the steps after `warmup_steps`, and the share of that time spent
        between one step's end and the next one's start (fetching the batch, loop hooks)."""
        total = self.ends[-1] - self.ends[warmup_steps - 1]
        waits = [self.starts[i] - self.ends[i - 1] for i in range(warmup_steps, len(self.ends))]
        steps = len(self.ends) - warmup_steps
        return {"images_per_s": steps * batch_size / total, "data_wait": sum(waits) / total}


def build_training_module(name: str, settings: Settings) -> DiffusionModule:
    """`model=<name>` with the training defaults (cosine schedule, Adam 2e-4, ε objective),
    fitted to its row's images (`TRAINING_SHAPES`)."""
    fast_paths = [f"++model.{key}=true" for key in FAST_PATH_KEYS if getattr(settings, key)]
    overrides = [f"model={name}", f"schedule.num_timesteps={settings.num_timesteps}"]
    cfg = compose_config("train", overrides + fast_paths)

    def plain(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=True)

    shape = TRAINING_SHAPES[name]
    return DiffusionModule(
        model=fitted_to_data(plain(cfg.model), shape),
        schedule=plain(cfg.schedule),
        diffusion=plain(cfg.diffusion),
        optimizer=plain(cfg.optimizer),
        data_shape=shape,
    )


def lightning_run(
    module: DiffusionModule, data: RandomImages, settings: Settings, device: torch.device
) -> dict[str, float]:
    """Fit `warmup_steps + steps` batches with a bare Trainer; time the steps after warm-up."""
    timer = StepTimer(device)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=settings.warmup_steps + settings.steps,
        precision=settings.precision,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    return timer.result(settings.warmup_steps, settings.batch_size)


def batches(data: TensorBatches, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled whole batches (B, C, H, W), (B,) of `data`, cut as the datamodule cuts them."""
    order = torch.randperm(len(data))
    for index in order.split(batch_size):
        yield data.batch(index.tolist())


def bare_run(
    model: Network,
    parameters: list[torch.nn.Parameter],
    diffusion: GaussianDiffusion,
    data: TensorBatches,
    settings: Settings,
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    conditional: bool = False,
) -> dict[str, float]:
    """A plain loop of training_loss (under bf16 autocast for bf16-mixed, as Lightning does),
    backward and Adam (lr 2e-4) over `warmup_steps + steps` batches; images/s over the steps
    after the warm-up. `prepare` sets x's memory format; a conditional model gets the labels."""
    optimizer = torch.optim.Adam(parameters, lr=2e-4)
    device = data.inputs.device
    bf16 = settings.precision == "bf16-mixed"
    start = 0.0
    for step, (x, y) in enumerate(batches(data, settings.batch_size)):
        if step == settings.warmup_steps:
            synchronize(device)
            start = time.perf_counter()
        if step == settings.warmup_steps + settings.steps:
            break
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion.training_loss(model, prepare(x), y if conditional else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return {"images_per_s": settings.steps * settings.batch_size / (time.perf_counter() - start)}


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak (CUDA's allocator counter, or Linux's VmHWM); False if it cannot be."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def current_memory_mb(device: torch.device) -> float:
    """CUDA memory allocated now, or the process's resident set now (VmRSS); 0 if unknown."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return proc_status_mb("VmRSS")


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (e.g. VmHWM, the peak resident set) in MiB; 0 if
    there is no /proc."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set (VmHWM, ru_maxrss)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if proc_status_mb("VmHWM"):
        return proc_status_mb("VmHWM")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, else KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def matmul_gflops(device: torch.device, size: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best rate of `repeats` timed (size × size) @ (size × size) torch.mm calls, in GFLOP/s."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def matmul_rates(device: torch.device, size: int, bfloat16: bool) -> dict[str, float]:
    """Dense matmul GFLOP/s in float32 (TF32 as PyTorch defaults: off), and in bfloat16 on a
    GPU or when asked."""
    rates = {"float32": matmul_gflops(device, size, torch.float32)}
    if bfloat16 or device.type == "cuda":
        rates["bfloat16"] = matmul_gflops(device, size, torch.bfloat16)
    return rates


def efficiency(images_per_s: float, flops_per_image: int, matmul_rate: float) -> dict:
    """Achieved GFLOP/s at `images_per_s` and its share of the dense matmul rate (MFU)."""
    achieved = images_per_s * flops_per_image / 1e9
    return {"achieved_gflops": achieved, "mfu": achieved / matmul_rate}


def bench_training_model(
    name: str, settings: Settings, device: torch.device, matmul_rate: float
) -> dict:
    """`model=<name>` trained by the Lightning loop and the bare loop, alternating: one row."""
    module = build_training_module(name, settings)
    num_train = (settings.warmup_steps + settings.steps) * settings.batch_size
    data = RandomImages(num_train, settings.batch_size, shape=module.data_shape)
    # The new peak begins before the starting reading, and the peak reported is at least that
    # reading: the resident set can shrink between readings faster than VmHWM records it.
    peak_reset = reset_peak_memory(device)
    start_memory = current_memory_mb(device)
    conditional = module.num_classes is not None
    lightning, bare = [], []
    for _ in range(settings.repeats):
        lightning.append(lightning_run(module, data, settings, device))
        module.to(device)
        train_split = data.splits["train"].to(device)
        prepare = module.to_memory_format
        parameters = list(module.model.parameters())
        bare.append(
            bare_run(
                module.model,
                parameters,
                module.diffusion,
                train_split,
                settings,
                prepare,
                conditional,
            )
        )
    memory = max(peak_memory_mb(device), start_memory)
    flops = module.training_flops_per_image()
    speed = summary([run["images_per_s"] for run in lightning])
    bare_speed = summary([run["images_per_s"] for run in bare])
    return {
        "model": name,
        "description": TRAINING_MODELS[name],
        "data_shape": list(module.data_shape),
        "parameters": sum(p.numel() for p in module.model.parameters()),
        "batch_size": settings.batch_size,
        "lightning": {
            "images_per_s": speed,
            "data_wait": summary([run["data_wait"] for run in lightning]),
            **efficiency(speed["median"], flops, matmul_rate),
        },
        "bare": {
            "images_per_s": bare_speed,
            **efficiency(bare_speed["median"], flops, matmul_rate),
        },
        "framework_overhead": 1 - speed["median"] / bare_speed["median"],
        "gflop_per_image": flops / 1e9,
        "peak_memory_mb": memory,
        "start_memory_mb": start_memory,
        "peak_memory_scope": "this model's runs" if peak_reset else "whole process",
    }


class PeerDenoiser(torch.nn.Module):
    """Adapts a peer UNet `net(x, t)` to our `model(x, t, y)` call."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        return self.net(x, t)


def diffusers_unet() -> torch.nn.Module:
    """The network of `model=diffusers_unet` at its defaults."""
    return instantiate(compose_config("train", ["model=diffusers_unet"]).model)


def lucidrains_unet() -> torch.nn.Module:
    """The network of `model=lucidrains_unet` at its defaults."""
    return instantiate(compose_config("train", ["model=lucidrains_unet"]).model)


PEERS = {
    "diffusers UNet2DModel": ("diffusers", diffusers_unet, DIFFUSERS_CONFIG),
    "lucidrains Unet": ("denoising_diffusion_pytorch", lucidrains_unet, LUCIDRAINS_CONFIG),
}


def peer_flops_per_image(model: torch.nn.Module, device: torch.device) -> int:
    """FLOPs of one image's forward + backward pass, counted as for our modules."""
    x = torch.zeros(1, 1, 32, 32, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x, t).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def bench_peer(label: str, settings: Settings, device: torch.device, matmul_rate: float) -> dict:
    """A peer UNet in the bare loop (same data, loss and optimizer), or a row saying why not."""
    package, build, config = PEERS[label]
    row: dict[str, Any] = {"model": label, "config": config}
    if importlib.util.find_spec(package) is None:
        return {**row, "skipped": f"{package} is not installed (optional, not a dependency)"}
    torch.manual_seed(0)
    model = PeerDenoiser(build()).to(device)
    schedule = NoiseSchedule("cosine", settings.num_timesteps).to(device)
    diffusion = GaussianDiffusion(schedule)
    data = RandomImages(
        (settings.warmup_steps + settings.steps) * settings.batch_size, settings.batch_size
    )
    data.setup()
    train_split = data.splits["train"].to(device)
    runs = [
        bare_run(model, list(model.parameters()), diffusion, train_split, settings)
        for _ in range(settings.repeats)
    ]
    flops = peer_flops_per_image(model, device)
    speed = summary([run["images_per_s"] for run in runs])
    parameters = sum(p.numel() for p in model.parameters())
    seed_parameters = sum(p.numel() for p in UNet().parameters())
    return {
        **row,
        "parameters": parameters,
        "parameters_vs_unet": parameters / seed_parameters - 1,
        "data_shape": list(data.data_shape),
        "batch_size": settings.batch_size,
        "bare": {"images_per_s": speed, **efficiency(speed["median"], flops, matmul_rate)},
        "gflop_per_image": flops / 1e9,
    }


def speed_cell(speed: dict[str, float] | None) -> str:
    if speed is None:
        return "–"
    return f"{speed['median']:.1f} ({speed['min']:.1f}-{speed['max']:.1f})"


def training_markdown(rows: list[dict]) -> str:
    """The training table: one row per model, ours first, then the peers (bare loop only)."""
    lines = [
        "| model | images | parameters | batch | Lightning images/s (median, min-max) | "
        "bare images/s (median, min-max) | framework overhead | data wait | GFLOP/image | "
        "GFLOP/s (Lightning / bare) | MFU (Lightning / bare) | peak memory (over start) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['model']} | – | – | – | skipped: {row['skipped']} |" + " – |" * 7)
            continue
        lightning, bare = row.get("lightning"), row["bare"]
        gflops = f"{bare['achieved_gflops']:.1f}"
        mfu = f"{100 * bare['mfu']:.1f}%"
        overhead = wait = memory = "–"
        if lightning is not None:
            gflops = f"{lightning['achieved_gflops']:.1f} / {gflops}"
            mfu = f"{100 * lightning['mfu']:.1f}% / {mfu}"
            overhead = f"{100 * row['framework_overhead']:.1f}%"
            wait = f"{100 * lightning['data_wait']['median']:.2f}%"
            growth = row["peak_memory_mb"] - row["start_memory_mb"]
            memory = f"{row['peak_memory_mb']:.0f} MB (+{growth:.0f})"
        else:
            gflops, mfu = f"– / {gflops}", f"– / {mfu}"
        parameters = f"{row['parameters']:,}"
        if "parameters_vs_unet" in row:
            parameters += f" ({100 * row['parameters_vs_unet']:+.1f}% vs unet)"
        images = "×".join(str(n) for n in row["data_shape"])
        lines.append(
            f"| {row['model']} | {images} | {parameters} | {row['batch_size']} "
            f"| {speed_cell(lightning and lightning['images_per_s'])} "
            f"| {speed_cell(bare['images_per_s'])} | {overhead} | {wait} "
            f"| {row['gflop_per_image']:.3f} | {gflops} | {mfu} | {memory} |"
        )
    return "\n".join(lines)


def machine_header(device: torch.device, matmul: dict[str, float]) -> str:
    """Device, library versions, threads and the measured matmul rates."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rates = ", ".join(f"{dtype} {rate:.0f}" for dtype, rate in matmul.items())
    return (
        f"device: {name}, torch {torch.__version__}, lightning {L.__version__}, "
        f"{torch.get_num_threads()} threads; dense matmul GFLOP/s: {rates}"
    )


def report(results: dict) -> str:
    """The whole markdown report: header, training table, sampling table."""
    s = results["settings"]
    fast = [key for key in FAST_PATH_KEYS if s[key]]
    training = (
        f"## Training: batch {s['batch_size']}, {s['steps']} timed steps after "
        f"{s['warmup_steps']} warm-up, {s['repeats']} repeats, precision {s['precision']}, "
        f"MFU against {results['machine']['mfu_reference_gflops']:.0f} GFLOP/s"
        f"{', ' + ' + '.join(fast) if fast else ''}"
    )
    sampling = (
        f"## Sampling: seed UNet (d=16, (1,2,3)), T={s['num_timesteps']}, "
        f"batch {s['sampling_batch_size']}, {s['repeats']} repeats"
    )
    parts = [results["header"]]
    rows = results.get("training", []) + results.get("peers", [])
    if rows:
        parts += [training, training_markdown(rows)]
    if "sampling" in results:
        parts.append(markdown(results["sampling"], sampling))
    return "\n\n".join(parts) + "\n"


def run_benchmarks(settings: Settings, sections: Sequence[str], device: torch.device) -> dict:
    """Every requested section's rows, with the settings and the machine header."""
    matmul = matmul_rates(device, settings.matmul_size, settings.precision == "bf16-mixed")
    matmul_rate = max(matmul[dtype] for dtype in PRECISIONS[settings.precision])
    results: dict[str, Any] = {
        "header": machine_header(device, matmul),
        "machine": {
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "matmul_gflops": matmul,
            "mfu_reference_gflops": matmul_rate,
        },
        "settings": asdict(settings),
    }
    if "training" in sections:
        results["training"] = [
            bench_training_model(name, settings, device, matmul_rate) for name in settings.models
        ]
    if "peers" in sections:
        results["peers"] = [bench_peer(label, settings, device, matmul_rate) for label in PEERS]
    if "sampling" in sections:
        with torch.inference_mode():
            results["sampling"] = bench_sampling(
                settings.num_timesteps, settings.sampling_batch_size, settings.repeats, device
            )
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--batch-size", type=int, help=f"training ({defaults.batch_size})")
    parser.add_argument("--steps", type=int, help=f"timed training steps ({defaults.steps})")
    parser.add_argument("--warmup-steps", type=int, help=f"untimed ({defaults.warmup_steps})")
    parser.add_argument("--repeats", type=int, help=f"runs of each loop ({defaults.repeats})")
    parser.add_argument("--num-timesteps", type=int, help=f"T ({defaults.num_timesteps})")
    parser.add_argument("--sampling-batch-size", type=int, help=f"({defaults.sampling_batch_size})")
    parser.add_argument(
        "--channels-last", action="store_true", default=None, help="model.channels_last=true"
    )
    parser.add_argument("--compile", action="store_true", default=None, help="model.compile=true")
    parser.add_argument("--precision", choices=PRECISIONS, help="trainer.precision (32-true)")
    parser.add_argument(
        "--models", nargs="+", choices=TRAINING_MODELS, help="training rows (default: all)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="what to run (default: all)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench.json"), help="JSON; the table goes beside (.md)"
    )
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """`Settings()` or `Settings.quick()`, with the options given on the command line."""
    options = {field.name: getattr(args, field.name, None) for field in fields(Settings)}
    given = {name: value for name, value in options.items() if value is not None}
    return Settings.quick(**given) if args.quick else Settings(**given)


@report_errors
def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmarks; print the markdown report, write it (.md) and the JSON to `--out`."""
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lightning_log = logging.getLogger("lightning.pytorch")
    threads, log_level = torch.get_num_threads(), lightning_log.level
    torch.set_num_threads(args.threads or threads)
    lightning_log.setLevel(logging.WARNING)
    try:
        results = run_benchmarks(settings_from(args), args.sections, device)
    finally:
        torch.set_num_threads(threads)
        lightning_log.setLevel(log_level)
    text = report(results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(text)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
