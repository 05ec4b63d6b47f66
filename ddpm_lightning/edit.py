"""`python -m ddpm_lightning.edit edit=METHOD pretrained=mnist | ckpt_path=PATH …`: edit images
with a trained model (docs/editing.md).

edit=inpaint image=… mask=…: fill the masked pixels (RePaint's resampling with
edit.resample_jumps); edit=sdedit image=… edit.strength=0.5: redraw from part-way noise;
edit=invert image=…: DDIM inversion to x_T and back, printing the PSNR; edit=interpolate a=…
b=…: images along the slerp between two inverted noises; edit=measure: the LeNet scores of
the methods on the test set, as CSVs. Outputs (in `out_dir`): grid.png (inputs above results),
grid_large.png (each image enlarged to at least 64 px), edited.npz (uint8 results, inputs,
labels, metadata), process.gif (x_t and x̂₀ of the edit); invert adds noise.npz; interpolate writes
strip.png and interpolation.gif (each image at least 64 px) and edited.npz.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from ddpm_lightning.components import build, component_settings
from ddpm_lightning.config import hydra_command
from ddpm_lightning.diffusion.flow import require_alpha_path
from ddpm_lightning.diffusion.samplers import Sampler
from ddpm_lightning.editing import (
    inpaint,
    interpolate,
    invert,
    known_mask,
    load_inputs,
    psnr,
    reconstruct,
    sdedit,
)
from ddpm_lightning.editing.images import Inputs
from ddpm_lightning.editing.inpaint import repaint_plan, updates_in
from ddpm_lightning.editing.measure import (
    inpaint_rows,
    inversion_rows,
    measurement,
    sdedit_rows,
    write_rows,
)
from ddpm_lightning.editing.sampling import visited
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluation.fld import FLD
from ddpm_lightning.evaluation.pictures import (
    ReverseProcessRecorder,
    grid,
    to_pil,
    to_uint8,
)
from ddpm_lightning.sharing.pretrained import load_model
from ddpm_lightning.training.drawing import default_device, resolve_checkpoint
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.outputs import Writer, claimed, write_outputs

EDIT_FILES = (
    "grid.png",
    "grid_large.png",
    "edited.npz",
    "process.gif",
    "noise.npz",
    "strip.png",
    "interpolation.gif",
)
# The methods that need deterministic DDIM.
DETERMINISTIC = ("invert", "interpolate")


def loaded_model(cfg: DictConfig) -> DiffusionModule:
    """The model of `pretrained=` or `ckpt_path=` (`last` found), in eval mode on the GPU when
    there is one."""
    pretrained = cfg.get("pretrained")
    ckpt = resolve_checkpoint(
        cfg.get("ckpt_path"), pretrained, cfg.paths.log_dir, cfg.train_task_name
    )
    return load_model(ckpt, pretrained).eval().to(default_device())


def method_settings(cfg: DictConfig) -> dict[str, Any]:
    """`edit.*` without `edit.method`: the method's own settings."""
    settings = OmegaConf.to_container(cfg.edit, resolve=True)
    assert isinstance(settings, dict)
    return {str(k): v for k, v in settings.items() if k != "method"}


def given_labels(cfg: DictConfig, module: DiffusionModule, inputs: Inputs) -> Tensor | None:
    """Labels for a conditional model: `labels=` (one per image, or one for all), else the
    inputs' own (an .npz's or the test set's); None for unconditional models."""
    if module.num_classes is None:
        if cfg.labels is not None:
            raise ConfigError(f"labels={cfg.labels} needs a conditional model; drop it")
        return None
    n = inputs.images.shape[0]
    if cfg.labels is None:
        if inputs.labels is None:
            raise ConfigError(
                f"image={inputs.source} has no labels: give labels=[3] (one per image)"
            )
        return inputs.labels
    labels = list(cfg.labels)
    labels = labels * n if len(labels) == 1 else labels
    if len(labels) != n:
        raise ConfigError(f"labels= gives {len(labels)} labels for {n} images")
    return module.sample_labels(n, torch.tensor(labels))


def before_and_after(inputs: Tensor, results: Tensor, scale: int = 1) -> Image.Image:
    """The inputs' grid above the results' grid, the same images in the same places, each
    image enlarged `scale`×."""
    columns = math.ceil(math.sqrt(results.shape[0]))
    panels = torch.cat([grid(inputs.cpu(), columns), grid(results.cpu(), columns)], dim=1)
    return to_pil(panels, scale)


def picture_outputs(
    inputs: Tensor, results: Tensor, recorder: ReverseProcessRecorder, arrays: dict[str, Any]
) -> dict[str, Writer]:
    """grid.png and grid_large.png (the inputs above the results, at least 64 px an image in
    the large one), edited.npz and process.gif."""
    scale = math.ceil(64 / min(results.shape[-2:]))
    uint8: dict[str, Any] = {
        "images": to_uint8(results).cpu().numpy(),
        "inputs": to_uint8(inputs).cpu().numpy(),
    }
    return {
        "grid.png": before_and_after(inputs, results).save,
        "grid_large.png": before_and_after(inputs, results, scale).save,
        "edited.npz": lambda path: np.savez_compressed(path, **uint8, **arrays),
        "process.gif": lambda path: recorder.save_gif(path, results),
    }


