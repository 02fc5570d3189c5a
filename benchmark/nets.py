"""Student networks. Each returns a StudentOut with stage maps, pooled embedding F_S and logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18, resnet34
from torchvision.models.resnet import BasicBlock

from benchmark.registry import STUDENTS, UsageError
from benchmark.types import StudentOut


class Student(nn.Module):
    """A backbone cut into stages, global average pooling and a linear classifier."""

    channels_last = True  # image students train faster in NHWC

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], widths: list[int], num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.map_channels = widths
        self.embed_dim = widths[-1]
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def run_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, maps = self.stem(x), []
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return maps

    def forward(self, x: torch.Tensor) -> StudentOut:
        maps = self.run_stages(x)
        emb = torch.flatten(nn.functional.adaptive_avg_pool2d(maps[-1], 1), 1)
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


def _cifar_resnet(depth: int, filters: list[int], num_classes: int) -> Student:
    """RepDistiller's CIFAR ResNet (depth 6n+2: a 3x3 stem of filters[0] channels, then three stages of n
    BasicBlocks with filters[1:] channels, strides 1, 2, 2; global average pooling, a linear classifier)."""
    n = (depth - 2) // 6
    stem = nn.Sequential(nn.Conv2d(3, filters[0], 3, 1, 1, bias=False), nn.BatchNorm2d(filters[0]), nn.ReLU(inplace=True))
    stages, cin = [], filters[0]
    for i, w in enumerate(filters[1:]):
        blocks = []
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            down = nn.Sequential(nn.Conv2d(cin, w, 1, stride, bias=False), nn.BatchNorm2d(w)) if stride != 1 or cin != w else None
            blocks.append(BasicBlock(cin, w, stride, down))
            cin = w
        stages.append(nn.Sequential(*blocks))
    return Student(stem, stages, list(filters[1:]), num_classes)


STUDENTS.add(
    "resnet8x4",
    lambda k: _cifar_resnet(8, [32, 64, 128, 256], k),
    "RepDistiller's resnet8x4 (CIFAR, 32x32), 1.2M params, d_S=256: the standard KD student",
)
STUDENTS.add(
    "resnet32x4",
    lambda k: _cifar_resnet(32, [32, 64, 128, 256], k),
    "RepDistiller's resnet32x4 (CIFAR, 32x32), 7.4M params, d_S=256: the standard KD teacher",
)
STUDENTS.add(
    "cifar_resnet18",
    lambda k: _from_torchvision(resnet18, k, True),
    "ResNet18 with the CIFAR 3x3 stem (32x32 input), 11.2M params, d_S=512",
)
STUDENTS.add(
    "cifar_resnet34",
    lambda k: _from_torchvision(resnet34, k, True),
    "ResNet34 with the CIFAR 3x3 stem (32x32 input), 21.3M params, d_S=512",
)
STUDENTS.add(
    "resnet18", lambda k: _from_torchvision(resnet18, k, False), "torchvision ResNet18 for the paper's 224x224 protocol, d_S=512"
)
STUDENTS.add(
    "resnet34", lambda k: _from_torchvision(resnet34, k, False), "torchvision ResNet34 for the paper's 224x224 protocol, d_S=512"
)
STUDENTS.add(
    "resnet8", lambda k: _small_resnet([32, 64, 128], k), "3-stage ResNet8, widths 32/64/128, 0.3M params, d_S=128 (fast on CPU)"
)
STUDENTS.add(
    "resnet8_w16",
    lambda k: _small_resnet([16, 32, 64], k),
    "3-stage ResNet8, widths 16/32/64, 0.08M params, d_S=64 (tests and smoke runs)",
)


class MLPStudent(Student):
    """Vector inputs [B, d_in]: stages of Linear -> BatchNorm -> ReLU; each stage's output is a [B, C, 1, 1]
    map, so map-based methods (FitNet's hint, SP on the last map) run unchanged."""

    channels_last = False

    def __init__(self, in_dim: int, widths: list[int], num_classes: int):
        stages, cin = [], in_dim
        for w in widths:
            stages.append(nn.Sequential(nn.Linear(cin, w, bias=False), nn.BatchNorm1d(w), nn.ReLU(inplace=True)))
            cin = w
        super().__init__(nn.Identity(), stages, list(widths), num_classes)

    def run_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m[:, :, None, None] for m in super().run_stages(x)]


def vector_input(factory: Callable[[int, int], Student]) -> Any:
    """A student factory built with the input width too, factory(num_classes, d_in) (see build_student)."""
    setattr(factory, "vector_input", True)
    return factory


@vector_input
def _mlp(k: int, d_in: int) -> MLPStudent:
    return MLPStudent(d_in, [128, 128, 64], k)


STUDENTS.add("mlp", _mlp, "3-stage MLP 128/128/64 for vector inputs (the synthetic task), d_S=64")


class LinearStudent(MLPStudent):
    """A linear classifier on the raw vector (the MFH setting's models): F_S = x, z = W x + c."""

    def __init__(self, in_dim: int, num_classes: int):
        Student.__init__(self, nn.Identity(), [nn.Identity()], [in_dim], num_classes)


@vector_input
def _linear(k: int, d_in: int) -> LinearStudent:
    return LinearStudent(d_in, k)


STUDENTS.add("linear", _linear, "a linear classifier on vector inputs (the MFH task), d_S = the input width")


