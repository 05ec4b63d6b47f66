import pytest
import torch

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models import UNet

# The printout of Lior Sinai's MNIST post for UNet(1, 16, 100; channel_multipliers=(1, 2, 3)).
SEED_LAYER_PARAMETERS = {
    "time_embedding": 4_160 + 4_160,
    "init": 160,
    "down_1": 5_744,
    "downsample_1": 4_112,
    "down_2": 5_744,
    "downsample_2": 8_224,
    "down_3": 20_704,
    "down_4": 13_872,
    "middle_1": 44_880,
    "middle_attention": 82_992,
    "middle_2": 44_880,
    "up_3": 93_312,
    "upsample_3": 13_856,
    "up_2": 39_168,
    "upsample_2": 4_624,
    "up_1": 12_672,
    "final": 145,
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_seed_unet_has_the_seed_parameter_count():
    model = UNet(in_channels=1, model_channels=16, num_timesteps=100, channel_multipliers=(1, 2, 3))
    assert count(model) == 403_409
    assert sum(b.numel() for b in model.buffers()) == 6_400
    assert sum(p.numel() for p in model.parameters()) == 403_409, "the table is not trainable"


def test_seed_unet_per_layer_counts_and_order():
    model = UNet()
    children = dict(model.named_children())
    assert list(children) == list(SEED_LAYER_PARAMETERS)
    assert {name: count(layer) for name, layer in children.items()} == SEED_LAYER_PARAMETERS


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"block_layer": "convembed"},
        {"num_blocks_per_level": 2},
        {"channel_multipliers": (1, 2, 2, 4), "model_channels": 8, "block_groups": 4},
        {"num_classes": 10},
    ],
)
@pytest.mark.parametrize("size", [32, 28])
def test_output_shape_equals_input_shape(kwargs, size):
    model = UNet(**kwargs)
    if size % model.size_divisor:
        pytest.skip("size not allowed for this depth")
    x = torch.randn(3, 1, size, size)
    y = torch.tensor([0, 5, 9]) if kwargs.get("num_classes") else None
    assert model(x, torch.tensor([0, 50, 99]), y).shape == x.shape


def test_several_blocks_per_level_use_the_seed_keys():
    names = dict(UNet(num_blocks_per_level=2).named_children())
    assert {"down_1_1", "down_1_2", "up_3_1", "up_3_2", "down_4"} <= set(names)
    assert "down_1" not in names


def test_labels_condition_the_output_and_none_is_the_null_label():
    torch.manual_seed(0)
    model = UNet(num_classes=10)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 10])
    with torch.no_grad():
        a = model(x, t, torch.tensor([1, 1]))
        b = model(x, t, torch.tensor([7, 7]))
        null = model(x, t, None)
        explicit_null = model(x, t, torch.tensor([10, 10]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(null, explicit_null)
    assert model.label_embedding.num_embeddings == 11


def test_block_groups_error_uses_the_seed_wording():
    with pytest.raises(ConfigError) as info:
        UNet(model_channels=12, block_groups=8)
    message = str(info.value)
    assert message.startswith(
        "The number of block_groups (8) must divide the number of model_channels (12)"
    )
    assert "model.block_groups" in message and "model.model_channels" in message


def test_attention_heads_error_names_the_keys():
    with pytest.raises(ConfigError, match="num_attention_heads") as info:
        UNet(num_attention_heads=5)
    assert "model.model_channels" in str(info.value)


def test_image_size_error_names_the_keys():
    model = UNet(channel_multipliers=(1, 2, 2, 2))
    with pytest.raises(ConfigError, match="not divisible by 2\\^3=8") as info:
        model(torch.randn(1, 1, 28, 28), torch.tensor([0]))
    assert "model.channel_multipliers" in str(info.value) and "data.pad" in str(info.value)


def test_unknown_block_layer():
    with pytest.raises(ConfigError, match="model.block_layer"):
        UNet(block_layer="transformer")
