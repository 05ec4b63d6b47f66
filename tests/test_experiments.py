"""The experiment recipes of conf/experiment/: each is named for what it is, sets its own
task_name, and the earlier names still compose exactly the same config."""

from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ddpm_lightning.config import compose_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "conf" / "experiment"
# Earlier name → the recipe it now stands for.
ALIASES = {
    "seed_000": "sinai_mnist",
    "seed_002": "vanmaastricht_cond",
    "seed_004_cfg": "sinai_cfg",
}


def experiment(name: str, *overrides: str) -> dict:
    cfg = compose_config(
        "train", [f"experiment={name}", "paths.output_dir=/tmp/unused", *overrides]
    )
    container = OmegaConf.to_container(cfg)
    assert isinstance(container, dict)
    return container


@pytest.mark.parametrize(("old", "new"), ALIASES.items())
def test_an_earlier_name_composes_exactly_its_recipe(old, new):
    assert experiment(old) == experiment(new)
    assert experiment(old)["task_name"] == new
    overrides = ("trainer.max_epochs=3", "data=fashion_mnist", "schedule.num_timesteps=50")
    assert experiment(old, *overrides) == experiment(new, *overrides)


@pytest.mark.parametrize(("old", "new"), ALIASES.items())
def test_an_earlier_name_only_pulls_in_its_recipe(old, new):
    """An alias holds nothing of its own, so it cannot drift from the recipe."""
    text = (EXPERIMENTS / f"{old}.yaml").read_text(encoding="utf-8")
    assert text.startswith("# @package _global_\n")
    assert yaml.safe_load(text) == {"defaults": [new]}


def test_every_recipe_is_its_own_task():
    """Each recipe but the aliases logs under logs/<its name>/."""
    recipes = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem not in ALIASES)
    assert {"sinai_mnist", "vanmaastricht_cond", "sinai_cfg", "spiral", "ablation"} <= set(recipes)
    assert set(ALIASES.values()) <= set(recipes)
    for name in recipes:
        assert experiment(name)["task_name"] == name


def test_sinai_mnist_is_the_posts_recipe():
    cfg = experiment("sinai_mnist")
    assert cfg["schedule"]["name"] == "cosine" and cfg["schedule"]["num_timesteps"] == 100
    assert cfg["model"]["model_channels"] == 16 and cfg["model"]["channel_multipliers"] == [1, 2, 3]
    assert cfg["data"]["batch_size"] == 32 and cfg["trainer"]["max_epochs"] == 15
    assert cfg["optimizer"]["_target_"] == "torch.optim.Adam" and cfg["optimizer"]["lr"] == 2e-4
    assert cfg["lr_schedule"] == {"warmup_steps": 0, "cosine_decay": False}
    assert cfg["diffusion"]["objective"] == "eps"


def test_vanmaastricht_cond_is_the_posts_recipe():
    cfg = compose_config("train", ["experiment=vanmaastricht_cond", "paths.output_dir=/tmp/unused"])
    model = instantiate(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == 2_406_433
    assert model.num_classes == 10 and cfg.schedule.name == "linear"
    assert cfg.schedule.num_timesteps == 1000 and cfg.data.batch_size == 64
    assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.optimizer.lr == 5e-5


def test_sinai_cfg_is_the_repositorys_guided_recipe():
    cfg = experiment("sinai_cfg")
    assert cfg["model"]["num_classes"] == 10 and cfg["diffusion"]["p_uncond"] == 0.1
    assert cfg["callbacks"]["fld"]["sampler"]["guidance_scale"] == 2.0
    assert cfg["schedule"]["num_timesteps"] == 100 and cfg["trainer"]["max_epochs"] == 15
