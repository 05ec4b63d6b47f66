"""Trained models as Hugging Face-style model folders: export, model cards, `pretrained=`
resolution (shipped names, folders, Hub repo ids) and upload to the Hub."""

from ddpm_lightning.sharing.export import checkpoint_source, export_folder, folder_source
from ddpm_lightning.sharing.folder import load_folder
from ddpm_lightning.sharing.pretrained import (
    load_folder_guide,
    load_model,
    load_pretrained,
    model_folder,
    shipped,
)

__all__ = [
    "checkpoint_source",
    "export_folder",
    "folder_source",
    "load_folder",
    "load_folder_guide",
    "load_model",
    "load_pretrained",
    "model_folder",
    "shipped",
]
