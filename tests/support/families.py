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


class ClampedOverflowNet(nn.Module):
    """Not a family: ``boost`` passes float16's range (as in OverflowNet), and a Hardtanh(0, 6) after it brings
    every value back (inf and 1e5 both give 6), so an FP16 conversion gives the FP32 logits and is packed, while
    one of its layers is beyond float16: what gap-debug must name in a bundle that passed its check."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.boost = nn.Conv2d(8, 8, 1)
        self.clamp = nn.Hardtanh(0.0, 6.0)
        self.fc = nn.Linear(8, num_classes)
        with torch.no_grad():
            self.boost.weight.abs_().mul_(4e4)
            self.boost.bias.fill_(6e4)

    def forward(self, x):
        return self.fc(self.clamp(self.boost(self.features(x))).mean((2, 3)))


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


class OutlierNet(nn.Module):
    """Not a family: one channel of a convolution is 1000x the others and the next convolution ignores it, so a
    per-tensor INT8 range set by that channel leaves the others a few levels: quantizing the next layer's input
    costs top-1 agreement, and putting that layer back in float (an INT8 fallback) restores it."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)
        with torch.no_grad():
            self.conv1.weight[0] *= 1000.0
            self.conv2.weight[:, 0] = 0.0

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(F.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


# --- the blocks the edge converters most often trip on: LayerNorm + GELU, hard-swish, an average-pool downsample,
# --- ghost modules, a partial residual with SiLU (each family written here from its paper's description)

class _ChannelNorm(nn.Module):
    """LayerNorm over the channels of an NCHW tensor, written as ConvNeXt code bases write it: to NHWC, LayerNorm,
    back."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c, eps=1e-6)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _NeXtBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, 1, 3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.up, self.act, self.down = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)  # NHWC: the pointwise layers are Linear, the norm is LayerNorm
        y = self.down(self.act(self.up(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtish(nn.Module):
    """ConvNeXt: a 4x4/4 patchify stem, depthwise 7x7 blocks with LayerNorm, GELU and inverted MLPs, LayerNorm +
    2x2/2 downsampling, GAP then LayerNorm then the head."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 4, 4), _ChannelNorm(24))
        self.stage1 = nn.Sequential(_NeXtBlock(24), _NeXtBlock(24))
        self.down = nn.Sequential(_ChannelNorm(24), nn.Conv2d(24, 48, 2, 2))
        self.stage2 = _NeXtBlock(48)
        self.norm = nn.LayerNorm(48, eps=1e-6)
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((-2, -1))))


class _HardSE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class _V3Block(nn.Module):
    def __init__(self, cin, mid, cout, k, stride, se, act):
        super().__init__()
        layers = [_bn_act(cin, mid, k=1, act=act), _bn_act(mid, mid, k=k, s=stride, groups=mid, act=act)]
        if se:
            layers.append(_HardSE(mid))
        layers += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.use_res else self.body(x)


class MobileNetV3ish(nn.Module):
    """MobileNetV3: hard-swish stem and late blocks, ReLU early, 5x5 depthwise, squeeze-excitation gated by
    hard-sigmoid, a 1x1 conv after the pool (the "last channel" layer) with hard-swish."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _bn_act(3, 16, s=2, act=nn.Hardswish)
        self.blocks = nn.Sequential(_V3Block(16, 16, 16, 3, 2, True, nn.ReLU),
                                    _V3Block(16, 64, 24, 3, 2, False, nn.ReLU),
                                    _V3Block(24, 96, 40, 5, 2, True, nn.Hardswish),
                                    _V3Block(40, 120, 40, 5, 1, True, nn.Hardswish))
        self.last = nn.Sequential(nn.Conv2d(40, 96, 1), nn.Hardswish())
        self.head = nn.Linear(96, num_classes)

    def forward(self, x):
        pooled = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1)
        return self.head(torch.flatten(self.last(pooled), 1))


class _BasicD(nn.Module):
    """A ResNet-D block: the shortcut downsamples with a 2x2 average pool (ceil mode, padding not counted), then
    a 1x1 convolution, instead of a strided 1x1 that drops three quarters of the input."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(_bn_act(cin, cout, s=stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        pool = (nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if stride == 2 else nn.Identity())
        self.skip = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


class ResNetDish(nn.Module):
    """ResNet-D: a deep stem of three 3x3 convolutions, max-pool, blocks whose shortcuts average-pool."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(_bn_act(3, 8, s=2), _bn_act(8, 8), _bn_act(8, 16), nn.MaxPool2d(3, 2, 1))
        self.layers = nn.Sequential(_BasicD(16, 16, 1), _BasicD(16, 32, 2), _BasicD(32, 48, 2))
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


class _Ghost(nn.Module):
    """A ghost module: half the output channels from a 1x1 convolution, the other half from a cheap depthwise 3x3
    on those, concatenated and cut to the width asked."""

    def __init__(self, cin, cout, relu=True):
        super().__init__()
        primary = (cout + 1) // 2
        act = nn.ReLU if relu else nn.Identity
        self.cout = cout
        self.primary = _bn_act(cin, primary, k=1, act=act)
        self.cheap = _bn_act(primary, primary, k=3, groups=primary, act=act)

    def forward(self, x):
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1)[:, :self.cout]


class _GhostBottleneck(nn.Module):
    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.ghost1, self.ghost2 = _Ghost(cin, mid), _Ghost(mid, cout, relu=False)
        self.dw = (nn.Sequential(nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False), nn.BatchNorm2d(mid))
                   if stride == 2 else nn.Identity())
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                   nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return self.ghost2(self.dw(self.ghost1(x))) + self.skip(x)


class GhostNetish(nn.Module):
    """GhostNet: ghost bottlenecks (odd widths, so the concatenation is cut), a 1x1 conv after the pool."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _bn_act(3, 16, s=2)
        self.blocks = nn.Sequential(_GhostBottleneck(16, 16, 16, 1), _GhostBottleneck(16, 45, 23, 2),
                                    _GhostBottleneck(23, 67, 23, 1), _GhostBottleneck(23, 69, 40, 2))
        self.last = nn.Sequential(nn.Conv2d(40, 80, 1), nn.ReLU())
        self.head = nn.Linear(80, num_classes)

    def forward(self, x):
        return self.head(self.last(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1)).flatten(1))


class _ReXBlock(nn.Module):
    """A ReXNet block: expand with SiLU, depthwise with ReLU6, project; the residual is added to the first input
    channels only (the output is wider than the input)."""

    def __init__(self, cin, cout, stride, expand=6):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(_bn_act(cin, mid, k=1, act=nn.SiLU), _bn_act(mid, mid, s=stride, groups=mid,
                                  act=nn.ReLU6), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.cin, self.partial = cin, stride == 1 and cout >= cin

    def forward(self, x):
        y = self.body(x)
        if self.partial:
            y = torch.cat([y[:, :self.cin] + x, y[:, self.cin:]], 1)
        return y


class ReXNetish(nn.Module):
    """ReXNet: channels growing by a few per block, partial residuals, SiLU."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _bn_act(3, 16, s=2, act=nn.SiLU)
        self.blocks = nn.Sequential(_ReXBlock(16, 20, 1), _ReXBlock(20, 27, 2), _ReXBlock(27, 34, 1),
                                    _ReXBlock(34, 41, 2))
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(41, num_classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))
