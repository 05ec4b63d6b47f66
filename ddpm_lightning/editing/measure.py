"""How well the editing methods do on a model of MNIST or Fashion-MNIST, scored with the
shipped LeNet: inpainting (share of completions classified as the true class, beside the
masked image classified as it is; FLD of the completions; seconds per image), SDEdit at several
strengths (share classified as the input's class; FLD) and DDIM inversion (PSNR of the
reconstruction at several step counts). Each writes rows for a CSV (`write_rows`)."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
from torch import Tensor

from ddpm_lightning.diffusion.samplers import DDIMSampler, Sampler
from ddpm_lightning.editing.inpaint import inpaint
from ddpm_lightning.editing.inversion import invert, psnr, reconstruct
from ddpm_lightning.editing.sampling import EditableModel
from ddpm_lightning.editing.sdedit import sdedit
from ddpm_lightning.evaluation.fld import FLD
from ddpm_lightning.settings import Range, checked

Row = dict[str, Any]


def in_batches(
    edit: Callable[[Tensor, Tensor, range], Tensor], images: Tensor, labels: Tensor, batch_size: int
) -> Tensor:
    """edit(images, labels, indices) over `batch_size` images at a time, the indices telling
    each batch which samples of the run it holds (so the noise does not depend on the split)."""
    parts = []
    for start in range(0, images.shape[0], batch_size):
        end = min(start + batch_size, images.shape[0])
        parts.append(edit(images[start:end], labels[start:end], range(start, end)).cpu())
    return torch.cat(parts)


def scores(fld: FLD, images: Tensor, labels: Tensor) -> dict[str, float]:
    """Share of images the LeNet classifies as `labels`, and their FLD (2 images or more)."""
    device = next(fld.model.parameters()).device
    with torch.no_grad():
        predicted = fld.model(images.to(device)).argmax(1).cpu()
    return {
        "share_correct": float((predicted == labels).float().mean()),
        "fld": fld(images) if images.shape[0] >= 2 else float("nan"),
    }


def model_labels(model: EditableModel, labels: Tensor) -> Tensor | None:
    """The true labels for a conditional model (it is told the class), None otherwise."""
    return labels if model.num_classes is not None else None


def inpaint_rows(
    model: EditableModel,
    images: Tensor,
    labels: Tensor,
    known: Tensor,
    make_sampler: Callable[[], Sampler],
    fld: FLD,
    resample: Sequence[tuple[int, int]],
    seed: int = 0,
    batch_size: int = 256,
) -> list[Row]:
    """One row for the masked images as they are (filled black) and one per (resample_jumps,
    jump_length) of the completions."""
    blacked = known * images - (1 - known)
    rows = [
        {
            "method": "masked input",
            "resample_jumps": 0,
            "jump_length": 0,
            **scores(fld, blacked, labels),
            "seconds_per_image": 0.0,
        }
    ]
    for jumps, length in resample:

        def edit(
            x: Tensor, y: Tensor, order: range, jumps: int = jumps, length: int = length
        ) -> Tensor:
            return inpaint(
                model,
                x,
                known,
                make_sampler(),
                seed=seed,
                labels=model_labels(model, y),
                indices=order,
                resample_jumps=jumps,
                jump_length=length,
            )

        began = time.perf_counter()
        filled = in_batches(edit, images, labels, batch_size)
        seconds = (time.perf_counter() - began) / images.shape[0]
        rows.append(
            {
                "method": "replacement" if jumps == 1 else "repaint",
                "resample_jumps": jumps,
                "jump_length": length,
                **scores(fld, filled, labels),
                "seconds_per_image": seconds,
            }
        )
    return rows


def sdedit_rows(
    model: EditableModel,
    images: Tensor,
    labels: Tensor,
    make_sampler: Callable[[], Sampler],
    fld: FLD,
    strengths: Sequence[float],
    seed: int = 0,
    batch_size: int = 256,
) -> list[Row]:
    """One row per strength: the share of outputs classified as the input's class, and FLD."""
    rows = []
    for strength in strengths:

        def edit(x: Tensor, y: Tensor, order: range, strength: float = strength) -> Tensor:
            return sdedit(
                model,
                x,
                make_sampler(),
                seed=seed,
                labels=model_labels(model, y),
                indices=order,
                strength=strength,
            )

        rows.append(
            {
                "strength": strength,
                **scores(fld, in_batches(edit, images, labels, batch_size), labels),
            }
        )
    return rows


def inversion_rows(
    model: EditableModel,
    images: Tensor,
    labels: Tensor,
    step_counts: Sequence[int],
    batch_size: int = 256,
) -> list[Row]:
    """One row per DDIM step count: the mean and lowest PSNR of image → x_T → image."""
    rows = []
    for steps in step_counts:
        sampler = model.make_sampler(DDIMSampler, num_steps=steps, eta=0.0, progress=False)

        def edit(x: Tensor, y: Tensor, order: range, sampler: Sampler = sampler) -> Tensor:
            told = model_labels(model, y)
            return reconstruct(model, invert(model, x, sampler, labels=told), sampler, told)

        values = psnr(in_batches(edit, images, labels, batch_size), images.cpu())
        rows.append(
            {"num_steps": steps, "psnr_mean": float(values.mean()), "psnr_min": float(values.min())}
        )
    return rows


def write_rows(rows: list[Row], path: Path, context: dict[str, Any]) -> Path:
    """The rows as a CSV at `path`, each with the `context` columns (model, images, seed, …)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = [*rows[0], *context]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**row, **context} for row in rows)
    return path


@checked("edit")
def measurement(
    # Test images scored (the first ones of the test set).
    num_images: Annotated[int, Range(ge=2)] = 1000,
    # SDEdit strengths scored.
    strengths: Annotated[Sequence[float], Range(ge=0, le=1)] = (0.2, 0.4, 0.6, 0.8),
    # DDIM step counts whose inversion PSNR is measured.
    step_counts: Annotated[Sequence[int], Range(ge=1)] = (20, 50, 100),
    # RePaint's passes per stretch for the resampled inpainting row (beside replacement alone).
    resample_jumps: Annotated[int, Range(ge=1)] = 10,
    # Updates per RePaint stretch.
    jump_length: Annotated[int, Range(ge=1)] = 10,
    # Where the CSVs go (editing_inpaint.csv, editing_sdedit.csv, editing_inversion.csv).
    csv_dir: str = "docs/data",
) -> dict[str, Any]:
    """The settings of `edit=measure`, with defaults filled in."""
    return {
        "num_images": int(num_images),
        "strengths": [float(s) for s in strengths],
        "step_counts": [int(n) for n in step_counts],
        "resample": [(1, int(jump_length)), (int(resample_jumps), int(jump_length))],
        "csv_dir": Path(csv_dir),
    }