class HookedStudent(nn.Module):
    """Any torchvision classification model as a student, unmodified but for its last Linear (resized to the
    task's classes): F_S is that Linear's input and the stage maps are the outputs of named layers, both
    taken by forward hooks. Layers: `tv:NAME@a,b` names them; by default layer1..layer4 where the model has
    them (ResNet family), else the 4-D output of the module that feeds the classifier's pooling."""

    channels_last = True

    def __init__(self, name: str, num_classes: int, layers: list[str] | None = None):
        super().__init__()
        self.net = torchvision_model(name, num_classes, f"student 'tv:{name}'")
        modules = dict(self.net.named_modules())
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise UsageError(f"student 'tv:{name}': no Linear classifier to take F_S from")
        self.classifier = modules[linears[-1]]
        if layers is None:
            layers = (
                [f"layer{i}" for i in range(1, 5)]
                if all(f"layer{i}" in modules for i in range(1, 5))
                else [n for n in ("features", "trunk_output", "encoder") if n in modules][:1]
            )
        missing = [n for n in layers if n not in modules]
        if missing or not layers:
            raise UsageError(
                f"student 'tv:{name}': no layer named {', '.join(missing) or '(none found)'}; name "
                "the stage layers as tv:NAME@layer_a,layer_b (module names of the torchvision model)"
            )
        self._maps: dict[str, torch.Tensor] = {}
        self.layers = layers
        for n in layers:
            modules[n].register_forward_hook(lambda m, i, o, n=n: self._maps.__setitem__(n, o))
        self.classifier.register_forward_pre_hook(lambda m, i: self._maps.__setitem__("_embedding", i[0]))
        self.embed_dim = self.classifier.in_features
        was = self.net.training
        self.net.eval()
        with torch.no_grad():  # the stage maps' channels, from one small forward pass
            self.net(torch.zeros(1, 3, 64, 64))
        self.map_channels = [int(self._maps[n].shape[1]) for n in layers]
        self.net.train(was)

    def forward(self, x: torch.Tensor) -> StudentOut:
        self._maps = {}
        logits = self.net(x)
        maps = [self._maps[n] for n in self.layers]
        return StudentOut(
            maps=maps, embedding=torch.flatten(self._maps["_embedding"], 1), logits=logits, classifier=self.classifier
        )


class TimmStudent(nn.Module):
    """Any timm model as a student (`timm:NAME`): F_S is its pre-logits feature (`forward_head(pre_logits=True)`),
    z_S its own classifier (resized to the task's classes), and the stage maps its last (up to) four feature
    stages, from timm's own intermediate-feature API (`forward_intermediates`, the stages of its `feature_info`).
    Random initialisation: the timm package ships no weights (timm fetches pretrained ones from the Hugging Face
    hub, which needs the network); every run records that in its param student_weights."""

    net: Any  # a timm model: its methods (forward_intermediates, feature_info) are not typed
    channels_last = True
    weights = "random initialisation (timm model, pretrained=False)"

    def __init__(self, name: str, num_classes: int):
        super().__init__()
        try:
            import timm
        except ImportError:
            raise UsageError(f"student 'timm:{name}' needs the timm package (pip install timm)") from None
        if name not in timm.list_models():
            from benchmark.registry import did_you_mean

            raise UsageError(
                f"student 'timm:{name}': timm has no model '{name}'; {did_you_mean(name, timm.list_models())}".strip().rstrip(";")
            )
        self.net = timm.create_model(name, pretrained=False, num_classes=num_classes)
        self.classifier = self.net.get_classifier()
        if not isinstance(self.classifier, nn.Linear) or not hasattr(self.net, "forward_intermediates"):
            raise UsageError(f"student 'timm:{name}': needs a Linear classifier and timm's forward_intermediates")
        self.n_maps = min(4, len(self.net.feature_info))
        self.map_channels = [int(f["num_chs"]) for f in self.net.feature_info][-self.n_maps :]
        self.embed_dim = self.classifier.in_features

    def forward(self, x: torch.Tensor) -> StudentOut:
        final, maps = self.net.forward_intermediates(x, indices=self.n_maps)
        embedding = torch.flatten(self.net.forward_head(final, pre_logits=True), 1)
        return StudentOut(maps=list(maps), embedding=embedding, logits=self.classifier(embedding), classifier=self.classifier)


def torchvision_model(name: str, num_classes: int, what: str) -> nn.Module:
    """An untrained torchvision classification model by name (students `tv:NAME`, teachers `teacher_arch=tv:NAME`)."""
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UsageError(f"{what}: torchvision has no classification model '{name}'")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def student_builder(name: str):
    """`builder(num_classes)` of a registered student, of `tv:NAME[@layer,...]` (any torchvision model) or of
    `timm:NAME` (any timm model)."""
    if name.startswith("timm:"):
        return lambda num_classes: TimmStudent(name[5:], num_classes)
    if name.startswith("tv:"):
        model, _, layers = name[3:].partition("@")
        return lambda num_classes: HookedStudent(model, num_classes, [x for x in layers.split(",") if x] or None)
    return STUDENTS.get(name)


def check_student(name: str, data) -> bool:
    """Whether the named student takes vector inputs; UsageError when it does not fit the task's data."""
    vector_data = isinstance(data.train.x, torch.Tensor) and data.train.x.ndim == 2
    vector_net = getattr(student_builder(name), "vector_input", False)
    if vector_data != vector_net:
        kind = "vector inputs [N, d]" if vector_data else "images or audio"
        raise UsageError(
            f"student '{name}' does not fit this task's {kind}; "
            f"{'use --set student=mlp' if vector_data else 'mlp is for the synthetic task only'}"
        )
    return vector_net


def build_student(name: str, data) -> Student:
    """The named student for a task's data: vector students (MLP) are sized to the input width."""
    builder = student_builder(name)
    return builder(data.num_classes, int(data.train.x.shape[1])) if check_student(name, data) else builder(data.num_classes)
