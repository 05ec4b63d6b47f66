"""The demo site: a static folder to serve or publish as it is. index.html, ddpm.js and
style.css (assets/demo), `models/<id>/model.onnx` and `model.json` for each model (and
`guide.onnx` for a folder that ships a guide), `models.json` listing them, and
onnxruntime-web's wasm build under `ort/`."""

from __future__ import annotations

import functools
import json
import re
import shutil
from collections.abc import Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ddpm_lightning.data.registry import known_record
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluation.fld import ASSETS_DIR
from ddpm_lightning.sharing.folder import load_folder
from ddpm_lightning.sharing.onnx import write_onnx
from ddpm_lightning.sharing.pretrained import chosen_guide, model_folder, shipped
from ddpm_lightning.sharing.recommended import for_objective, guided_by, recommendation
from ddpm_lightning.training.outputs import replacing

PAGE_DIR = ASSETS_DIR / "demo"
PAGE_FILES = ("index.html", "ddpm.js", "style.css")
RUNTIME_DIR = "ort"
MODELS_DIR = "models"
MODELS_INDEX = "models.json"
SITE_FILES = (*PAGE_FILES, MODELS_INDEX, MODELS_DIR, RUNTIME_DIR)


def model_id(pretrained: str) -> str:
    """The model's folder name in the site: a shipped name as it is, a local folder's own name,
    a Hub repo id with `--` for the slash."""
    text = str(pretrained)
    if text not in shipped() and Path(text).expanduser().is_dir():
        text = Path(text).expanduser().resolve().name
    return re.sub(r"[^\w.-]", "--", text)


def model_title(
    dataset: str | None,
    num_classes: int | None,
    identifier: str,
    saved: dict[str, Any] | None = None,
) -> str:
    """What the model menu shows: 'MNIST', 'Fashion-MNIST, class-conditional', and the id
    for models that are not shipped; data the registry does not know is named by the record
    `saved` with the model (a folder, a Hub dataset)."""
    record = known_record(dataset, saved)
    title = record.title if record else "unknown data"
    if num_classes is not None:
        title += ", class-conditional"
    return title if identifier in shipped() else f"{title} ({identifier})"


def announce(stage: str) -> None:
    """Print a stage of the build as it starts, flushed: exporting a model takes seconds."""
    print(stage, flush=True)


def add_model(
    site: Path, pretrained: str, sampler: dict[str, Any], overrides: Sequence[str] | None = None
) -> dict[str, str]:
    """Export one model (anything `pretrained=` takes) into `site/models/<id>/`, `sampler` as
    its starting settings, or the folder's recommended sampler where it has one and the
    command's `overrides` choose none (`recommendation`), or its path's default when `sampler`
    follows the other path (`for_objective`: a flow model and the ᾱ-path models share one);
    with the guide the folder ships, for autoguidance as `sample` draws it (`guided_by`); its
    entry of models.json."""
    identifier = model_id(pretrained)
    folder = model_folder(pretrained)
    module = load_folder(folder)
    objective = module.diffusion.objective.value
    chosen = sampler
    recommended = recommendation(pretrained, None, sampler, overrides, objective)[0]
    sampler = recommended or for_objective(sampler, objective)
    sampler = guided_by(module, chosen_guide(None, folder), sampler, chosen, overrides or [])
    write_onnx(site / MODELS_DIR / identifier, module, sampler, option="the demo")
    return {
        "id": identifier,
        "title": model_title(
            module.hparams.get("dataset"),
            module.num_classes,
            identifier,
            module.hparams.get("dataset_record"),
        ),
        "path": f"{MODELS_DIR}/{identifier}",
    }


def build_site(
    site: Path,
    models: list[str],
    sampler: dict[str, Any],
    runtime: dict[str, Path],
    overrides: Sequence[str] | None = None,
) -> list[dict[str, str]]:
    """Write the demo into `site`: the page, each of `models` with `sampler` (a ddim, ddpm,
    consistency, flow_euler or flow_heun sampler config; each folder's own recommended sampler
    where the command's `overrides` choose none, the other path's default where it cannot draw
    the model) as its starting settings, and the `runtime` files
    (onnxruntime-web's, by name), announcing each stage; the new site replaces the old one
    whole (`replacing`). The entries of models.json."""
    identifiers = [model_id(name) for name in models]
    repeated = sorted({i for i in identifiers if identifiers.count(i) > 1})
    if repeated:
        raise ConfigError(f"models={models} names {repeated[0]} twice; list each model once")
    with replacing(site, SITE_FILES) as folder:
        entries = []
        for number, name in enumerate(models, start=1):
            announce(f"[{number}/{len(models)}] exporting {name} to ONNX")
            entries.append(add_model(folder, name, sampler, overrides))
        announce(f"copying onnxruntime-web into {RUNTIME_DIR}/")
        (folder / RUNTIME_DIR).mkdir()
        for name, path in runtime.items():
            shutil.copyfile(path, folder / RUNTIME_DIR / name)
        announce(f"writing the page: {', '.join(PAGE_FILES)}, {MODELS_INDEX}")
        (folder / MODELS_INDEX).write_text(json.dumps(entries, indent=2) + "\n")
        for name in PAGE_FILES:
            shutil.copyfile(PAGE_DIR / name, folder / name)
    return entries


class SiteHandler(SimpleHTTPRequestHandler):
    """Static files with the types browsers insist on for ES modules and WebAssembly."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
        ".onnx": "application/octet-stream",
    }


def site_server(site: Path, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server of the folder `site` on host:port (port 0: a free one), not started."""
    handler = functools.partial(SiteHandler, directory=str(site))
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise ConfigError(
            f"port={port} cannot be used on {host} ({exc.strerror or exc}); pass another, "
            f"e.g. port={port + 1}"
        ) from None
