"""The reference GAP CNN, with the layer names that the classic training code uses."""

from __future__ import annotations

import torch
from torch import nn


class GapCNN(nn.Module):
    """conv(32) -> pool -> conv(64) -> pool -> global average pool -> linear.

    Because the classifier sees only the channel-wise average, any input of at least 4x4 pixels
    (two 2x2 max-pools) gives logits of the same shape.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2))
        self.conv2 = nn.Sequential(nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2))
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.fcn = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        return self.fcn(torch.flatten(self.gap(x), 1))


#: state_dict keys that identify a checkpoint of GapCNN.
REFERENCE_KEYS = ("conv1.0.weight", "conv1.0.bias", "conv2.0.weight", "conv2.0.bias", "fcn.weight", "fcn.bias")
