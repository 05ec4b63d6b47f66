"""Checks the commands make before long work: the output folder can be written, and a sampling
request fits in memory and is of a sane size (with an estimate of its time), so a run that
cannot finish fails in a second, not after hours."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from ddpm_lightning.diffusion.samplers import Sampler
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.training.module import DiffusionModule

# More images than any FLD or figure needs (FLD uses 10,000); above it only with force=true.
MAX_SAMPLES = 1_000_000


def probe_folder(folder: Path) -> None:
    """Create `folder` and write and remove a small file in it."""
    probe = folder / f".write-test-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"")
    probe.unlink()


def writable_folder(folder: str | Path, key: str, beside: bool = False) -> Path:
    """Create `folder` and write and remove a small file in it (with `beside`, in its parent
    too, where a command's outputs are written before they are renamed in); one line naming
    `key` when that fails (read-only disk, no permission, a file in the way)."""
    folder = Path(folder)
    place = folder
    try:
        probe_folder(folder)
        if beside:
            place = folder.resolve().parent
            probe_folder(place)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = "" if place == folder else f" in {place}, where its outputs are written first"
        raise ConfigError(
            f"{key}={folder} cannot be written ({reason}{where}); pick another folder"
        ) from None
    return folder


def free_memory(device: torch.device) -> int:
    """Bytes free on `device`: the GPU's free memory, else the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def guided_steps(sampler: Sampler) -> list[int]:
    """The visited timesteps where the sampler's denoiser guides (γ ≠ 1): each runs a doubled
    batch, the guide's call as well, or a distilled-guidance student's call with γ."""
    denoiser = sampler.denoiser
    assert denoiser is not None
    return [t for t in sampler.steps() if denoiser.guidance_scale_at(t) not in (None, 1.0)]


def seconds_per_prediction(module: DiffusionModule, sampler: Sampler, batch: int, t: int) -> float:
    """Wall time of the sampler's denoiser at timestep t on a batch of `batch` (no gradients)."""
    denoiser = sampler.denoiser
    assert denoiser is not None
    x = torch.zeros((batch, *module.data_shape), device=module.device)
    y = (
        None
        if module.num_classes is None
        else torch.zeros(batch, dtype=torch.long, device=x.device)
    )
    with torch.no_grad():
        start = time.perf_counter()
        denoiser.predict(x, t, y)
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return time.perf_counter() - start


def seconds_per_chunk_call(
    module: DiffusionModule, sampler: Sampler, batch: int, guided: list[int]
) -> float:
    """Mean wall time of one network call on a chunk of `batch` over the sampler's visited
    timesteps, the `guided` ones (`guided_steps`) timed apart from a plain one (a guided step
    may cost two calls' time)."""
    steps = sampler.steps()
    plain = [t for t in steps if t not in guided]
    total = sum(
        len(group) * seconds_per_prediction(module, sampler, batch, group[0])
        for group in (guided, plain)
        if group
    )
    return total / len(steps)


def human_bytes(size: float) -> str:
    """`size` bytes in MiB, or GiB from 1 GiB up."""
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def human_time(seconds: float) -> str:
    """A duration in seconds, minutes or hours, whichever reads best."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_sampling_request(
    module: DiffusionModule, sampler: Sampler, num_samples: int, force: bool
) -> None:
    """Refuse more than `MAX_SAMPLES` samples, or more than fit in the free memory of the
    model's device, unless `force`; print the network calls, the estimated time (from timing
    one plain and one guided step on a chunk) and the memory the samples take."""
    if num_samples > MAX_SAMPLES and not force:
        raise ConfigError(
            f"num_samples={num_samples} is above {MAX_SAMPLES:,}; pass force=true to sample "
            "that many anyway"
        )
    needed = num_samples * math.prod(module.data_shape) * 4
    free = free_memory(module.device)
    if needed > free and not force:
        raise ConfigError(
            f"num_samples={num_samples} needs {human_bytes(needed)} for the samples but "
            f"{human_bytes(free)} are free on {module.device}; sample fewer, or pass force=true"
        )
    chunk = min(sampler.batch_size, num_samples)
    calls = math.ceil(num_samples / chunk) * sampler.network_evaluations()
    guided = guided_steps(sampler)
    seconds = calls * seconds_per_chunk_call(module, sampler, chunk, guided)
    steps = f" ({len(guided)} of {len(sampler.steps())} steps guided)" if guided else ""
    print(
        f"sampling {num_samples:,} × {sampler.network_evaluations()} network calls{steps} in "
        f"chunks of {chunk}: about {human_time(seconds)} on {module.device}, "
        f"{human_bytes(needed)} of samples"
    )
