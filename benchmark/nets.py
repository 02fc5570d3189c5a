"""Student networks. Each returns a StudentOut with stage maps, pooled embedding F_S and logits."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18, resnet34
from torchvision.models.resnet import BasicBlock

from benchmark.registry import STUDENTS
from benchmark.types import StudentOut


class Student(nn.Module):
    """A backbone cut into stages, global average pooling and a linear classifier."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], widths: list[int], num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.map_channels = widths
        self.embed_dim = widths[-1]
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> StudentOut:
        h = self.stem(x)
        maps = []
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        emb = torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)
        return StudentOut(maps=maps, embedding=emb, logits=self.classifier(emb), classifier=self.classifier)


def _from_torchvision(builder, num_classes: int, cifar_stem: bool) -> Student:
    net = builder(weights=None)
    if cifar_stem:  # 3x3 stride-1 stem, no max-pool: the usual CIFAR adaptation for 32x32 inputs
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return Student(stem, [net.layer1, net.layer2, net.layer3, net.layer4], [64, 128, 256, 512], num_classes)


def _small_resnet(widths: list[int], num_classes: int) -> Student:
    """3-stage ResNet8 (one BasicBlock per stage): trains fast on 2 CPU cores."""
    stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
    stages, cin = [], widths[0]
    for i, w in enumerate(widths):
        stride = 1 if i == 0 else 2
        down = None
        if stride != 1 or cin != w:
            down = nn.Sequential(nn.Conv2d(cin, w, 1, stride, bias=False), nn.BatchNorm2d(w))
        stages.append(BasicBlock(cin, w, stride, down))
        cin = w
    return Student(stem, stages, list(widths), num_classes)


STUDENTS.add("cifar_resnet18", lambda k: _from_torchvision(resnet18, k, True),
             "ResNet18 with the CIFAR 3x3 stem (32x32 input), 11.2M params, d_S=512")
STUDENTS.add("cifar_resnet34", lambda k: _from_torchvision(resnet34, k, True),
             "ResNet34 with the CIFAR 3x3 stem (32x32 input), 21.3M params, d_S=512")
STUDENTS.add("resnet18", lambda k: _from_torchvision(resnet18, k, False),
             "torchvision ResNet18 for the paper's 224x224 protocol, d_S=512")
STUDENTS.add("resnet34", lambda k: _from_torchvision(resnet34, k, False),
             "torchvision ResNet34 for the paper's 224x224 protocol, d_S=512")
STUDENTS.add("resnet8", lambda k: _small_resnet([32, 64, 128], k),
             "3-stage ResNet8, widths 32/64/128, 0.3M params, d_S=128 (fast on CPU)")
STUDENTS.add("resnet8_w16", lambda k: _small_resnet([16, 32, 64], k),
             "3-stage ResNet8, widths 16/32/64, 0.08M params, d_S=64 (tests and smoke runs)")
