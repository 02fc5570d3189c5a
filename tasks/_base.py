"""The task contract: data as tensors, teacher tables, augmentation, task loss, evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from benchmark.types import StudentOut, Term


@dataclass
class Split:
    x: torch.Tensor          # uint8 student inputs (images [N, C, H, W], or audio)
    y: torch.Tensor          # int64 labels [N]
    key: torch.Tensor        # int64 teacher key per sample [N] (class for text, video for faces)


@dataclass
class TaskData:
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)   # logged as params (sizes, split rule, source)
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific (e.g. coarse labels)


class Task:
    """Subclasses: name, description, profiles {profile: RunConfig values}, and the methods below."""
    name: str = ""
    description: str = ""
    profiles: dict[str, dict[str, Any]] = {}
    selection_metric: str = "val_top1"   # chooses the best epoch; higher is better unless selection_mode == "min"
    selection_mode: str = "max"

    def load(self, cfg) -> TaskData:
        raise NotImplementedError

    def teacher_tables(self, cfg, data: TaskData, cache):
        raise NotImplementedError

    def augment(self, x: torch.Tensor, gen: torch.Generator | None, train: bool, cfg) -> torch.Tensor:
        raise NotImplementedError

    def loss_terms(self, s: StudentOut, y: torch.Tensor) -> dict[str, Term]:
        """The task loss as named terms; the one called 'ce' is weighted by the method's ce_weight."""
        return {"ce": Term(torch.nn.functional.cross_entropy(s.logits.float(), y, reduction="none"))}

    def hparam_defaults(self, cfg) -> dict[str, Any]:
        """Method hyperparameter defaults this task sets (by field name), e.g. margins per student."""
        return {}

    def evaluate(self, ctx, split: str) -> tuple[dict[str, float], dict[str, Any]]:
        """Metrics on 'val' or 'test' and any arrays to store (features for the t-SNE figure)."""
        raise NotImplementedError
