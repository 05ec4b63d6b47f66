import json

import pytest
import torch
from hydra.utils import instantiate

from ddpm_lightning.config import compose_config
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.tools.bench import (
    SECTIONS,
    TRAINING_MODELS,
    TRAINING_SHAPES,
    RandomImages,
    Settings,
    bare_run,
    bench_sampling,
    build_training_module,
    main,
    markdown,
)


def test_sampling_bench_rows(one_thread):
    rows = bench_sampling(num_timesteps=5, batch_size=2, repeats=2, device=torch.device("cpu"))
    assert [row["sampler"] for row in rows] == ["ddpm-5", "ddim-5", "dpm_solver-5"]
    for row in rows:
        assert row["steps"] == 5
        speed, overhead = row["images_per_s"], row["overhead"]
        assert 0 < speed["min"] <= speed["median"] <= speed["max"]
        assert 0 <= overhead["min"] <= overhead["max"] < 1
    table = markdown(rows, "header")
    assert table.count("\n| ") == 4, "a header row and one row per sampler"


def check_speed(summary: dict) -> None:
    assert 0 < summary["min"] <= summary["median"] <= summary["max"]


def test_quick_bench_writes_every_section(tmp_path):
    """The whole `--quick` benchmark (one thread, so a busy machine stays quick): keys and
    rows only, no timing asserts."""
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    main(["--quick", "--threads", "1", "--out", str(out)])
    assert torch.get_num_threads() == threads, "the thread count is restored"
    results = json.loads(out.read_text())
    assert set(SECTIONS) <= set(results)
    assert {"device", "torch", "threads", "matmul_gflops", "mfu_reference_gflops"} <= set(
        results["machine"]
    )
    assert results["machine"]["threads"] == 1 and results["machine"]["matmul_gflops"]["float32"] > 0
    assert results["settings"]["batch_size"] == 4 and results["settings"]["repeats"] == 1
    for part in ("device: cpu", f"torch {torch.__version__}", "1 threads"):
        assert part in results["header"]

    rows = results["training"]
    assert [row["model"] for row in rows] == list(TRAINING_MODELS)
    parameters = {row["model"]: row["parameters"] for row in rows}
    assert parameters["unet"] == 403_409, "the default UNet"
    assert parameters["unet_cond"] - parameters["unet"] == 11 * 64, "10 classes + null, width 64"
    assert parameters["unet_large"] > 3 * parameters["unet"], "unet_large: d=32"
    shapes = {row["model"]: row["data_shape"] for row in rows}
    assert shapes == {name: list(shape) for name, shape in TRAINING_SHAPES.items()}
    colour_unet = instantiate(compose_config("train", ["model=unet_64"]).model, in_channels=3)
    assert parameters["unet_64"] == sum(p.numel() for p in colour_unet.parameters()) == 2_784_099
    for row in rows:
        check_speed(row["lightning"]["images_per_s"])
        check_speed(row["bare"]["images_per_s"])
        assert 0 <= row["lightning"]["data_wait"]["median"] < 1
        assert row["framework_overhead"] < 1 and row["gflop_per_image"] > 0
        assert row["lightning"]["mfu"] > 0 and row["bare"]["achieved_gflops"] > 0
        assert row["peak_memory_mb"] >= row["start_memory_mb"] > 0

    for peer in results["peers"]:
        assert "skipped" in peer or peer["bare"]["images_per_s"]["median"] > 0
    assert [row["sampler"] for row in results["sampling"]] == ["ddpm-5", "ddim-5", "dpm_solver-5"]

    table = out.with_suffix(".md").read_text()
    assert table.startswith(results["header"])
    for name in [*TRAINING_MODELS, *(peer["model"] for peer in results["peers"])]:
        assert f"\n| {name} |" in table
    assert "\n| unet_64 | 3×64×64 | 2,784,099 |" in table
    for column in ("framework overhead", "data wait", "MFU", "peak memory", "sampler overhead"):
        assert column in table


def test_models_option_picks_the_training_rows(tmp_path):
    out = tmp_path / "bench.json"
    main(
        [
            "--quick",
            "--threads",
            "1",
            "--sections",
            "training",
            "--models",
            "unet",
            "--out",
            str(out),
        ]
    )
    results = json.loads(out.read_text())
    assert [row["model"] for row in results["training"]] == ["unet"]
    assert results["settings"]["models"] == ["unet"]


def test_bare_loop_gives_a_conditional_model_its_labels(one_thread):
    settings = Settings.quick()
    module = build_training_module("unet_cond", settings)
    seen = []
    model = lambda x, t, y=None: seen.append(y) or module.model(x, t, y)  # noqa: E731
    images = RandomImages(6 * settings.batch_size, settings.batch_size)
    images.setup("fit")
    data = images.splits["train"]
    bare_run(
        model, list(module.model.parameters()), module.diffusion, data, settings, conditional=True
    )
    assert len(seen) == settings.warmup_steps + settings.steps
    assert all(y is not None and y.shape == (settings.batch_size,) for y in seen)


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match=r"--models=\['resnet'\]: choose from"):
        Settings(models=("resnet",))
