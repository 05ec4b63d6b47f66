"""LeNet-5 (LeCun et al. 1998) for small images: the feature extractor behind FLD."""

from __future__ import annotations

from torch import Tensor, nn

# One input image (C, H, W) of the shipped MNIST and Fashion-MNIST LeNets.
INPUT_SHAPE = (1, 32, 32)


def flattened_size(image_size: int) -> int:
    """Width of the flattened 16-channel map: each conv5 takes 4 px, each max-pool halves."""
    side = ((image_size - 4) // 2 - 4) // 2
    return 16 * side * side


class LeNet5(nn.Module):
    """conv5 C→6 → ReLU → max-pool → conv5 6→16 → ReLU → max-pool → 120 → 84 → classes.

    `features(x)` is the 84-wide ReLU layer (the FLD features of Lior Sinai's MNIST post).
    61,706 parameters for 1×32×32 inputs (the post's 44,426 is for unpadded 28×28 digits);
    colour images take C = 3 input channels, larger ones a wider first dense layer.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 32):
        super().__init__()
        if image_size < 16:
            raise ValueError(f"LeNet-5 takes images of at least 16×16, not {image_size}")
        self.input_shape = (in_channels, image_size, image_size)
        self.convolutions = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.dense = nn.Sequential(
            nn.Linear(flattened_size(image_size), 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU()
        )
        self.head = nn.Linear(84, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) in [-1, 1] → (B, 84)."""
        return self.dense(self.convolutions(x))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) in [-1, 1] → logits (B, num_classes)."""
        return self.head(self.features(x))
