"""The data contracts between task, student, teacher cache, method and trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def chw(m: torch.Tensor) -> tuple[int, int, int]:
    """(C, H, W) of a stage map [B, C, H, W]."""
    c, h, w = (int(d) for d in m.shape[1:])
    return c, h, w


@dataclass
class StudentOut:
    maps: list[torch.Tensor]  # stage outputs, [B, C_l, H_l, W_l]
    embedding: torch.Tensor  # F_S, [B, d_S]
    logits: torch.Tensor  # z_S = W F_S + c, [B, K]
    classifier: nn.Module  # the student's linear classifier W (shared classifier reuses it)

    def upcast(self) -> "StudentOut":
        """The same outputs with half/bfloat16 tensors in float32 (losses run in fp32 after a bf16 forward)."""

        def f(x):
            return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x

        return StudentOut([f(m) for m in self.maps], f(self.embedding), f(self.logits), self.classifier)


@dataclass
class TeacherOut:
    """What the frozen teacher gives a method for one batch. The trainer fills only what the method declares in
    `Method.teacher_reads` (a field it did not declare may be None), and runs no live teacher for a method that
    reads nothing (the baseline)."""

    embedding: torch.Tensor | None = None  # E_T, raw frozen teacher embedding, [B, d_T]
    logits: torch.Tensor | None = None  # teacher logits over the K classes (KD), [B, K]
    maps: list[torch.Tensor] | None = None  # the teacher's stage maps [B, C_l, H_l, W_l], shallow to deep, on
    #                                           the student's augmented batch (image teachers in the loop only)


@dataclass
class Dims:
    """What a method needs to size its trainable extras."""

    student: int  # d_S
    teacher: int  # d_T
    num_classes: int  # K
    map_channels: list[int] = field(default_factory=list)  # C_l of each stage map
    map_shapes: list[tuple[int, int, int]] = field(default_factory=list)  # (C_l, H_l, W_l) of the student's stage
    #   maps for one input (filled when the teacher has maps; a map-to-map regressor is sized from them)
    teacher_map_shapes: list[tuple[int, int, int]] = field(default_factory=list)  # (C, H, W) of the teacher's
    #   stage maps; empty: this task's teacher has none (a vector teacher: text, faces, a cached table)
    train_size: int = 0  # N, training samples (a memory bank over the training set; 0: unknown)
    total_steps: int = 0  # optimiser steps of the whole run (a warm-up in steps; 0: unknown)
    train_labels: torch.Tensor | None = None  # [N] class of each training sample (CRD's other-class negatives; None: unknown)
    seed: int = 0  # the run seed: a method's own random streams derive from it (benchmark.method.stream_seed)


@dataclass
class Term:
    """One named loss term: a per-sample vector [B] or a batch scalar, and its weight."""

    value: torch.Tensor
    weight: float = 1.0

    def weighted_mean(self) -> torch.Tensor:
        return self.weight * self.value.mean()
