"""ResNets with torchvision's module names, so ``dino_resnet50_pretrain.pth`` loads strictly.

torchvision cannot be imported here, so the networks are written out. The classifier ``fc`` is an
``nn.Identity``: ``forward`` returns the globally pooled feature ``[B, embed_dim]`` (2048 for
ResNet-50, 512 for ResNet-18/34). ``resnet18_cifar`` is the variant for 32 px images: a 3x3
stride-1 stem without max-pool keeps the 32x32 grid, and half width keeps a CPU step cheap.
"""

from __future__ import annotations

import torch
from torch import nn

from dinokit.models.small_map_conv import Conv2d

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50", "resnet18_cifar"]


def _conv3x3(cin, cout, stride=1):
    return Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin, cout, stride=1):
    return Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 down, 3x3, 1x1 up (x4) and a shortcut (ResNet-50)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)  # stride on the 3x3 conv ("ResNet v1.5")
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """``layers`` blocks per stage; ``width`` channels in the first stage, doubled at each next one.

    ``small_input=True`` replaces the 7x7 stride-2 stem and its max-pool by one 3x3 stride-1 conv,
    for 32 px images whose 1x1 last feature map would otherwise hold little.
    """

    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 0, zero_init_residual: bool = False,
                 block: type[nn.Module] = Bottleneck, width: int = 64, small_input: bool = False):
        super().__init__()
        self.inplanes = width
        if small_input:
            self.conv1 = _conv3x3(3, width)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = self.embed_dim = width * 8 * block.expansion
        self.fc = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map ``[B, embed_dim, H/32, W/32]`` (``H/8`` with ``small_input``)."""
        # Channels-last runs oneDNN's fastest convolutions on CPU and tensor-core kernels on GPU
        # (training also stores the weights channels-last: 1.4x a CPU step of resnet18_cifar).
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 backbone (11.2 M parameters without ``fc``), 512-d feature."""
    return ResNet((2, 2, 2, 2), block=BasicBlock, **kwargs)


def resnet34(**kwargs) -> ResNet:
    """ResNet-34 backbone (21.3 M parameters without ``fc``), 512-d feature."""
    return ResNet((3, 4, 6, 3), block=BasicBlock, **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 backbone (23.5 M parameters without ``fc``), 2048-d feature."""
    return ResNet((3, 4, 6, 3), **kwargs)


def resnet18_cifar(**kwargs) -> ResNet:
    """ResNet-18 for 32 px images: 3x3 stem, no max-pool, half width (2.8 M parameters), 256-d feature."""
    return resnet18(**{"width": 32, "small_input": True, **kwargs})
