"""LeNet-5 (LeCun et al. 1998) for 1×32×32 images: the feature extractor behind FLD."""

from __future__ import annotations

from torch import Tensor, nn

# One input image (C, H, W): what FLD scores.
INPUT_SHAPE = (1, 32, 32)


class LeNet5(nn.Module):
    """conv5 1→6 → ReLU → max-pool → conv5 6→16 → ReLU → max-pool → 120 → 84 → 10.

    `features(x)` is the 84-wide ReLU layer (the FLD features of Lior Sinai's MNIST post).
    61,706 parameters for 32×32 inputs (the post's 44,426 is for unpadded 28×28 digits).
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.convolutions = nn.Sequential(
            nn.Conv2d(1, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.dense = nn.Sequential(nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.head = nn.Linear(84, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """x: (B, 1, 32, 32) in [-1, 1] → (B, 84)."""
        return self.dense(self.convolutions(x))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, 1, 32, 32) in [-1, 1] → logits (B, 10)."""
        return self.head(self.features(x))
