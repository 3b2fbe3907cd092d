"""Image classifiers with BatchNorm: LeNet-5 and Wide ResNets (WRN-16-1, WRN-40-2).

All models are plain ``nn.Module`` s; the inner loop calls them with its own weights and cloned
buffers swapped into their slots (see :func:`hpo.tasks.base.model_functions`), so
BatchNorm running statistics are updated on cloned buffers, returned, and never differentiated.
"""

from __future__ import annotations

from typing import final

from torch import Tensor, nn


@final
class LeNet(nn.Module):
    """LeNet-5 with BatchNorm after each convolution and hidden linear layer.

    ``conv5(c->6) BN ReLU pool2  conv5(6->16) BN ReLU pool2  fc120 BN ReLU  fc84 BN ReLU  fc(classes)``.
    A 28x28 input is padded by 2 in the first convolution, so 28x28 and 32x32 images both end
    as 16x5x5 features.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, batch_norm: bool = True) -> None:
        super().__init__()
        pad = (32 - image_size) // 2
        if image_size + 2 * pad != 32:
            raise ValueError(f"LeNet takes 28x28 or 32x32 images, got {image_size}x{image_size}")

        def norm(n: int, two_d: bool) -> nn.Module:
            if not batch_norm:
                return nn.Identity()
            return nn.BatchNorm2d(n) if two_d else nn.BatchNorm1d(n)

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=pad), norm(6, True), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), norm(16, True), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), norm(120, False), nn.ReLU(),
            nn.Linear(120, 84), norm(84, False), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch ``(N, C, H, W)``."""
        return self.classifier(self.features(x).flatten(1))


@final
class WideBlock(nn.Module):
    """Pre-activation residual block: ``BN ReLU conv3 BN ReLU conv3`` plus a 1x1 shortcut when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``y = conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut``."""
        o = self.bn1(x).relu()
        y = self.conv2(self.bn2(self.conv1(o)).relu())
        return y + (x if self.shortcut is None else self.shortcut(o))


@final
class WideResNet(nn.Module):
    """WRN-``depth``-``width`` (Zagoruyko & Komodakis 2016) without dropout, for 32x32 images.

    ``depth = 6 n + 4``: a 3x3 stem with 16 channels, three groups of ``n`` blocks with
    ``16 k, 32 k, 64 k`` channels (strides 1, 2, 2), BN ReLU, global average pooling, linear.
    """

    def __init__(self, depth: int = 16, width: int = 1, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        for g in range(3):
            for i in range(n):
                c_in = widths[g] if i == 0 else widths[g + 1]
                blocks.append(WideBlock(c_in, widths[g + 1], (1 if g == 0 else 2) if i == 0 else 1))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch ``(N, C, H, W)``."""
        h = self.bn(self.blocks(self.stem(x))).relu()
        return self.fc(h.mean(dim=(2, 3)))


def wrn16_1(in_channels: int = 3, num_classes: int = 10) -> WideResNet:
    """WRN-16-1 (about 0.18M parameters), the paper's CIFAR-10 / SVHN model."""
    return WideResNet(16, 1, in_channels, num_classes)


def wrn40_2(in_channels: int = 3, num_classes: int = 10) -> WideResNet:
    """WRN-40-2 (about 2.2M parameters)."""
    return WideResNet(40, 2, in_channels, num_classes)
