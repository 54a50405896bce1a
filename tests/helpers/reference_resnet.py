"""A literal, unoptimised layer-masked forward of torchvision ResNets, written straight from the spec.

It follows the paper's reference code where the spec mentions it (``k`` fill iterations per k×k
conv rather than ``k - 1``), applies batch norm as ``bn(a ⊙ m) ⊙ m`` instead of folding it, and
walks the modules by hand instead of tracing. Property 5 compares layermask against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

Pair = tuple[torch.Tensor, torch.Tensor]


def fill(a: torch.Tensor, m: torch.Tensor, iterations: int) -> torch.Tensor:
    channels = a.shape[1]
    for _ in range(iterations):
        num = F.conv2d(a, torch.ones(channels, 1, 3, 3), padding=1, groups=channels)
        den = F.conv2d(m, torch.ones(1, 1, 3, 3), padding=1)
        a = a + (1 - m) * num / (den + 1e-5)
        m = torch.clamp(m + den, 0, 1)
    return a


def conv(layer: nn.Conv2d, a: torch.Tensor, m: torch.Tensor) -> Pair:
    k = layer.kernel_size[0]
    filled = fill(a, m, k) if k > 1 else a
    out_mask = F.max_pool2d(m, layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    return layer(filled) * out_mask, out_mask


def batch_norm(layer: nn.BatchNorm2d, a: torch.Tensor, m: torch.Tensor) -> Pair:
    return layer(a * m) * m, m


def relu(a: torch.Tensor, m: torch.Tensor) -> Pair:
    return F.relu(a * m) * m, m


def max_pool(layer: nn.MaxPool2d, a: torch.Tensor, m: torch.Tensor) -> Pair:
    out_mask = F.max_pool2d(m, layer.kernel_size, layer.stride, layer.padding)
    pooled = layer(a.masked_fill(m == 0, float("-inf")))
    return torch.where(out_mask > 0, pooled, torch.zeros(())), out_mask


def block(b: BasicBlock | Bottleneck, a: torch.Tensor, m: torch.Tensor) -> Pair:
    out, om = relu(*batch_norm(b.bn1, *conv(b.conv1, a, m)))
    out, om = batch_norm(b.bn2, *conv(b.conv2, out, om))
    if isinstance(b, Bottleneck):
        out, om = batch_norm(b.bn3, *conv(b.conv3, *relu(out, om)))
    if b.downsample is not None:
        idn, im = batch_norm(b.downsample[1], *conv(b.downsample[0], a, m))
    else:
        idn, im = a, m
    joint = om * im
    return relu((out + idn) * joint, joint)


def reference_forward(model: ResNet, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    a, m = relu(*batch_norm(model.bn1, *conv(model.conv1, x * m, m)))
    a, m = max_pool(model.maxpool, a, m)
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for b in stage:
            a, m = block(b, a, m)
    pooled = (a * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp_min(1.0)
    return model.fc(pooled)