def in_chunks(edit: Callable[[slice], Tensor], count: int, size: int) -> Tensor:
    """edit(slice) over `size` images at a time, joined on the CPU."""
    return torch.cat([edit(slice(i, min(i + size, count))).cpu() for i in range(0, count, size)])


@dataclass
class Job:
    """What every method works with: the config, the model on its device, a sampler factory
    (one fresh sampler per chunk of images) and the recorder of the animation."""

    cfg: DictConfig
    module: DiffusionModule
    new_sampler: Callable[[], Sampler]
    sampler_settings: dict[str, Any]
    device: torch.device

    def inputs(self, spec: str) -> Inputs:
        dataset = self.module.hparams.get("dataset")
        return load_inputs(spec, self.module.data_shape, dataset, self.cfg.paths.data_dir)

    def recorder(self, num_updates: int) -> ReverseProcessRecorder:
        return ReverseProcessRecorder(num_updates, self.cfg.gif_images, self.cfg.gif_frames)


def metadata(job: Job, network_evaluations: int, **extra: Any) -> np.ndarray:
    """What made the outputs, as a JSON string for the .npz: the model, the inputs, the
    method's and the sampler's settings, the network calls per image."""
    cfg = job.cfg
    source = {"pretrained": cfg.pretrained} if cfg.pretrained else {"ckpt_path": cfg.ckpt_path}
    record = {
        "edit": OmegaConf.to_container(cfg.edit, resolve=True),
        **source,
        "image": cfg.image,
        "mask": cfg.mask if cfg.edit.method == "inpaint" else None,
        "seed": int(cfg.seed),
        "sampler": job.sampler_settings,
        "network_evaluations": network_evaluations,
        **extra,
    }
    return np.array(json.dumps(record, default=str))


def interpolation_outputs(job: Job) -> dict[str, Writer]:
    """strip.png, interpolation.gif (there and back) and edited.npz of `edit=interpolate`."""
    ends = [job.inputs(job.cfg[key]) for key in ("a", "b")]
    pair = Inputs(torch.cat([end.images[:1] for end in ends]), None, "a, b")
    if ends[0].labels is not None and ends[1].labels is not None:
        pair = Inputs(pair.images, torch.cat([ends[0].labels[:1], ends[1].labels[:1]]), "a, b")
    labels = given_labels(job.cfg, job.module, pair)
    sampler = job.new_sampler()
    recorder = job.recorder(len(visited(sampler)))
    frames = interpolate(
        job.module,
        pair.images[0].to(job.device),
        pair.images[1].to(job.device),
        sampler,
        labels=None if labels is None else (int(labels[0]), int(labels[1])),
        callback=recorder,
        **method_settings(job.cfg),
    ).cpu()
    scale = math.ceil(64 / min(frames.shape[-2:]))
    pictures = [to_pil(grid(frame[None], 1), scale) for frame in frames]
    evaluations = 2 * len(visited(sampler)) + frames.shape[0] * len(visited(sampler))
    arrays: dict[str, Any] = {
        "images": to_uint8(frames).numpy(),
        "metadata": metadata(job, evaluations),
    }
    return {
        "strip.png": to_pil(grid(frames, nrow=frames.shape[0]), scale).save,
        "interpolation.gif": lambda path: pictures[0].save(
            path,
            save_all=True,
            append_images=pictures[1:] + pictures[-2:0:-1],
            duration=120,
            loop=0,
        ),
        "edited.npz": lambda path: np.savez_compressed(path, **arrays),
    }


def inversion_outputs(job: Job) -> dict[str, Writer]:
    """The files of `edit=invert`: noise.npz and the reconstruction's, its PSNR printed."""
    inputs = job.inputs(job.cfg.image)
    images, count = inputs.images.to(job.device), inputs.images.shape[0]
    labels = given_labels(job.cfg, job.module, inputs)
    sampler = job.new_sampler()
    size, recorder = sampler.batch_size, job.recorder(len(visited(sampler)))

    def labelled(part: slice) -> Tensor | None:
        return None if labels is None else labels[part].to(job.device)

    noise = in_chunks(
        lambda p: invert(job.module, images[p], job.new_sampler(), labels=labelled(p)),
        count,
        size,
    )
    back = in_chunks(
        lambda p: reconstruct(
            job.module, noise[p].to(job.device), job.new_sampler(), labelled(p), recorder
        ),
        count,
        size,
    )
    values = psnr(back, images.cpu())
    print(
        f"reconstruction PSNR: {float(values.mean()):.2f} dB "
        f"(lowest {float(values.min()):.2f} dB) over {count} images"
    )
    record = metadata(job, 2 * len(visited(sampler)), psnr=float(values.mean()))
    outputs = picture_outputs(images, back, recorder, {"psnr": values.numpy(), "metadata": record})
    arrays: dict[str, Any] = {"noise": noise.numpy(), "reconstruction": to_uint8(back).numpy()}
    outputs["noise.npz"] = lambda path: np.savez_compressed(path, **arrays)
    return outputs


