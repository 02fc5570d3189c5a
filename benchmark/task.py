"""The task contract: data as tensors, teacher tables, augmentation, task loss, evaluation."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmark.types import StudentOut, Term


class CrossEntropyTerms(nn.Module):
    def forward(self, s: StudentOut, y: torch.Tensor) -> dict[str, Term]:
        return {"ce": Term(nn.functional.cross_entropy(s.logits.float(), y, reduction="none"))}


@dataclass
class Trials:
    """Verification trials as index pairs into a split, with 1 (same identity) / 0 labels."""

    left: torch.Tensor
    right: torch.Tensor
    labels: np.ndarray


@dataclass
class Split:
    x: Any  # student inputs: uint8 images [N, C, H, W], or an AudioBank
    y: torch.Tensor  # int64 labels [N]
    key: torch.Tensor  # int64 teacher key per sample [N] (class for text, video for faces)
    trials: Trials | None = None  # verification trials over this split (speaker validation)


@dataclass
class TaskData:
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)  # logged as params (sizes, split rule, source)
    class_groups: torch.Tensor | None = None  # a group per class (CIFAR-100 superclass), figure colours

    def train_digest(self) -> str:
        """sha256 of the training split alone (what a teacher the harness trains learns from)."""
        h = hashlib.sha256("\x1f".join(self.class_names).encode())
        h.update(self.train.y.numpy().tobytes())
        if isinstance(self.train.x, torch.Tensor):
            h.update(self.train.x.numpy().tobytes())
        return h.hexdigest()

    def digest(self) -> str:
        """sha256 of what a run trains and is tested on: class names, every split's labels, its images when
        they are tensors, and the source archive's hash when the task knows it (logged as the MLflow dataset)."""
        h = hashlib.sha256("\x1f".join(self.class_names).encode())
        h.update(str(self.info.get("data_source_sha256", "")).encode())
        for sp in (self.train, self.val, self.test):
            h.update(sp.y.numpy().tobytes())
            if isinstance(sp.x, torch.Tensor):
                h.update(sp.x.numpy().tobytes())
        return h.hexdigest()


class Task:
    """Subclasses: name, profiles {profile: RunConfig values} with a note each, the method defaults they
    set (hparam_defaults), and the methods below. A task's module states all of its defaults in one place."""

    name: str = ""
    description: str = ""
    # The task's own run-config fields, beside RunConfig's: a dataclass (benchmark.fields.bounded / choice for
    # ranges and options), or None. Profiles may set them; `--set`, experiment files, the logged parameters,
    # `list --profiles` and the report's setting headings see them; the task reads them as `cfg.<name>`.
    Fields: type | None = None
    profiles: dict[str, dict[str, Any]] = {}
    profile_notes: dict[str, str] = {}
    data_folder: str | None = None  # its folder under the data root when --data-dir is absent (None: required)
    # True when the task's teacher gives its stage maps in the loop (TeacherOut.maps): methods that need them
    # (at; fitnet/sp/ickd with *_form=maps) are refused before any run on a task without them
    teacher_maps: bool = False
    # the negative controls this task's teachers can stand in for (RunConfig.teacher_control): every task can give
    # each training sample another sample's teacher outputs, or its class's mean ones; `random` needs a teacher with
    # an untrained form
    teacher_controls: tuple[str, ...] = ("shuffled", "class_mean", "label_smoothing")
    # the run-config values of the setting the report's figures show when a store holds a sweep of this task
    # (the synthetic sweep's gamma = 1); a confirmatory comparison is a committed protocol's (protocols/), not
    # a task's
    main_setting: tuple[tuple[str, Any], ...] = ()
    # a method that must beat the baseline in every setting of this task (KD on a same-modality task): when it
    # does not, the report says so first, and a null result of the other methods in that setting means nothing
    positive_control: str | None = None
    selection_metric: str = "val_top1"  # chooses the best epoch; higher is better unless selection_mode == "min"
    selection_mode: str = "max"
    # (metric, label) shown in the printed summary and the results table
    summary_metrics: list[tuple[str, str]] = [
        ("test_top1", "test top-1 (last epoch)"),
        ("test_top1_at_best_val", "test top-1 (best-val epoch)"),
        ("match_acc", "matching acc"),
    ]

    def load(self, cfg) -> TaskData:
        raise NotImplementedError

    def teacher_tables(self, cfg, data: TaskData, cache):
        raise NotImplementedError

    def data_for_seed(self, cfg, data: TaskData, tables, cache):
        """(data, tables) for the run seed cfg.seed: those already loaded, unless the task draws its data per seed."""
        return data, tables

    def augment(self, x: torch.Tensor, gen: torch.Generator | None, train: bool, cfg) -> torch.Tensor:
        raise NotImplementedError

    def make_loss(self, num_classes: int, embed_dim: int) -> nn.Module:
        """The task loss as a module (it may own parameters) returning named terms; the term called 'ce'
        is weighted by the method's ce_weight."""
        return CrossEntropyTerms()

    def steps_per_epoch(self, split: Split, batch_size: int) -> int:
        return len(split.y) // batch_size  # drop_last: equal-size batches

    def epoch_batches(self, split: Split, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
        order = torch.randperm(len(split.y), generator=gen)
        return [order[i * batch_size : (i + 1) * batch_size] for i in range(self.steps_per_epoch(split, batch_size))]

    def train_inputs(self, split: Split, idx: torch.Tensor, gen: torch.Generator, cfg) -> torch.Tensor:
        """The raw inputs of a training batch (before augment); tasks reading from disk override this."""
        return split.x[idx]

    def hparam_defaults(self, cfg) -> dict[str, Any]:
        """Method hyperparameter defaults this task sets (by field name), e.g. margins per student."""
        return {}

    def evaluate(self, ev, split: str) -> tuple[dict[str, float], dict[str, Any]]:
        """Metrics on 'val' or 'test' and any arrays to store (features for the t-SNE figure), from the
        benchmark.evaluation.EvalInputs `ev` alone."""
        raise NotImplementedError
