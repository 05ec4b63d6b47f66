"""A small MLP denoiser for 2-D points (the spiral of DenoisingDiffusion.jl part 1)."""

from __future__ import annotations

from typing import Annotated

from torch import Tensor, nn

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models.blocks import SinusoidalPositionEmbedding
from ddpm_lightning.settings import NumTimesteps, Range, checked


class MLP(nn.Module):
    """x: (B, D), t: (B,) → (B, D). Input layer, `num_layers` hidden layers each adding a fixed
    sinusoidal time embedding before SiLU, and a linear output (5,442 parameters by default).
    """

    num_classes = None

    @checked("model")
    def __init__(
        self,
        # Coordinates per point, in and out.
        in_dim: Annotated[int, Range(ge=1)] = 2,
        # Width of every hidden layer and of the time embedding added to each.
        hidden_dim: Annotated[int, Range(ge=2)] = 32,
        # Hidden layers.
        num_layers: Annotated[int, Range(ge=1)] = 5,
        num_timesteps: NumTimesteps = 1000,
    ):
        super().__init__()
        self.in_dim = in_dim
        self.time_embedding = SinusoidalPositionEmbedding(num_timesteps, hidden_dim)
        self.input = nn.Linear(in_dim, hidden_dim)
        self.hidden = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(num_layers))
        self.output = nn.Linear(hidden_dim, in_dim)
        self.activation = nn.SiLU()

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        if tuple(shape) != (self.in_dim,):
            raise ConfigError(
                f"model=mlp takes points of shape ({self.in_dim},) but the data gives "
                f"{tuple(shape)}; use data=spiral or model=unet"
            )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.time_embedding(t)
        h = self.activation(self.input(x))
        for layer in self.hidden:
            h = self.activation(layer(h) + emb)
        return self.output(h)