def redrawn_outputs(job: Job) -> dict[str, Writer]:
    """The files of `edit=inpaint` and `edit=sdedit`."""
    cfg, settings = job.cfg, method_settings(job.cfg)
    inputs = job.inputs(cfg.image)
    images, count = inputs.images.to(job.device), inputs.images.shape[0]
    labels = given_labels(cfg, job.module, inputs)
    steps = len(visited(job.new_sampler()))
    known, method, updates = None, sdedit, steps
    if cfg.edit.method == "inpaint":
        known = known_mask(cfg.mask, images.shape[-2], images.shape[-1], seed=int(cfg.seed)).to(
            job.device
        )
        method = partial(inpaint, known=known)
        updates = updates_in(
            repaint_plan(steps, settings["resample_jumps"], settings["jump_length"])
        )
    recorder = job.recorder(updates)
    results = in_chunks(
        lambda p: method(
            job.module,
            images[p],
            sampler=job.new_sampler(),
            seed=int(cfg.seed),
            labels=None if labels is None else labels[p].to(job.device),
            indices=range(p.start, p.stop),
            callback=recorder,
            **settings,
        ),
        count,
        job.new_sampler().batch_size,
    )
    arrays: dict[str, Any] = {"metadata": metadata(job, updates)}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    if known is not None:
        arrays["known"] = known.cpu().numpy().astype(np.uint8)
        images = known * images - (1 - known)
    return picture_outputs(images, results, recorder, arrays)


METHOD_OUTPUTS = {
    "inpaint": redrawn_outputs,
    "sdedit": redrawn_outputs,
    "invert": inversion_outputs,
    "interpolate": interpolation_outputs,
}


def run_measure(job: Job) -> dict[str, Path]:
    """`edit=measure`: the three CSVs of `editing.measure` on the first test images."""
    cfg, module = job.cfg, job.module
    plan = measurement(**method_settings(cfg))
    inputs = job.inputs(f"test:0-{plan['num_images']}")
    images, labels = inputs.images.to(job.device), inputs.labels
    assert labels is not None, "test images carry their labels"
    fld = FLD(str(module.hparams.get("dataset")), job.device)
    known = known_mask(cfg.mask, images.shape[-2], images.shape[-1]).to(job.device)
    seed = int(cfg.seed)
    context = {"model": cfg.pretrained or cfg.ckpt_path, "num_images": len(images), "seed": seed}
    sampler = {"sampler": json.dumps(job.sampler_settings)}
    tables = {
        "editing_inpaint.csv": (
            inpaint_rows(
                module, images, labels, known, job.new_sampler, fld, plan["resample"], seed
            ),
            {**context, **sampler, "mask": cfg.mask},
        ),
        "editing_sdedit.csv": (
            sdedit_rows(module, images, labels, job.new_sampler, fld, plan["strengths"], seed),
            {**context, **sampler},
        ),
        "editing_inversion.csv": (
            inversion_rows(module, images, labels, plan["step_counts"]),
            {**context, "sampler": "ddim, eta 0, uniform spacing"},
        ),
    }
    written = {}
    for name, (rows, columns) in tables.items():
        written[name] = write_rows(rows, plan["csv_dir"] / name, columns)
        print(f"wrote {written[name]}")
    return written


def edit(cfg: DictConfig) -> dict[str, Path]:
    """Run `cfg.edit.method` and write its outputs into `cfg.out_dir` (edit=measure: its CSVs
    into `edit.csv_dir`); return the files by name."""
    method = cfg.edit.method
    if method not in (*METHOD_OUTPUTS, "measure"):
        names = ", ".join([*METHOD_OUTPUTS, "measure"])
        raise ConfigError(f"edit.method={method} is unknown; choose one of {names}")
    module = loaded_model(cfg)
    require_alpha_path(
        module.diffusion.objective.value,
        f"edit={method}",
        "no editing method takes it yet; sample it with python -m ddpm_lightning.sample",
    )
    settings = component_settings("sampler", cfg.sampler)
    factory = build("sampler", settings)
    # Inversion and interpolation run DDIM deterministically (η = 0) whatever sampler.eta says.
    fixed = {"eta": 0.0} if method in DETERMINISTIC and settings.get("name") == "ddim" else {}
    job = Job(
        cfg,
        module,
        lambda: module.make_sampler(factory, progress=False, **fixed),
        {**settings, **fixed},
        default_device(),
    )
    if method == "measure":
        return run_measure(job)
    print(f"out_dir: {Path(cfg.out_dir).resolve()}", flush=True)
    with claimed(cfg.out_dir, "edit") as out_dir:
        return write_outputs(out_dir, EDIT_FILES, METHOD_OUTPUTS[method](job))


main = hydra_command("edit", edit)


if __name__ == "__main__":
    main()
