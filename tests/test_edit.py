"""Editing: inpainting against the Gaussian conditional, SDEdit's ends, DDIM inversion with the
exact denoiser, the masks, bad inputs, and the edit command end to end on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.edit import edit
from ddpm_lightning.editing import (
    MASK_NAMES,
    inpaint,
    invert,
    known_mask,
    load_inputs,
    psnr,
    reconstruct,
    sdedit,
    slerp,
)
from ddpm_lightning.editing.inpaint import repaint_plan
from ddpm_lightning.errors import ConfigError
from tests.conftest import tiny_model_folder, writing_config

# Data ~ N(MU, SIGMA) on 2×2 images (4 pixels), every pair correlated 0.8.
MU = torch.tensor([0.3, -0.1, 0.2, 0.0], dtype=torch.float64)
SIGMA = 0.04 * (0.2 * torch.eye(4, dtype=torch.float64) + 0.8)
KNOWN_VALUES = torch.tensor([0.6, 0.5], dtype=torch.float64)


def exact_denoiser(schedule: NoiseSchedule) -> Denoiser:
    """The optimal ε-predictor for N(MU, SIGMA), unclipped: E[x₀ | x_t] = μ + √ᾱ Σ(ᾱΣ +
    (1−ᾱ)I)⁻¹(x_t − √ᾱ μ), ε̂ = (x_t − √ᾱ E[x₀ | x_t]) / √(1−ᾱ)."""

    def model(x, t, y=None):
        a = schedule.alphas_cumprod[t].double()[:, None]
        flat = x.double().flatten(1)
        cov = a[:, :, None] * SIGMA + (1 - a)[:, :, None] * torch.eye(4, dtype=torch.float64)
        residual = (flat - a.sqrt() * MU).unsqueeze(-1)
        x0 = MU + torch.linalg.solve(cov, residual).squeeze(-1) @ SIGMA
        return ((flat - a.sqrt() * x0) / (1 - a).sqrt()).reshape(x.shape).float()

    return Denoiser(model, schedule, "eps", clip_x0=False)


def conditional_moments() -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (2,) and covariance (2, 2) of the bottom pixels given the top ones = KNOWN_VALUES."""
    s11, s12, s22 = SIGMA[:2, :2], SIGMA[:2, 2:], SIGMA[2:, 2:]
    mean = MU[2:] + s12.T @ torch.linalg.solve(s11, KNOWN_VALUES - MU[:2])
    return mean, s22 - s12.T @ torch.linalg.solve(s11, s12)


def filled_pixels(resample_jumps: int, jump_length: int = 10) -> torch.Tensor:
    schedule = NoiseSchedule("cosine", 200)
    sampler = DDPMSampler(schedule, progress=False)
    image = torch.zeros(4000, 1, 2, 2)
    image[:, 0, 0] = KNOWN_VALUES.float()
    known = known_mask("bottom", 2, 2)
    out = inpaint(
        exact_denoiser(schedule),
        image,
        known,
        sampler,
        resample_jumps=resample_jumps,
        jump_length=jump_length,
    )
    assert torch.equal(out[:, 0, 0], image[:, 0, 0])
    return out.flatten(1)[:, 2:].double()


def test_replacement_alone_is_biased_towards_the_prior():
    """Replacement never lets the known pixels steer the early, noisy steps: the filled pixels'
    mean sits between the prior's and the conditional's (measured 0.469, 0.268 against
    0.600, 0.400 and prior 0.2, 0.0; conditional std 0.107, Monte Carlo error of the mean
    0.002), their variance too high (0.0154 against 0.0116)."""
    mean, cov = conditional_moments()
    pixels = filled_pixels(resample_jumps=1)
    bias = pixels.mean(0) - mean
    assert ((bias > -0.17) & (bias < -0.09)).all(), bias
    assert (torch.cov(pixels.T).diag() > cov.diag() + 0.002).all()


def test_resampling_recovers_the_gaussian_conditional():
    """RePaint's 10 passes over stretches of 10 steps cut the bias to about a sixth (measured
    mean 0.577, 0.380; covariance 0.0108, 0.0106 on the diagonal, 0.0043 off it, against 0.0116
    and 0.0036): mean within 0.04, covariance within 0.0015 entrywise."""
    mean, cov = conditional_moments()
    pixels = filled_pixels(resample_jumps=10)
    torch.testing.assert_close(pixels.mean(0), mean, atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(pixels.T), cov, atol=0.0015, rtol=0)


def test_repaint_plan_counts_passes_and_jumps():
    plan = repaint_plan(25, resample_jumps=3, jump_length=10)
    assert sum(move[0] == "down" for move in plan) == 75
    assert [move for move in plan if move[0] == "up"] == [("up", 0, 10)] * 2 + [
        ("up", 10, 20)
    ] * 2 + [("up", 20, 25)] * 2
    assert repaint_plan(5, 1, 10) == [("down", i, i + 1) for i in range(5)]


