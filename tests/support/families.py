"""Small but structurally faithful members of the common GAP classifier families.

Each is built the way its family is (residual adds, depthwise separable convs, squeeze-excitation,
dense concatenation, channel shuffle, fire modules with a convolutional classifier) and writes its
global average pool a different way, as real code bases do. Used with ``--arch tests.support.families:NAME``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _bn_act(cin, cout, k=3, s=1, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act())


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(_bn_act(cin, cout, s=stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


class ResNetish(nn.Module):
    """ResNet: 7x7/2 stem, 3x3/2 max-pool, basic blocks with projection shortcuts, AdaptiveAvgPool2d(1)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(_bn_act(3, 16, k=7, s=2), nn.MaxPool2d(3, 2, 1))
        self.layers = nn.Sequential(_Basic(16, 16, 1), _Basic(16, 32, 2), _Basic(32, 64, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.layers(self.stem(x))), 1))


class _Inverted(nn.Module):
    def __init__(self, cin, cout, stride, expand=4):
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(_bn_act(cin, mid, k=1, act=nn.ReLU6), _bn_act(mid, mid, s=stride, groups=mid,
                                  act=nn.ReLU6), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetish(nn.Module):
    """MobileNetV2: inverted residuals with depthwise convs and ReLU6; GAP written as x.mean((2, 3))."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(_bn_act(3, 16, s=2, act=nn.ReLU6), _Inverted(16, 16, 1), _Inverted(16, 24, 2),
                                      _Inverted(24, 24, 1), _Inverted(24, 32, 2))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class _SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(s))))


class EfficientNetish(nn.Module):
    """EfficientNet: MBConv with squeeze-excitation and SiLU; GAP written as F.adaptive_avg_pool2d."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _bn_act(3, 16, s=2, act=nn.SiLU)
        self.blocks = nn.Sequential(_bn_act(16, 16, groups=16, act=nn.SiLU), _SE(16), _bn_act(16, 32, k=1, act=nn.SiLU),
                                    _bn_act(32, 32, s=2, groups=32, act=nn.SiLU), _SE(32),
                                    _bn_act(32, 48, k=1, act=nn.SiLU))
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class _DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.conv = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, growth, 3, 1, 1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.conv(x)], 1)


class DenseNetish(nn.Module):
    """DenseNet: concatenating dense layers, transition with 2x2 average pool, final BN-ReLU, GAP."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), _DenseLayer(16, 8), _DenseLayer(24, 8),
            nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 1, bias=False), nn.AvgPool2d(2, 2),
            _DenseLayer(16, 8), _DenseLayer(24, 8), nn.BatchNorm2d(32), nn.ReLU())
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), (1, 1)), 1))


class ShuffleNetish(nn.Module):
    """ShuffleNetV2: channel split, channel shuffle (reshape/transpose), GAP via mean([2, 3])."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(_bn_act(3, 24, s=2), nn.MaxPool2d(3, 2, 1))
        self.branch = nn.Sequential(_bn_act(12, 12, k=1), _bn_act(12, 12, groups=12, act=nn.Identity),
                                    _bn_act(12, 12, k=1))
        self.conv5 = _bn_act(24, 64, k=1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.conv5(x).mean([2, 3]))


class _Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], 1)


class SqueezeNetish(nn.Module):
    """SqueezeNet: fire modules, ceil-mode max-pools, a 1x1-conv classifier before the GAP."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      _Fire(32, 8, 16), nn.MaxPool2d(3, 2, ceil_mode=True), _Fire(32, 8, 16))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(32, num_classes, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


FAMILIES = ("ResNetish", "MobileNetish", "EfficientNetish", "DenseNetish", "ShuffleNetish", "SqueezeNetish")


class ShapeBranch(nn.Module):
    """Not a family: a model whose forward branches in Python on the input width, which a trace freezes.

    Exported at an even width, the ONNX never negates; PyTorch negates the logits of odd widths. The
    export's verification must catch that (it is how a wrong model, not a wrong tolerance, fails it).
    """

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = _bn_act(3, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        out = self.fc(self.features(x).mean((2, 3)))
        if x.shape[-1] % 2 == 1:
            out = -out
        return out


class OverflowNet(nn.Module):
    """Not a family: a GAP CNN that is fine in FP32 but overflows float16 in one intermediate layer.

    ``boost`` multiplies the features by about 4 x 10^4, so its outputs pass float16's largest value
    (65504; its weights stay representable); ``shrink`` scales them back before the global average. An FP16
    conversion that keeps ``boost`` (and what reads its output) in FP32 is exact enough; one that does not
    produces inf on a GPU.
    """

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.boost = nn.Conv2d(8, 8, 1)
        self.shrink = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, num_classes)
        with torch.no_grad():
            self.boost.weight.mul_(4e4)
            self.boost.bias.fill_(6e4)
            self.shrink.weight.mul_(1e-3)

    def forward(self, x):
        x = F.relu(self.boost(self.features(x)))
        return self.fc(self.shrink(x).mean((2, 3)))


class UnderflowNet(nn.Module):
    """Not a family: one layer whose weights (~3e-7) fall below float16's normal range, so FP16 keeps only a
    few bits of them. No activation overflows; only the FP32 fallback's sensitivity search can find it."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                      nn.ReLU())
        self.tiny = nn.Conv2d(8, 8, 1, bias=False)
        self.fc = nn.Linear(8, num_classes, bias=False)  # no bias to drown the signal
        with torch.no_grad():
            self.tiny.weight.mul_(1e-6)

    def forward(self, x):
        return self.fc(self.tiny(self.features(x)).mean((2, 3)))
