"""Image teachers for the same-modality track: one the harness trains itself (`img-trained`) or one loaded from
a checkpoint file the user names (`img-checkpoint`). Either is an architecture of the student registry or a
torchvision classification model by name (`tv:resnet18`, ...), frozen; it returns its penultimate features
(the input of its last Linear layer, read by a forward hook, so no wrapper class per model) and its logits.

`img-trained` trains `teacher_arch` with the harness's own training loop (the `baseline` method: cross-entropy
only) on the task's training split, with the recipe teacher_epochs / teacher_lr / teacher_seed and the run's
batch size, optimiser and schedule. The weights are cached under a content hash of the recipe and of the
training split, so one teacher serves every student run of that recipe; changing any part of the recipe
trains another. The key does not hash the code: a teacher cached by an older commit keeps serving, and the
code version that trained it is saved beside its weights and logged with every run (`teacher_trained_by`).
The teacher never sees the validation or test rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from benchmark.registry import TEACHERS, UsageError
from benchmark.types import chw


class ImageTeacher(nn.Module):
    """A frozen classifier: x -> (penultimate features, logits, stage maps). The stage maps are the stage
    outputs of a registry architecture (its StudentOut.maps) or, for a torchvision model, the outputs of its
    `layer1`..`layer4` read by forward hooks (an empty list for a model without them)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        last = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not last:
            raise UsageError("an image teacher needs a final nn.Linear classifier (its input is the teacher's feature)")
        self.head = last[-1]
        self.dim = self.head.in_features
        self._feat: torch.Tensor | None = None
        self._maps: dict[str, torch.Tensor] = {}
        self.head.register_forward_hook(lambda m, inp, out: setattr(self, "_feat", inp[0]))
        modules = dict(net.named_modules())
        self.map_layers = [] if hasattr(net, "stages") else [f"layer{i}" for i in range(1, 5) if f"layer{i}" in modules]
        for n in self.map_layers:
            modules[n].register_forward_hook(lambda m, i, o, n=n: self._maps.__setitem__(n, o))

    def train(self, mode: bool = True):  # always frozen: BatchNorm keeps its running statistics
        return super().train(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        self._maps = {}
        out = self.net(x)
        logits = out.logits if hasattr(out, "logits") else out
        maps = list(out.maps) if hasattr(out, "maps") else [self._maps[n] for n in self.map_layers]
        assert self._feat is not None, "the classifier's hook did not run"
        return torch.flatten(self._feat, 1), logits, maps

    def map_shapes(self, x: torch.Tensor) -> list[tuple[int, int, int]]:
        """(C, H, W) of each stage map for inputs like x (one no-grad forward pass)."""
        with torch.no_grad():
            return [chw(m) for m in self(x[:1])[2]]


def build_arch(arch: str, num_classes: int) -> nn.Module:
    """A student architecture of the registry (timm:<name> included), or `tv:<name>` for a torchvision model."""
    from benchmark.nets import student_builder, torchvision_model

    if arch.startswith("tv:"):  # the plain model (its checkpoints' keys), features by the teacher's own hook
        return torchvision_model(arch[3:], num_classes, f"teacher_arch '{arch}'")
    return student_builder(arch)(num_classes)


def load_checkpoint_teacher(path: str, arch: str, num_classes: int) -> tuple[ImageTeacher, str]:
    """Weights from a file: a state_dict, or a dict holding one under 'state_dict', 'model' or 'student'."""
    if not path:
        raise UsageError("teacher 'img-checkpoint' needs --set teacher_checkpoint=PATH (and teacher_arch=...)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"teacher_checkpoint {p}: no such file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"teacher_checkpoint {p} cannot be read: {type(e).__name__}: {e}") from None
    for k in ("state_dict", "model", "student"):
        if isinstance(state, dict) and isinstance(state.get(k), dict):
            state = state[k]
    net = build_arch(arch, num_classes)
    try:
        net.load_state_dict(state)
    except Exception as e:
        raise UsageError(f"teacher_checkpoint {p} does not fit teacher_arch '{arch}': {str(e).splitlines()[0]}") from None
    digest = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return ImageTeacher(net), f"img-checkpoint/{arch}/{digest}"


def recipe(cfg) -> dict:
    return {
        "arch": cfg.teacher_arch,
        "epochs": cfg.teacher_epochs,
        "lr": cfg.teacher_lr,
        "seed": cfg.teacher_seed,
        "batch_size": cfg.batch_size,
        "optimizer": cfg.optimizer,
        "momentum": cfg.momentum,
        "nesterov": cfg.nesterov,
        "weight_decay": cfg.weight_decay,
        "schedule": cfg.schedule,
        "lr_step_epochs": cfg.lr_step_epochs,
        "lr_gamma": cfg.lr_gamma,
        "lr_milestones": cfg.lr_milestones,
        "warmup_epochs": cfg.warmup_epochs,
        "image_size": cfg.image_size,
        "loop": "baseline (cross-entropy)",
    }


def teacher_key(cfg, data) -> str:
    spec = json.dumps({"recipe": recipe(cfg), "train": data.train_digest()}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:24]


def trained_teacher(cfg, task, data, cache, say=print) -> tuple[ImageTeacher, str, dict]:
    """The teacher of this recipe and training split: read from the cache, or trained once (under a folder lock,
    so processes starting together train it once) with the harness's own loop."""
    from benchmark.progress import Progress
    from benchmark.provenance import code_version
    from benchmark.teacher_cache import _folder_lock
    from benchmark.teacher_tables import TeacherTables
    from benchmark.trainer import Context

    key = teacher_key(cfg, data)
    folder = cache.root / "image-teachers"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.pt"
    with _folder_lock(folder):
        if not path.is_file():
            tcfg = replace(
                cfg,
                student=cfg.teacher_arch,
                epochs=cfg.teacher_epochs,
                lr=cfg.teacher_lr,
                seed=cfg.teacher_seed,
                compile=False,
                stop_after_epochs=0,
            )
            n_rows = max(int(s.key.max()) + 1 for s in (data.train, data.val, data.test))
            blank = TeacherTables("none", "", torch.zeros(n_rows, 1, 1))  # the baseline reads no teacher
            say(f"training the image teacher {cfg.teacher_arch} once ({cfg.teacher_epochs} epochs, cache key {key})", flush=True)
            ctx = Context(tcfg, task, data, blank, "baseline", {})
            ctx.label = f"teacher {cfg.teacher_arch}"
            t0, progress = time.perf_counter(), Progress(ctx.label, tcfg.epochs, "epoch")
            for epoch in range(tcfg.epochs):
                m = ctx.train_epoch(epoch)
                progress.update(epoch + 1, f"train loss {m['train_loss']:.3f}, train top-1 {m['train_top1']:.1f}")
            info = {
                "train_time_s": round(time.perf_counter() - t0, 1),
                "recipe": recipe(cfg),
                "device": str(ctx.device),
                "threads": torch.get_num_threads(),
                "code_version": code_version(),
            }
            tmp = path.with_suffix(".tmp")
            torch.save({"state_dict": ctx.student.state_dict(), "info": info}, tmp)
            tmp.replace(path)
        saved = torch.load(path, map_location="cpu", weights_only=False)
    net = build_arch(cfg.teacher_arch, data.num_classes)
    net.load_state_dict(saved["state_dict"])
    if getattr(net, "channels_last", False):
        net = net.to(memory_format=torch.channels_last)
    return ImageTeacher(net), f"img-trained/{cfg.teacher_arch}/{key}", saved["info"]


class _Marker:
    """Registry entries: the cifar100-kd task builds these teachers itself (they need the task's data)."""

    modality = "image"

    def __init__(self, options=None):
        raise UsageError("image teachers are built by an image task with a same-modality track (--task cifar100-kd)")


class TrainedImageTeacher(_Marker):
    pass


class CheckpointImageTeacher(_Marker):
    pass


TEACHERS.add(
    "img-trained",
    TrainedImageTeacher,
    "image classifier the harness trains once per recipe (teacher_arch, teacher_epochs, teacher_lr, teacher_seed)",
)
TEACHERS.add(
    "img-checkpoint",
    CheckpointImageTeacher,
    "image classifier from --set teacher_checkpoint=PATH (teacher_arch: a registry student or tv:<model>)",
)
