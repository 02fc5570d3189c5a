"""Frozen face teachers for the speaker task: dlib ResNet (offline, 128-d), IR-50 (checkpoint), weak ResNet34."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registry import TEACHERS, UsageError


def to_rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def resize(img: np.ndarray, size: int) -> torch.Tensor:
    """uint8 HxW(x3) -> float [3, size, size] in [0, 1]."""
    x = torch.from_numpy(np.array(to_rgb(img))).permute(2, 0, 1).float().unsqueeze(0) / 255
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0]


class DlibFace:
    """dlib's ResNet face descriptor (128-d, CC0) from the PyPI package face-recognition-models, offline.

    Inputs are face crops; each is resized to dlib's 150x150 aligned chip (VoxCeleb frames should be
    cropped and aligned first, as the paper's 112x112 faces)."""

    id = "dlib-face-resnet-v1/150px-chip"
    modality = "face"
    dim = 128

    def __init__(self, options=None):
        self._model = None

    def encode(self, images: list) -> torch.Tensor:
        if self._model is None:
            spec = importlib.util.find_spec("face_recognition_models")
            try:
                import dlib
            except ImportError as e:
                raise UsageError(f"teacher 'dlib-face' needs the packages dlib-bin and face-recognition-models ({e})")
            if spec is None or not spec.submodule_search_locations:
                raise UsageError("teacher 'dlib-face' needs the package face-recognition-models")
            # locate the weights without importing the package (its __init__ needs pkg_resources)
            path = Path(spec.submodule_search_locations[0]) / "models" / "dlib_face_recognition_resnet_model_v1.dat"
            self._model = dlib.face_recognition_model_v1(str(path))
        out = []
        for img in images:
            chip = (resize(np.asarray(img), 150).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            out.append(np.asarray(self._model.compute_face_descriptor(np.ascontiguousarray(chip))))
        return torch.tensor(np.stack(out), dtype=torch.float32)


class BottleneckIR(nn.Module):
    """face.evoLVe's bottleneck_IR unit (names kept so its checkpoints load)."""

    def __init__(self, cin: int, depth: int, stride: int):
        super().__init__()
        self.shortcut_layer = (
            nn.MaxPool2d(1, stride)
            if cin == depth
            else nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IR50(nn.Module):
    """IR-50 backbone of face.evoLVe (112x112 input, 512-d output)."""

    def __init__(self):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units, cin = [], 64
        for depth, n in ((64, 3), (128, 4), (256, 14), (512, 3)):
            units += [BottleneckIR(cin, depth, 2)] + [BottleneckIR(depth, depth, 1) for _ in range(n - 1)]
            cin = depth
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512), nn.Dropout(), nn.Flatten(), nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512)
        )

    def forward(self, x):
        return self.output_layer(self.body(self.input_layer(x)))


class IR50Face:
    """IR-50 loaded from a face.evoLVe checkpoint given with --set teacher_checkpoint=PATH."""

    modality = "face"
    dim = 512

    def __init__(self, options=None):
        self.checkpoint: str = options.checkpoint if options is not None else ""
        self._model = None

    @property
    def id(self) -> str:
        if not self.checkpoint or not Path(self.checkpoint).is_file():
            raise UsageError(
                "teacher 'ir50' needs --set teacher_checkpoint=PATH to a face.evoLVe IR-50 "
                f"backbone checkpoint (not found: {self.checkpoint!r})"
            )
        digest = hashlib.sha256(Path(self.checkpoint).read_bytes()).hexdigest()[:16]
        return f"ir50/{digest}"

    def encode(self, images: list) -> torch.Tensor:
        if self._model is None:
            model = IR50()
            state = torch.load(self.checkpoint, map_location="cpu")
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            try:
                model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
            except RuntimeError as e:
                raise UsageError(f"{self.checkpoint} is not an IR-50 backbone checkpoint: {e}") from None
            self._model = model.eval()
        x = torch.stack([resize(np.asarray(i), 112) for i in images])
        with torch.no_grad():
            return torch.cat([self._model((x[i : i + 64] - 0.5) / 0.5) for i in range(0, len(x), 64)])


class WeakFace:
    """The paper's weak teacher: a ResNet34 face model the harness trains on the training faces
    (identity labels), then freezes; its 512-d penultimate feature is the embedding. encode() gets the
    training faces first (as many as labels), then any faces to embed with the trained model."""

    modality = "face"
    dim = 512

    def __init__(self, options=None, epochs: int = 15):
        self.epochs = epochs
        self.id = f"face-weak-resnet34/e{epochs}/seed0"
        self.labels: np.ndarray | None = (
            np.asarray(options.train_labels) if options is not None and len(options.train_labels) else None
        )

    def encode(self, images: list) -> torch.Tensor:
        from torchvision.models import resnet34

        if self.labels is None:
            raise UsageError("the weak face teacher must be given the training identities first")
        torch.manual_seed(0)
        x = torch.stack([resize(np.asarray(i), 112) for i in images])
        x = (x - 0.5) / 0.5
        y = torch.as_tensor(self.labels)
        net = resnet34(num_classes=int(y.max()) + 1)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        with torch.enable_grad():  # the teacher cache calls encode() under no_grad
            for _ in range(self.epochs):
                for idx in torch.randperm(len(y), generator=g).split(64):  # the first len(labels) images are training faces
                    xb = torch.where(torch.rand(len(idx), 1, 1, 1, generator=g) < 0.5, x[idx].flip(3), x[idx])
                    loss = F.cross_entropy(net(xb), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        net.fc = nn.Identity()
        net.eval()
        with torch.no_grad():
            return torch.cat([net(x[i : i + 64]) for i in range(0, len(x), 64)])


TEACHERS.add(
    "dlib-face", DlibFace, "dlib ResNet face descriptor, 128-d, ships in PyPI face-recognition-models (offline; speaker default)"
)
TEACHERS.add("ir50", IR50Face, "IR-50 face model (face.evoLVe), 512-d, the paper's strong teacher: --set teacher_checkpoint=PATH")
TEACHERS.add("face-weak", WeakFace, "the paper's weak teacher: ResNet34 face model trained by the harness on the training faces")
