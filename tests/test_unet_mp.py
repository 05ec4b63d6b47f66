"""The magnitude-preserving UNet: each MP layer keeps unit magnitude (RMS) on unit-magnitude
inputs, the network's output is finite and of order 1, its size is our UNet's, its shapes and
call are the UNet's, and forced weight normalisation keeps the stored weights at unit norm."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models import UNet
from ddpm_lightning.models.mp_layers import (
    MPConv,
    MPFourier,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
    resample,
)
from ddpm_lightning.models.unet_mp import MPBlock, UNetMP


def rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# Magnitude = RMS over a batch of 4,096 (linear) or 64 × 16 × 16 pixels (conv): sampling
# error is well under 1 %; 0.9–1.1 leaves room for zero padding at the 16 × 16 borders.
LAYERS = {
    "mp_silu": lambda: mp_silu(unit(4096, 64)),
    "mp_sum": lambda: mp_sum(unit(4096, 64), unit(4096, 64, seed=1), t=0.3),
    "mp_cat": lambda: mp_cat(unit(4096, 16), unit(4096, 48, seed=1), t=0.3),
    "pixel_norm": lambda: normalize(3 * unit(64, 32, 16, 16), dim=1),
    "fourier": lambda: MPFourier(64)(unit(4096)),
    "linear": lambda: MPConv(64, 32)(unit(4096, 64)),
    "conv3x3": lambda: MPConv(32, 48, (3, 3))(unit(64, 32, 16, 16)),
    "conv1x1": lambda: MPConv(32, 16, (1, 1))(unit(64, 32, 16, 16)),
    "upsample": lambda: resample(unit(64, 8, 16, 16), "up"),
    "enc_block": lambda: MPBlock(16, 32, 64)(unit(64, 16, 16, 16), mp_silu(unit(64, 64))),
    "down_block": lambda: MPBlock(16, 16, 64, "enc", "down")(
        unit(64, 16, 16, 16), mp_silu(unit(64, 64))
    ),
}


@pytest.mark.parametrize("name", LAYERS)
def test_each_layer_keeps_unit_magnitude(name):
    torch.manual_seed(0)
    with torch.no_grad():
        assert 0.9 < rms(LAYERS[name]()) < 1.1


def test_the_attention_block_stays_near_unit_magnitude():
    """At initialisation attention weighs the pixels almost evenly, so its branch averages v
    and comes out below unit magnitude; MP-summed at balance 0.3 the block stays within
    0.85–1.1 (0.90 at seed 0)."""
    torch.manual_seed(0)
    block = MPBlock(32, 32, 64, "dec", num_heads=4)
    with torch.no_grad():
        assert 0.85 < rms(block(unit(16, 32, 8, 8), mp_silu(unit(16, 64)))) < 1.1


def test_mp_cat_weighs_its_parts_by_the_balance():
    """t = 0.3 of a 16- and a 48-channel unit input: shares of the squared magnitude
    (1 − t)² : t² = 0.49 : 0.09 whatever the widths."""
    out = mp_cat(torch.ones(1, 16), torch.ones(1, 48), t=0.3)
    a, b = out[:, :16].pow(2).sum().item(), out[:, 16:].pow(2).sum().item()
    assert a / b == pytest.approx(0.49 / 0.09, rel=1e-6)


def test_forced_weight_normalisation_resets_the_stored_weights_in_training():
    """In eval mode the stored weight is left as it is (rows of norm 5√72 here); a training
    call gives the same output (up to normalize's ε = 1e-4) and resets each row to norm
    √fan_in = √72 (unit magnitude)."""
    conv = MPConv(8, 4, (3, 3)).eval()
    with torch.no_grad():
        conv.weight.copy_(5 * normalize(conv.weight))
    before = conv(unit(2, 8, 6, 6))
    norms = conv.weight.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((4,), 5 * math.sqrt(72)), rtol=1e-3, atol=0)
    after = conv.train()(unit(2, 8, 6, 6))
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-3)
    norms = conv.weight.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((4,), math.sqrt(72)), rtol=1e-3, atol=0)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("channels", [1, 3])
def test_parameter_count_is_within_a_quarter_of_the_unet(channels):
    mp, unet = count(UNetMP(in_channels=channels)), count(UNet(in_channels=channels))
    assert 0.75 * unet <= mp <= 1.25 * unet
    assert mp == {1: 470_208, 3: 470_784}[channels]


def test_the_output_starts_at_zero_and_is_of_order_one_once_its_gain_moves():
    """EDM2 starts the output gain at 0 (the untrained network predicts 0); at gain 1 the
    output of unit-variance input is finite with RMS in (0.25, 4) (0.72 at seed 0)."""
    torch.manual_seed(0)
    model = UNetMP().eval()
    x, t = unit(16, 1, 32, 32), torch.arange(0, 100, 100 // 16)[:16]
    with torch.no_grad():
        assert model(x, t).abs().max().item() == 0
        model.out_gain.fill_(1)
        out = model(x, t)
    assert torch.isfinite(out).all()
    assert 0.25 < rms(out) < 4


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("num_classes", [None, 10])
def test_forward_shapes_and_labels(channels, size, num_classes):
    torch.manual_seed(0)
    model = UNetMP(in_channels=channels, model_channels=8, num_classes=num_classes)
    with torch.no_grad():
        model.out_gain.fill_(1)
    x, t = unit(2, channels, size, size), torch.tensor([0, 99])
    y = None if num_classes is None else torch.tensor([3, 7])
    out = model(x, t, y)
    assert out.shape == x.shape
    if num_classes is not None:
        assert not torch.allclose(model(x, t), out)


def test_deeper_levels_pair_every_skip():
    """Two blocks per level and four levels: each decoder block takes one encoder output."""
    model = UNetMP(model_channels=8, channel_multipliers=(1, 2, 2, 4), num_blocks_per_level=2)
    assert len(model.enc) == 1 + 3 + 4 * 2
    assert sum("block" in name for name in model.dec) == len(model.enc)
    assert model(unit(2, 1, 32, 32), torch.tensor([0, 50])).shape == (2, 1, 32, 32)


def test_gradients_reach_every_parameter_by_the_third_step():
    """The gains start at 0 (the output gain, then each block's embedding gain opens the way
    behind it), so by the third SGD step on a denoising-like target every parameter has a
    non-zero gradient."""
    torch.manual_seed(0)
    model = UNetMP(model_channels=8, num_classes=3).train()
    x, t, y = unit(4, 1, 32, 32), torch.tensor([1, 20, 50, 90]), torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        (model(x, t, y) - x).pow(2).mean().backward()
        optimizer.step()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_shape_errors_name_the_setting():
    with pytest.raises(ConfigError, match="model.num_attention_heads"):
        UNetMP(model_channels=10, num_attention_heads=4)
    with pytest.raises(ConfigError, match="not divisible by 2\\^2=4"):
        UNetMP().check_input_shape((1, 30, 30))
    with pytest.raises(ConfigError, match="model=unet_mp takes images"):
        UNetMP().check_input_shape((2,))
