"""The sampler a model folder recommends (config.json's `sampler`), which the sample, evaluate
and demo commands use for `pretrained=` unless the command line chooses one, and for a
checkpoint of a distillation round the sampler its student learned: a distilled student samples
with the steps it learned, a flow model with a flow sampler, the others as before."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ddpm_lightning.components import component_settings
from ddpm_lightning.components.defaults import class_defaults
from ddpm_lightning.components.registry import factory
from ddpm_lightning.diffusion.denoiser import DENOISER_SETTINGS
from ddpm_lightning.diffusion.flow import FLOW
from ddpm_lightning.diffusion.guidance import AUTOGUIDANCE_INTERVAL
from ddpm_lightning.settings.overrides import override_key
from ddpm_lightning.sharing.folder import read_config
from ddpm_lightning.sharing.learned import checkpoint_learned_sampler
from ddpm_lightning.sharing.pretrained import load_guide, model_folder
from ddpm_lightning.training.drawing import Drawing
from ddpm_lightning.training.module import DiffusionModule

# What a flow model that recommends no sampler draws with (the ᾱ-path default cannot draw it):
# Heun's 25 steps, 49 network calls as the default DDIM-50 makes 50 (flow samplers compared in
# docs/results.md).
FLOW_SAMPLER = "flow_heun"
# What a model of the ᾱ path starts at on a demo site whose sampler option is a flow sampler.
ALPHA_SAMPLER = "ddim"
# Keys the command line may set on top of a folder's recommended sampler: how it guides, clips
# and batches, not which sampler or how many steps.
ON_TOP = ("guidance_scale", "guidance_interval", "clip_x0", "batch_size")


def sampler_keys(overrides: Sequence[str]) -> list[str]:
    """The sampler settings command-line `overrides` set (`sampler` itself for the group)."""
    keys = (override_key(override) for override in overrides)
    return [
        key.removeprefix("sampler.")
        for key in keys
        if key == "sampler" or key.startswith("sampler.")
    ]


def chooses_sampler(overrides: Sequence[str]) -> bool:
    """Whether command-line `overrides` pick the sampler or set one of its keys other than
    those that go on top of a recommended one (`ON_TOP`)."""
    return any(key not in ON_TOP for key in sampler_keys(overrides))


def recommended_sampler(pretrained: str) -> dict[str, Any] | None:
    """The settings of the sampler the folder of `pretrained` recommends, if it names one."""
    sampler = read_config(model_folder(pretrained)).get("sampler")
    return None if sampler is None else component_settings("sampler", sampler)


def settings_text(sampler: dict[str, Any]) -> str:
    """'ddim, num_steps=4, eta=0.0, spacing=trailing': a sampler's name and its step settings."""
    shown = ("num_steps", "eta", "spacing", "variance", "timesteps")
    return ", ".join([sampler["name"]] + [f"{k}={sampler[k]}" for k in shown if k in sampler])


def on_top(
    recommended: dict[str, Any] | None, chosen: dict[str, Any], overrides: Sequence[str] | None
) -> dict[str, Any] | None:
    """`recommended` with the keys of `chosen` that the command line set on top (`ON_TOP`);
    None when `overrides` choose a sampler, outside a command (None), or with no
    recommendation."""
    if recommended is None or overrides is None or chooses_sampler(overrides):
        return None
    return {**recommended, **{key: chosen[key] for key in sampler_keys(overrides) if key in chosen}}


def recommendation(
    pretrained: str | None,
    ckpt_path: str | Path | None,
    chosen: dict[str, Any],
    overrides: Sequence[str] | None,
    objective: str | None,
) -> tuple[dict[str, Any] | None, str]:
    """The sampler to use in place of `chosen`, and whose it is: the one the folder of
    `pretrained` recommends, or for a checkpoint, the one its distilled student `learned`; for
    a model of `objective` flow that recommends none, `FLOW_SAMPLER`. None when the command
    line chooses (`on_top`)."""
    if overrides is None or chooses_sampler(overrides):
        return None, ""
    if pretrained is not None:
        recommended = recommended_sampler(pretrained)
        source = f"the one pretrained={pretrained} recommends"
    else:
        learned = checkpoint_learned_sampler(ckpt_path)
        recommended = None if learned is None else component_settings("sampler", learned)
        source = "the one the distilled student in ckpt_path learned"
    if recommended is None and objective == FLOW:
        recommended = path_default(flow=True)
        source = "the default for a model of diffusion.objective=flow"
    return on_top(recommended, chosen, overrides), source


def path_default(flow: bool) -> dict[str, Any]:
    """The settings of `FLOW_SAMPLER` (`flow`), what a flow model that recommends none draws
    with, or of `ALPHA_SAMPLER`."""
    name = FLOW_SAMPLER if flow else ALPHA_SAMPLER
    return {"name": name, **class_defaults("sampler", name)}


def for_objective(sampler: dict[str, Any], objective: str) -> dict[str, Any]:
    """`sampler` when it follows the path of a model of `objective`, else that path's
    `path_default` with `sampler`'s clipping and guidance: one sampler option serves a demo
    site's models of either path."""
    settings = component_settings("sampler", sampler)
    flow = objective == FLOW
    if getattr(factory("sampler", settings["name"], "sampler"), "flow", False) == flow:
        return sampler
    kept = {key: settings[key] for key in DENOISER_SETTINGS if key in settings}
    return {**path_default(flow), **kept}


def autoguided(
    sampler: dict[str, Any], chosen: dict[str, Any], overrides: Sequence[str]
) -> dict[str, Any]:
    """`sampler` for autoguidance: γ and the guidance interval as the command line set them in
    `chosen`, else γ null (AUTOGUIDANCE_SCALE) and AUTOGUIDANCE_INTERVAL; a model folder's are
    classifier-free guidance's."""
    keys = sampler_keys(overrides)
    defaults = {"guidance_scale": None, "guidance_interval": AUTOGUIDANCE_INTERVAL}
    return {**sampler, **{k: chosen.get(k) if k in keys else v for k, v in defaults.items()}}


def guided_by(
    module: DiffusionModule,
    guide: str | None,
    sampler: dict[str, Any],
    chosen: dict[str, Any],
    overrides: Sequence[str],
) -> dict[str, Any]:
    """`sampler`, or with a `guide` (what `chosen_guide` names), that guide loaded into
    `module` (`load_guide`) and the settings of autoguidance (`autoguided`): an exported model
    draws as `sample` draws it."""
    if guide is None:
        return sampler
    module.guide = load_guide(guide, module)
    return autoguided(sampler, chosen, overrides)


def with_recommended_sampler(
    drawing: Drawing, overrides: Sequence[str] | None, objective: str
) -> Drawing:
    """`drawing` with the sampler its model of `objective` recommends (`recommendation`), said in
    one line, and with a guide, the settings of autoguidance (`autoguided`)."""
    sampler, source = recommendation(
        drawing.pretrained, drawing.ckpt_path, drawing.sampler, overrides, objective
    )
    chosen = drawing.sampler
    if sampler is not None and sampler != chosen:
        print(
            f"sampler: {settings_text(sampler)}, {source} (sampler=… chooses another)", flush=True
        )
        drawing = replace(drawing, sampler=sampler)
    if drawing.guide is not None:
        drawing = replace(drawing, sampler=autoguided(drawing.sampler, chosen, overrides or []))
    return drawing