def test_inversion_with_the_exact_denoiser_reconstructs():
    """image → x_T → image with deterministic DDIM errs by the ODE's discretisation, about
    1/steps: measured largest pixel error 0.018 at 200 steps and 0.0043 at 1000 (PSNR at least
    44.8 and 57.3 dB); allowed 0.008 at 1000, and at most a third of the 200-step error."""
    schedule = NoiseSchedule("cosine", 1000)
    model = exact_denoiser(schedule)
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(16, 4, generator=g, dtype=torch.float64)
    images = (MU + draws @ torch.linalg.cholesky(SIGMA).T).float().reshape(16, 1, 2, 2)
    errors = {}
    for steps in (200, 1000):
        sampler = DDIMSampler(schedule, num_steps=steps, eta=0.0, progress=False)
        noise = invert(model, images, sampler)
        back = reconstruct(model, noise, sampler)
        errors[steps] = (back - images).abs().max().item()
    assert noise.std() > 0.5
    assert errors[1000] < 0.008 and errors[1000] < errors[200] / 3
    assert psnr(back, images).min() > 55


def test_inversion_needs_deterministic_ddim():
    schedule = NoiseSchedule("cosine", 20)
    with pytest.raises(ConfigError, match="sampler=ddim sampler.eta=0"):
        invert(exact_denoiser(schedule), torch.zeros(1, 1, 2, 2), DDIMSampler(schedule, eta=1.0))


def test_sdedit_ends_are_the_input_and_plain_sampling():
    schedule = NoiseSchedule("cosine", 100)
    model = exact_denoiser(schedule)
    image = torch.rand(8, 1, 2, 2) * 2 - 1
    for sampler in (
        DDIMSampler(schedule, num_steps=20, eta=1.0, progress=False),
        DDPMSampler(schedule, progress=False),
    ):
        assert torch.equal(sdedit(model, image, sampler, seed=3, strength=0.0), image)
        plain = sampler.sample(model, (8, 1, 2, 2), seed=3)
        assert torch.equal(sdedit(model, image, sampler, seed=3, strength=1.0), plain)
        halfway = sdedit(model, image, sampler, seed=3, strength=0.5)
        assert not torch.equal(halfway, plain) and not torch.equal(halfway, image)


def test_sdedit_and_inpaint_refuse_other_samplers():
    schedule = NoiseSchedule("cosine", 20)
    sampler = DPMSolverSampler(schedule, num_steps=5)
    with pytest.raises(ConfigError, match="sampler=ddpm or sampler=ddim"):
        sdedit(exact_denoiser(schedule), torch.zeros(1, 1, 2, 2), sampler)
    with pytest.raises(ConfigError, match="edit.strength=2"):
        sdedit(exact_denoiser(schedule), torch.zeros(1, 1, 2, 2), sampler, strength=2)


def test_slerp_keeps_the_ends_and_the_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1, 32, 32, generator=g)
    path = slerp(a, b, torch.linspace(0, 1, 5))
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    norms = path.flatten(1).norm(dim=1)
    assert (norms - 32).abs().max() < 2  # ‖x‖ ≈ √1024 along the whole path


@pytest.mark.parametrize(
    ("name", "filled"),
    [
        ("top", [[1, 1], [1, 1], [0, 0], [0, 0]]),
        ("bottom", [[0, 0], [0, 0], [1, 1], [1, 1]]),
        ("left", [[1, 0], [1, 0], [1, 0], [1, 0]]),
        ("right", [[0, 1], [0, 1], [0, 1], [0, 1]]),
        ("center", [[0, 0], [1, 0], [1, 0], [0, 0]]),
    ],
)
def test_named_masks_fill_their_region(name, filled):
    """On 4 rows × 2 columns: halves, and the central square of half the side."""
    assert known_mask(name, 4, 2).tolist() == (1 - torch.tensor(filled).float()).tolist()


def test_random_mask_fills_its_share():
    known = known_mask("random:0.25", 64, 64, seed=1)
    assert abs((1 - known).mean().item() - 0.25) < 0.02
    assert torch.equal(known, known_mask("random:0.25", 64, 64, seed=1))
    assert "random:P" in MASK_NAMES
    with pytest.raises(ConfigError, match="random:2"):
        known_mask("random:2", 4, 4)
    with pytest.raises(ConfigError, match="neither a mask picture nor a mask name"):
        known_mask("middle", 4, 4)


@pytest.mark.parametrize("method", ["inpaint", "sdedit", "invert", "interpolate"])
def test_a_flow_model_is_refused_in_one_line(tmp_path, method):
    """Every editing method follows the ᾱ path; a flow model's x_t lie on another, so editing
    one would give wrong images without a word."""
    flow = tiny_model_folder(tmp_path / "flow", objective="flow")
    cfg = writing_config("edit", tmp_path / "out", f"edit={method}", f"pretrained={flow}")
    refusal = rf"^edit={method} follows the ᾱ path .*objective=flow: no editing"
    with pytest.raises(ConfigError, match=refusal):
        edit(cfg)
    assert not (tmp_path / "out").exists()


