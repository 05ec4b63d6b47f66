"""`python -m ddpm_lightning.export ckpt_path=PATH | pretrained=NAME out_dir=DIR`: a trained
model as a Hugging Face-style model folder (config.json, model.safetensors, README.md model card,
samples.png), optionally pushed to the Hub with `push_to_hub=user/repo`; `format=diffusers`
writes a diffusers DDPMPipeline folder with its card instead (our UNet and diffusers'
UNet2DModel), `format=onnx` the network as model.onnx and what a sampler needs beside it as
model.json. A folder ships the `guide=` model (or the source folder's own guide) as guide/, for
autoguidance; format=onnx writes it as guide.onnx. The files replace the folder's old ones
whole, after the source and the record are read and checked; the shipped model folders only
with `replace_shipped=true`. The cards name no path of the exporting machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from ddpm_lightning.config import hydra_command
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings.overrides import command_overrides
from ddpm_lightning.sharing.diffusers_pipeline import export_pipeline
from ddpm_lightning.sharing.export import (
    Source,
    checkpoint_source,
    export_folder,
    folder_source,
    merge_records,
    run_record,
)
from ddpm_lightning.sharing.folder import build_module, shipped_guide
from ddpm_lightning.sharing.hub import hub_token, push
from ddpm_lightning.sharing.onnx import require_onnx_extra, write_onnx
from ddpm_lightning.sharing.portable import checked_name
from ddpm_lightning.sharing.pretrained import (
    SHIPPED_DIR,
    chosen_folder,
    chosen_guide,
    guide_checkpoint,
    model_folder,
)
from ddpm_lightning.sharing.recommended import guided_by, recommendation
from ddpm_lightning.training.outputs import claimed

FORMATS = ("folder", "diffusers", "onnx")


def pretrained_folder(cfg: DictConfig) -> Path | None:
    """The folder of `pretrained=` (None for `ckpt_path=`), resolved once: a Hub repo id is
    downloaded here. Exactly one of the two must be given."""
    if (cfg.ckpt_path is None) == (cfg.pretrained is None):
        raise ConfigError(
            "pass exactly one of ckpt_path=PATH/last.ckpt and pretrained=NAME|FOLDER|user/repo "
            f"(got ckpt_path={cfg.ckpt_path}, pretrained={cfg.pretrained})"
        )
    return chosen_folder(cfg.ckpt_path, cfg.pretrained)


def source(cfg: DictConfig, folder: Path | None) -> Source:
    """What to export: `ckpt_path`, or the `pretrained=` `folder`."""
    return checkpoint_source(cfg.ckpt_path) if folder is None else folder_source(folder)


def guide_source(cfg: DictConfig, folder: Path | None) -> tuple[Source, str] | None:
    """The guide the folder ships (`chosen_guide`: `guide=`, else the one the `pretrained=`
    `folder` ships) and the name its errors show; None with guide=false or neither."""
    guide = chosen_guide(cfg.guide, folder)
    if guide is None:
        return None
    checkpoint = guide_checkpoint(guide)
    try:
        found = checkpoint_source(checkpoint) if checkpoint else folder_source(model_folder(guide))
    except ConfigError as exc:
        raise ConfigError(f"guide={guide}: {exc}") from None
    return found, guide


def check_shipped(cfg: DictConfig) -> None:
    """Refuse an out_dir among the shipped model folders, which every `pretrained=NAME`
    loads, unless `replace_shipped=true`."""
    out_dir = Path(cfg.out_dir).resolve()
    shipped_dir = SHIPPED_DIR.resolve()
    if (out_dir == shipped_dir or shipped_dir in out_dir.parents) and not cfg.replace_shipped:
        raise ConfigError(
            f"out_dir={cfg.out_dir} is in {SHIPPED_DIR}, the shipped models that pretrained=NAME "
            "loads; pass replace_shipped=true to replace one, or pick another out_dir"
        )


def card_name(cfg: DictConfig) -> str:
    """What the card's examples load: `name`, else `push_to_hub`, else out_dir's own folder
    name (relative: the card never shows where this machine keeps the folder)."""
    if cfg.name:
        return checked_name(cfg.name)
    return str(cfg.push_to_hub or Path(cfg.out_dir).resolve().name)


def exported(cfg: DictConfig, folder: Path | None) -> Source:
    """`source(cfg, folder)` with the run's `record=` and `metrics=` merged into its record."""
    hyper_parameters, state_dict, record = source(cfg, folder)
    found = run_record(
        None if cfg.record is None else Path(cfg.record),
        None if cfg.metrics is None else Path(cfg.metrics),
        None if cfg.calls is None else Path(cfg.calls),
    )
    return hyper_parameters, state_dict, merge_records(record, found)


