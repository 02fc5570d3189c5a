"""The method contract: an nn.Module owning only its trainable extras, returning named loss terms."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from benchmark.fields import bounded, check_fields, choice
from benchmark.registry import METHODS, UsageError
from benchmark.types import Dims, StudentOut, TeacherOut, Term

# everything a method file needs, from this one module (see CONTRIBUTING's example)
__all__ = [
    "Dims",
    "Hparams",
    "Method",
    "StudentOut",
    "TeacherOut",
    "Term",
    "UsageError",
    "bounded",
    "choice",
    "form_field",
    "form_reads",
    "l2n",
    "register",
    "resolve_form",
    "stream_seed",
]


@dataclass
class Hparams:
    ce_weight: float = bounded(1.0, 0, None)  # weight of the task's cross-entropy term (gamma)


AnyHparams = Hparams  # a method's resolved hyperparameters (its own subclass; `Hparams` in a method's body is it)


def validate_hparams(hp: Hparams) -> Hparams:
    return check_fields(hp)


def l2n(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise L2 normalisation x / max(||x||, eps)."""
    return nn.functional.normalize(x, dim=1, eps=eps)


class Method(nn.Module):
    """Subclasses set `Hparams` (a dataclass of typed hyperparameters) and implement terms()."""

    name: ClassVar[str]  # set by @register
    Hparams: ClassVar[type[AnyHparams]] = Hparams
    # Optuna TPE search space: field -> ("float"|"log", low, high) or ("choice", [options])
    search_space: dict[str, tuple] = {}
    # True: terms() also receives index=[B] long tensor, each sample's position in the training set
    # (a memory bank over the training set, e.g. CRD). Any state kept across steps must live in the
    # module's state_dict (buffers, or get_extra_state) so that --resume is exact.
    wants_index: bool = False
    # The method's own named random streams of the run seed (stream_seed(dims.seed, name)), with fixed ids
    streams: ClassVar[dict[str, int]] = {}
    # Cross-modal matching when d_S != d_T: a module mapping F_S [B, d_S] to the teacher's side [B, d_T] (set it in
    # __init__ to one of the method's own trained modules, e.g. CLIP's student projection); unset: no matching.
    # Declared without a class default: nn.Module keeps submodules in _modules, and a class attribute would
    # shadow the one an instance sets
    match_connector: nn.Module | None
    # What terms() reads of the teacher: any of "embedding", "logits", "maps". The trainer fills only these
    # fields of TeacherOut and runs no live teacher at all when the set is empty (the baseline). The default
    # reads the embedding and the logits: a method that does not declare keeps working. A method whose reads
    # depend on its hyperparameters or on the teacher overrides reads() instead.
    teacher_reads: frozenset[str] = frozenset({"embedding", "logits"})

    @classmethod
    def reads(cls, hp: AnyHparams, teacher_has_maps: bool) -> frozenset[str]:
        """What terms() reads of the teacher with these hyperparameters and a teacher with(out) stage maps: the
        one declaration behind the trainer's filling of TeacherOut (an instance's `teacher_reads`) and the
        refusal, before any run, of a method that needs maps on a task whose teacher has none."""
        return cls.teacher_reads

    @classmethod
    def needs_teacher_maps(cls, hp: AnyHparams) -> bool:
        """True when these hyperparameters read the teacher's stage maps even where it has none (then refused
        in one line before any run, and left out of `--methods all` there)."""
        return "maps" in cls.reads(hp, teacher_has_maps=False)

    def __init__(self, dims: Dims, hp: AnyHparams):
        super().__init__()
        self.dims, self.hp = dims, validate_hparams(hp)
        self.teacher_reads = type(self).reads(self.hp, bool(dims.teacher_map_shapes))

    @classmethod
    def tunable(cls, hp: AnyHparams) -> dict[str, tuple]:
        """The search space for these resolved hyperparameters (TPE studies)."""
        return dict(cls.search_space)

    @property
    def ce_weight(self) -> float:
        return self.hp.ce_weight

    def terms(self, s: StudentOut, t: TeacherOut, y: torch.Tensor) -> dict[str, Term]:
        raise NotImplementedError

    def run_params(self) -> dict[str, Any]:
        """Facts about how this instance is built that every run records (MLflow params)."""
        return {}

    def post_step(self) -> None:
        """Called after each optimiser step (e.g. to clamp a learnable scale)."""

    # Cross-modal matching and t-SNE: which spaces the student and teacher features live in.
    def teacher_features(self, e_t: torch.Tensor) -> torch.Tensor:
        """The teacher-side feature this method aligns to (F_T for ours, raw E_T otherwise)."""
        return e_t

    def teacher_reference(self, e_t: torch.Tensor) -> torch.Tensor:
        """E_T placed in the student's feature space for joint plots (identity unless a method maps it)."""
        return e_t

    def student_match_features(self, f_s: torch.Tensor) -> torch.Tensor | None:
        """Raw F_S when it has the teacher-side dimension, else the method's connector, else None."""
        if f_s.shape[1] == self.teacher_feature_dim:
            return f_s
        conn = getattr(self, "match_connector", None)
        return conn(f_s) if conn is not None else None

    @property
    def teacher_feature_dim(self) -> int:
        return self.dims.teacher

    @property
    def match_space(self) -> str:
        if self.teacher_feature_dim == self.dims.student:
            return "raw_student"
        return "connector" if getattr(self, "match_connector", None) is not None else "undefined(d_S!=d_T, no connector)"


