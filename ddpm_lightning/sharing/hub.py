"""The Hugging Face Hub: download a model folder by repo id (`user/repo`) into the Hub's
cache, and upload one. Failures are one-line errors, never a prompt."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import HfApi, get_token, snapshot_download
from huggingface_hub.errors import HFValidationError

from ddpm_lightning import __version__
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.sharing.folder import CONFIG_NAME, GUIDE_DIR, WEIGHTS_NAME

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# A model folder's files, its guide's included: nothing else of a repo is ever fetched.
FOLDER_PATTERNS = [
    *(CONFIG_NAME, WEIGHTS_NAME),
    *(f"{GUIDE_DIR}/{CONFIG_NAME}", f"{GUIDE_DIR}/{WEIGHTS_NAME}"),
]


def is_repo_id(text: str) -> bool:
    """Whether `text` looks like a Hub model id `user/repo`."""
    return REPO_ID.fullmatch(text) is not None and ".." not in text


def first_sentence(exc: BaseException) -> str:
    """The start of `exc`'s message: its first line, up to the first full stop."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line.split(". ")[0].rstrip(".")[:200]


def download(repo_id: str) -> Path:
    """The local folder (in the Hub cache) of model repo `repo_id`: its `FOLDER_PATTERNS`."""
    try:
        return Path(snapshot_download(repo_id, allow_patterns=FOLDER_PATTERNS))
    except (OSError, HFValidationError) as exc:
        raise ConfigError(
            f"pretrained={repo_id}: no such local folder, and the Hugging Face Hub did not "
            f"give it ({type(exc).__name__}: {first_sentence(exc)}); check the repo id and the "
            "connection, or copy the model folder here and pass pretrained=PATH/TO/FOLDER"
        ) from None


def hub_token(repo_id: str) -> str:
    """The token for pushing to `repo_id`: HF_TOKEN or the user's login."""
    if not is_repo_id(repo_id):
        raise ConfigError(f"push_to_hub={repo_id} is not a Hub repo id like user/repo")
    token = get_token()
    if not token:
        raise ConfigError(
            f"push_to_hub={repo_id} needs a Hugging Face token: set HF_TOKEN or log in with "
            "`hf auth login`"
        )
    return token


def push(folder: Path, repo_id: str, token: str) -> str:
    """Upload `folder` to model repo `repo_id` (created when missing); the commit's URL."""
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=f"Upload model folder with ddpm_lightning {__version__}",
        )
    except OSError as exc:
        raise DataError(
            f"push_to_hub={repo_id}: the upload failed ({type(exc).__name__}: "
            f"{first_sentence(exc)}); the folder {folder} is complete, push it again later"
        ) from None
    return commit.commit_url