def unguided(cfg: DictConfig, model: Source, folder: Path | None) -> Source:
    """`model` for a format without a guide: when the `pretrained=` `folder` ships one, without
    the evaluation, which was of the model autoguided (said in one line)."""
    if folder is None or shipped_guide(folder) is None:
        return model
    print(
        f"pretrained={cfg.pretrained} ships a guide, which format={cfg.format} leaves out: its "
        "FLD, measured autoguided, stays out of the card too"
    )
    hyper_parameters, state_dict, record = model
    return hyper_parameters, state_dict, {k: v for k, v in record.items() if k != "evaluation"}


def export(cfg: DictConfig) -> dict[str, Path]:
    """Write the model folder (or, with format=onnx, model.onnx, model.json and a guided
    model's guide.onnx) into
    `cfg.out_dir`, push the folder when asked; return the written files by name. A second
    command into `cfg.out_dir` is refused while this one runs."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format} is not supported; choose one of {list(FORMATS)}")
    if cfg.guide and cfg.format == "diffusers":
        raise ConfigError(
            f"guide={cfg.guide}: diffusers' DDPMPipeline has no place for a guide: drop guide= "
            "or use format=folder or format=onnx"
        )
    print(f"out_dir: {Path(cfg.out_dir).resolve()}", flush=True)
    check_shipped(cfg)
    if cfg.format == "onnx":
        return export_onnx(cfg)
    if int(cfg.num_samples) < 1:
        raise ConfigError(f"num_samples={cfg.num_samples} must be at least 1")
    name = card_name(cfg)
    token = hub_token(cfg.push_to_hub) if cfg.push_to_hub else None
    with claimed(cfg.out_dir, "export") as out_dir:
        folder = pretrained_folder(cfg)
        model = exported(cfg, folder)
        sampler = sampler_config(cfg, (model[0].get("diffusion") or {}).get("objective"))
        num_samples = int(cfg.num_samples) if cfg.samples else 0
        if cfg.format == "diffusers":
            files = export_pipeline(
                out_dir, unguided(cfg, model, folder), sampler, name, num_samples
            )
        else:
            guide, guide_name = guide_source(cfg, folder) or (None, None)
            files = export_folder(out_dir, model, sampler, name, num_samples, guide, guide_name)
        print(f"wrote {', '.join(files)} ({written(files, cfg.format)}) into {out_dir}")
        if token is not None:
            print(f"pushed to {push(out_dir, cfg.push_to_hub, token)}")
    return files


def written(files: dict[str, Path], format: str) -> str:
    """What the printed line says of an export: diffusers' pipeline, or the weights' size."""
    if format == "diffusers":
        return "diffusers' DDPMPipeline"
    return f"{files['model.safetensors'].stat().st_size / 2**20:.2f} MiB of weights"


def export_onnx(cfg: DictConfig) -> dict[str, Path]:
    """model.onnx and model.json of the model into `cfg.out_dir` (format=onnx), and guide.onnx
    of the guide the command chooses (`chosen_guide`), with autoguidance's sampler settings as
    `sample` draws it (`guided_by`)."""
    if cfg.push_to_hub:
        raise ConfigError(
            f"push_to_hub={cfg.push_to_hub} uploads model folders: drop it or use format=folder"
        )
    require_onnx_extra("format=onnx")
    with claimed(cfg.out_dir, "export") as out_dir:
        folder = pretrained_folder(cfg)
        hyper_parameters, state_dict, _ = source(cfg, folder)
        module = build_module(hyper_parameters, state_dict, cfg.ckpt_path or cfg.pretrained)
        sampler = sampler_config(cfg, module.diffusion.objective.value)
        guide = chosen_guide(cfg.guide, folder)
        sampler = guided_by(module, guide, sampler, chosen_sampler(cfg), command_overrides() or [])
        files = write_onnx(out_dir, module, sampler)
        size = files["model.onnx"].stat().st_size / 2**20
        guided = "" if guide is None else f", autoguided by guide={guide}"
        print(f"wrote {', '.join(files)} ({size:.2f} MiB{guided}) into {out_dir}")
    return files


def chosen_sampler(cfg: DictConfig) -> dict[str, Any]:
    """The command's `sampler` config as a plain dict."""
    return cast("dict[str, Any]", OmegaConf.to_container(cfg.sampler, resolve=True))


def sampler_config(cfg: DictConfig, objective: str | None) -> dict[str, Any]:
    """The sampler the folder recommends, as a plain dict: the one `sample` would use for a
    model of `objective` (`recommendation`: the source folder's recommended sampler, the one a
    distilled student's checkpoint learned, a flow model's), else `cfg.sampler`."""
    chosen = chosen_sampler(cfg)
    sampler, _ = recommendation(
        cfg.pretrained, cfg.ckpt_path, chosen, command_overrides(), objective
    )
    return sampler or chosen


main = hydra_command("export", export)

if __name__ == "__main__":
    main()
