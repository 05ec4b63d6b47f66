"""What `pretrained=` names: a model shipped in the package's `assets/models/`, a local model
folder or a Hugging Face Hub repo id, in that order of precedence."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluation.fld import ASSETS_DIR
from ddpm_lightning.sharing.folder import CONFIG_NAME, GUIDE_DIR, load_folder, shipped_guide
from ddpm_lightning.sharing.hub import download, is_repo_id
from ddpm_lightning.training.checkpoints import load_module
from ddpm_lightning.training.drawing import Drawing
from ddpm_lightning.training.module import DiffusionModule

SHIPPED_DIR = ASSETS_DIR / "models"


def shipped(directory: Path | None = None) -> list[str]:
    """Names of the shipped models (the folders of `directory`, default SHIPPED_DIR), e.g.
    ['fashion_mnist', 'mnist']."""
    directory = directory or SHIPPED_DIR
    return sorted(path.parent.name for path in directory.glob(f"*/{CONFIG_NAME}"))


def model_folder(pretrained: str | Path, directory: Path | None = None) -> Path:
    """The local folder of `pretrained`: shipped name (in `directory`, default SHIPPED_DIR),
    existing folder, or Hub repo id (then downloaded into the Hub's cache)."""
    directory = directory or SHIPPED_DIR
    text = str(pretrained)
    if text in shipped(directory):
        return directory / text
    if Path(text).expanduser().is_dir():
        return Path(text).expanduser()
    if is_repo_id(text):
        return download(text)
    raise ConfigError(
        f"pretrained={text} is not a shipped model ({', '.join(shipped(directory))}), an "
        "existing model folder or a Hugging Face Hub repo id like user/repo"
    )


def load_pretrained(pretrained: str | Path) -> DiffusionModule:
    """The module of a shipped model, a model folder or a Hub repo id: on the CPU, in eval
    mode, read from JSON and safetensors only (never unpickled)."""
    return load_folder(model_folder(pretrained))


def chosen_folder(ckpt_path: str | Path | None, pretrained: str | Path | None) -> Path | None:
    """The folder of the commands' `pretrained=` (`model_folder`), None for `ckpt_path=`; a
    ConfigError when both are given."""
    if pretrained is None:
        return None
    if ckpt_path is not None:
        raise ConfigError(
            f"pass ckpt_path= or pretrained=, not both (got ckpt_path={ckpt_path} "
            f"and pretrained={pretrained})"
        )
    return model_folder(pretrained)


def load_model(ckpt_path: str | Path | None, pretrained: str | Path | None) -> DiffusionModule:
    """The module of the commands' `ckpt_path=` or `pretrained=` (one of them)."""
    return load_chosen(ckpt_path, chosen_folder(ckpt_path, pretrained))


def load_chosen(ckpt_path: str | Path | None, folder: Path | None) -> DiffusionModule:
    """The module of the `pretrained=` `folder` (`chosen_folder`), else of `ckpt_path=`."""
    return load_module(ckpt_path) if folder is None else load_folder(folder)


def chosen_guide(guide: str | bool | None, folder: Path | None) -> str | None:
    """The guide of a command: `guide=`, else the one the `pretrained=` `folder` ships
    (`GUIDE_DIR`); None with guide=false or neither."""
    if guide is False:
        return None
    if guide is not None:
        return str(guide)
    shipped_folder = None if folder is None else shipped_guide(folder)
    return None if shipped_folder is None else str(shipped_folder)


def guide_checkpoint(guide: str) -> Path | None:
    """The training checkpoint `guide=` names; None when it names what `pretrained=` takes."""
    path = Path(guide).expanduser()
    return path if path.is_file() else None


def load_guide(guide: str, module: DiffusionModule) -> DiffusionModule:
    """The weaker model `guide=` names (a .ckpt file, or what `pretrained=` takes) for
    autoguidance of `module` (`check_guide`)."""
    checkpoint = guide_checkpoint(guide)
    try:
        loaded = load_module(checkpoint) if checkpoint else load_pretrained(guide)
    except ConfigError as exc:
        raise ConfigError(f"guide={guide}: {exc}") from None
    return check_guide(loaded, module, guide)


def check_guide(loaded: DiffusionModule, module: DiffusionModule, guide: str) -> DiffusionModule:
    """`loaded` when it may guide `module`: the same data shape, and the same classes if it has
    any. Its noise levels are checked where the two are paired (`Denoiser`)."""
    if tuple(loaded.data_shape) != tuple(module.data_shape):
        raise ConfigError(
            f"guide={guide} models data of shape {tuple(loaded.data_shape)}, the model "
            f"{tuple(module.data_shape)}: guide with a model of the same data"
        )
    if loaded.num_classes is not None and loaded.num_classes != module.num_classes:
        raise ConfigError(
            f"guide={guide} takes {loaded.num_classes} classes, the model "
            f"{module.num_classes}: guide with an unconditional model or one of the same classes"
        )
    return loaded


def load_folder_guide(pretrained: str | Path) -> DiffusionModule:
    """The guide the folder of `pretrained` ships (`GUIDE_DIR`), for `module.guide`: on the
    CPU, in eval mode, from JSON and safetensors only."""
    folder = model_folder(pretrained)
    guide = shipped_guide(folder)
    if guide is None:
        raise ConfigError(
            f"pretrained={pretrained} ships no guide (no {GUIDE_DIR}/{CONFIG_NAME} in {folder})"
        )
    return load_folder(guide)


def drawn_guide(drawing: Drawing, folder: Path | None) -> str | None:
    """The guide of `drawing` (`chosen_guide`; `folder` is that of its `pretrained=`), said in
    one line when it is the one the folder ships."""
    guide = chosen_guide(drawing.guide if drawing.folder_guide else False, folder)
    if drawing.guide is None and guide is not None:
        print(
            f"guide: the one pretrained={drawing.pretrained} ships, for autoguidance (guide=false "
            "draws without it)",
            flush=True,
        )
    return guide


def load_drawn(drawing: Drawing) -> tuple[Drawing, DiffusionModule]:
    """The model `drawing` draws from (`load_model`) with its guide (`drawn_guide`) loaded,
    and `drawing` naming that guide."""
    folder = chosen_folder(drawing.ckpt_path, drawing.pretrained)
    module = load_chosen(drawing.ckpt_path, folder)
    guide = drawn_guide(drawing, folder)
    if guide is not None:
        module.guide = load_guide(guide, module)
    return replace(drawing, guide=guide), module