# Named random streams of one run seed: numpy SeedSequence children, so that no two share numbers. The
# harness's own here; a method's own in its class (`streams`), added when it is registered. An id is part of
# every result drawn from it: never renumber one.
STREAMS = {"init": 0, "data": 1, "teacher_shuffle": 4, "teacher_shuffle_augment": 5, "random_teacher": 6}


def stream_seed(seed: int, stream: str) -> int:
    """An independent seed for one named random stream of the run seed `seed` (the weight initialisation, the
    data order and augmentation, CRD's memory banks and its negatives, the teacher controls)."""
    state = np.random.SeedSequence(seed, spawn_key=(STREAMS[stream],)).generate_state(1, np.uint64)[0]
    return int(state & np.uint64(2**63 - 1))


def register(name: str, description: str):
    """Class decorator: registers a Method subclass once, under its name, with its own random streams."""

    def deco(cls: type[Method]) -> type[Method]:
        for stream, sid in getattr(cls, "streams", {}).items():
            if STREAMS.get(stream, sid) != sid or (sid in STREAMS.values() and STREAMS.get(stream) != sid):
                raise UsageError(
                    f"method '{name}': its random stream '{stream}' (id {sid}) clashes with the streams "
                    f"already declared ({STREAMS}); give it a name and an id of its own"
                )
            STREAMS[stream] = sid
        cls.name = name
        METHODS.add(name, cls, description)
        return cls

    return deco


def hparam_fields(cls: type[Method]) -> dict[str, Any]:
    return {f.name: f for f in fields(cls.Hparams)}


FORMS = ("auto", "maps", "vector")


def form_field(help_extra: str = "") -> Any:
    """The `<method>_form` hyperparameter of a method with a published map form and a vector adaptation."""
    return choice(
        "auto",
        "maps",
        "vector",
        help="maps: the published form on the teacher's stage maps; vector: the "
        "adaptation to a teacher embedding; auto: maps when the task's teacher has them" + help_extra,
    )


def form_reads(form: str, teacher_has_maps: bool) -> frozenset[str]:
    """What a method with a `<method>_form` field reads: the maps in its map form (`maps`, or `auto` with a
    teacher that has them), the embedding in its vector form."""
    return frozenset({"maps" if form == "maps" or (form == "auto" and teacher_has_maps) else "embedding"})


def resolve_form(method: str, form: str, dims: Dims) -> str:
    """`auto` -> `maps` when the teacher gives stage maps, else `vector`; `maps` without them is refused."""
    if form == "auto":
        return "maps" if dims.teacher_map_shapes else "vector"
    if form == "maps" and not dims.teacher_map_shapes:
        raise UsageError(
            f"method '{method}': {method}_form=maps needs a teacher with stage maps; this task's "
            f"teacher gives none (use {method}_form=vector, or a task whose teacher has maps)"
        )
    return form