def test_mask_picture_of_another_shape_is_refused(tmp_path):
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "mask.png")
    assert known_mask(str(tmp_path / "mask.png"), 16, 16).sum() == 0
    with pytest.raises(ConfigError, match="mask=.*16x16 but the images are 32x32"):
        known_mask(str(tmp_path / "mask.png"), 32, 32)


def test_inputs_are_resized_with_a_warning_and_bad_files_refused(tmp_path):
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(tmp_path / "digit.png")
    with pytest.warns(UserWarning, match="28x28, the model's 32x32; resized"):
        inputs = load_inputs(str(tmp_path / "digit.png"), (1, 32, 32))
    assert inputs.images.shape == (1, 1, 32, 32)
    torch.testing.assert_close(inputs.images, torch.ones(1, 1, 32, 32))
    (tmp_path / "junk.png").write_bytes(b"not a picture")
    with pytest.raises(ConfigError, match="no readable picture"):
        load_inputs(str(tmp_path / "junk.png"), (1, 32, 32))
    with pytest.raises(ConfigError, match="does not exist"):
        load_inputs(str(tmp_path / "missing.png"), (1, 32, 32))
    with pytest.raises(ConfigError, match="write test:INDEX"):
        load_inputs("test:x", (1, 32, 32), "mnist")


@pytest.fixture
def tiny_model(tmp_path):
    return tiny_model_folder(tmp_path / "model")


@pytest.mark.parametrize(
    ("method", "extra", "files"),
    [
        ("inpaint", ["edit.resample_jumps=2", "edit.jump_length=2"], {"grid.png", "process.gif"}),
        ("sdedit", ["edit.strength=0.6"], {"grid_large.png", "edited.npz"}),
        ("invert", [], {"noise.npz", "process.gif"}),
        ("interpolate", ["edit.frames=4"], {"strip.png", "interpolation.gif"}),
    ],
)
def test_the_edit_command_writes_its_outputs(
    tiny_model, data_root, tmp_path, method, extra, files, one_thread
):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "black.png")
    cfg = writing_config(
        "edit",
        tmp_path / "out",
        f"edit={method}",
        f"pretrained={tiny_model}",
        f"paths.data_dir={data_root}",
        "image=test:0-3",
        f"b={tmp_path / 'black.png'}",
        "sampler.num_steps=5",
        *extra,
    )
    written = edit(cfg)
    assert files <= set(written) and all(path.is_file() for path in written.values())
    if method == "interpolate":
        strip = Image.open(written["strip.png"])
        # 4 images of 32 px in one row, padded 2 px, enlarged 2× (each at least 64 px).
        assert strip.size == (2 * (4 * 34 + 2), 2 * (34 + 2))
        return
    # 3 inputs in a 2-column grid (2 px padding) above the 3 results in the same places.
    assert Image.open(written["grid.png"]).size == (2 * 34 + 2, 2 * (2 * 34 + 2))
    arrays = np.load(written["edited.npz"])
    assert arrays["images"].shape == (3, 1, 32, 32) and arrays["images"].dtype == np.uint8
    if method == "inpaint":
        kept = arrays["known"].astype(bool)
        assert np.array_equal(arrays["images"][:, :, kept], arrays["inputs"][:, :, kept])


def test_the_measurement_writes_its_three_tables(tiny_model, data_root, tmp_path, one_thread):
    cfg = writing_config(
        "edit",
        tmp_path / "out",
        "edit=measure",
        f"pretrained={tiny_model}",
        f"paths.data_dir={data_root}",
        "edit.num_images=3",
        "edit.strengths=[0.5]",
        "edit.step_counts=[2,4]",
        "edit.resample_jumps=2",
        "edit.jump_length=2",
        f"edit.csv_dir={tmp_path / 'csv'}",
        "sampler.num_steps=4",
    )
    written = edit(cfg)
    tables = {name: path.read_text().splitlines() for name, path in written.items()}
    assert set(tables) == {"editing_inpaint.csv", "editing_sdedit.csv", "editing_inversion.csv"}
    # A header and one row each: the masked input, replacement, RePaint; 1 strength; 2 counts.
    assert [len(lines) for lines in tables.values()] == [4, 2, 3]
    assert tables["editing_inpaint.csv"][0].startswith("method,resample_jumps,jump_length")


@pytest.mark.parametrize("method", ["inpaint", "sdedit", "invert", "interpolate", "measure"])
def test_each_edit_yaml_sets_its_functions_defaults(method):
    """conf/edit/<method>.yaml writes out the defaults its function declares, and no other
    value, so the reference table and the Python API agree."""
    import inspect

    import yaml

    from ddpm_lightning.config.location import config_dir
    from ddpm_lightning.editing import METHOD_SETTINGS
    from ddpm_lightning.editing.measure import measurement

    values = yaml.safe_load((config_dir() / "edit" / f"{method}.yaml").read_text())
    assert values.pop("method") == method
    function = measurement if method == "measure" else METHOD_SETTINGS[method][0]
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    for key, value in values.items():
        default = defaults[key]
        expected = list(default) if isinstance(default, tuple) else default
        if key == "csv_dir":
            assert value == "${paths.root_dir}/" + default
        else:
            assert value == expected, key
