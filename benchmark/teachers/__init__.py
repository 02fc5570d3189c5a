"""Frozen teachers, text and face side by side, in one registry.

The registry holds teacher *classes*; a task builds a fresh instance per run with `build_teacher(name,
options)`, so nothing a run sets (a checkpoint, the training identities) leaks into a registered object.
Every teacher has `id` (part of the embedding cache key), `modality`, `dim` and `encode(inputs)`.
Embeddings are computed once per cache key by benchmark.teacher_cache.TeacherCache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmark.registry import TEACHERS


@dataclass(frozen=True)
class TeacherOptions:
    """What a run may tell a teacher: a checkpoint file, and the training identities (weak face teacher)."""

    checkpoint: str = ""
    train_labels: tuple[int, ...] = field(default_factory=tuple)
    untrained: bool = False  # the negative control teacher_control=random: the architecture at its seeded init


def build_teacher(name: str, options: TeacherOptions | None = None) -> Any:
    return TEACHERS.get(name)(options or TeacherOptions())


def teacher_class(name: str) -> Any:
    """The registered class (its modality and dim are class attributes, known without building it)."""
    return TEACHERS.get(name)


from benchmark.teachers import face, image, text, vector  # noqa: E402,F401  (registers every teacher)
