"""A LeNet-style network for tiny images (28x28 digits, MedMNIST).

Two unpadded 5x5 convolution blocks as in LeNet-5 (28 -> 24 -> 12 -> 8 -> 4),
with batch norm as is usual since, and one hidden fully connected layer whose
256 outputs are the bottleneck features. An adaptive pooling before the dense
layer lets it take other small sizes (at least 16 px) too.
"""

from __future__ import annotations

from torch import Tensor, nn

from atl_desktop.models.classifier import Stage

FEATURE_DIM = 256


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 3, feature_dim: int = FEATURE_DIM, dropout: float = 0.5):
        super().__init__()
        self.conv1 = _conv_block(in_channels, 32)
        self.conv2 = _conv_block(32, 64)
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, feature_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv2(self.conv1(x)))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=5),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


SMALLCNN_STAGES = (
    Stage("conv1", ("conv1",), "conv1"),
    Stage("conv2", ("conv2",), "conv2"),
    Stage("fc", ("fc",), "fc"),
)
