"""`python -m ddpm_lightning.bench`: sampling throughput of each sampler with the seed UNet.

Every row is measured in this process, samplers alternating, `--repeats` times; the table
gives the median and the min-max spread. The sampler's overhead is the share of sampling time
spent outside the model's forward pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ddpm_lightning.models import UNet
from ddpm_lightning.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, Sampler
from ddpm_lightning.schedules import NoiseSchedule


class TimedModel:
    """Wraps a model, adding up the seconds spent in its forward pass."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device, self.seconds = model, device, 0.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, x, t, y=None):
        self.sync()
        start = time.perf_counter()
        out = self.model(x, t, y)
        self.sync()
        self.seconds += time.perf_counter() - start
        return out


def time_sampler(sampler: Sampler, model: TimedModel, batch_size: int) -> dict[str, float]:
    """One timed run: images/s and the share of time outside the model."""
    model.seconds = 0.0
    model.sync()
    start = time.perf_counter()
    sampler.sample(model, (batch_size, 1, 32, 32), generator=torch.Generator(model.device))
    model.sync()
    total = time.perf_counter() - start
    return {"images_per_s": batch_size / total, "overhead": (total - model.seconds) / total}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_sampling(
    num_timesteps: int, batch_size: int, repeats: int, device: torch.device
) -> list[dict]:
    """Rows for DDPM (all T steps), DDIM-50 and DPM-Solver++-20 with the seed UNet."""
    schedule = NoiseSchedule("cosine", num_timesteps).to(device)
    model = UNet(num_timesteps=num_timesteps).to(device).eval()
    options = {"batch_size": batch_size, "progress": False}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-timesteps", type=int, default=100, help="T of the schedule")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    header = (
        f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"seed UNet (d=16, (1,2,3)), T={args.num_timesteps}, batch {args.batch_size}, "
        f"{args.repeats} repeats"
    )
    with torch.inference_mode():
        rows = bench_sampling(args.num_timesteps, args.batch_size, args.repeats, device)
    print(markdown(rows, header))
    args.out.write_text(json.dumps({"header": header, "sampling": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
