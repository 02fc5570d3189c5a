"""The evaluation contract: what the trainer hands a task to evaluate, and the pieces every task shares.

A task's `evaluate(ev, split)` sees only `EvalInputs`: the run's config, its own data, the frozen teacher
tables, the device, the method (in eval mode: its teacher-side map, its connector) and `embed`, the
student's forward pass in eval mode without gradients. It cannot reach the optimiser, the checkpoint,
the tracker or any other trainer state, and evaluating changes nothing (no BatchNorm buffer moves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.types import StudentOut


@dataclass(frozen=True)
class EvalInputs:
    cfg: Any  # the run's RunConfig (a copy)
    data: Any  # the task's own TaskData
    tables: Any  # TeacherTables: frozen teacher embeddings (and logits)
    device: torch.device
    method: Any  # the Method, in eval mode
    embed: Callable[[torch.Tensor], StudentOut]  # student forward (eval mode, no grad, autocast on GPU)


def student_in_teacher_space(method, f_s: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """L2-normalised student features in the space the method aligns with the teacher (raw F_S when the
    dimensions agree, else the method's connector); None when the method has no such map."""
    with torch.no_grad():
        s = method.student_match_features(f_s.to(device))
    return None if s is None else F.normalize(s.float(), dim=-1)


def teacher_in_shared_space(method, e_t: torch.Tensor) -> torch.Tensor:
    """L2-normalised teacher-side features the method aligns to (its projection head's F_T, or raw E_T)."""
    with torch.no_grad():
        return F.normalize(method.teacher_features(e_t).float(), dim=-1)


def feature_dump(method, e_t: torch.Tensor, f_s: torch.Tensor, label: np.ndarray, group: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of the t-SNE figure (Fig. 8): raw E_T, E_T on the head's frozen path, the projected teacher
    F_T and the student F_S of the same samples, with their labels and a grouping for the colours."""
    with torch.no_grad():
        return {
            "teacher_embedding": e_t.cpu().numpy(),
            "teacher_common": method.teacher_reference(e_t).float().cpu().numpy(),
            "projected_teacher": method.teacher_features(e_t).float().cpu().numpy(),
            "student_embedding": f_s.float().cpu().numpy(),
            "label": np.asarray(label),
            "group": np.asarray(group),
        }


def match_per_sample_teacher(ev, sp, emb: torch.Tensor, groups: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Matching accuracy and t-SNE arrays for a teacher with one embedding per sample (tables keyed by row):
    each test sample's student feature against class prototypes built from the teacher's training rows
    (match_proto: per row through the method's head, normalised, averaged per class; or the class mean
    placed in the shared space), and the features of a fixed random subset."""
    data, method, table = ev.data, ev.method, ev.tables.embedding
    with torch.no_grad():
        e = table[data.train.key.to(table.device), 0].float()
        y_tr = data.train.y.to(e.device)
        classes = range(data.num_classes)
        if ev.cfg.match_proto == "head_then_mean":
            f = method.teacher_features(e)
            proto = F.normalize(torch.stack([F.normalize(f[y_tr == c], dim=-1).mean(0) for c in classes]), dim=-1)
        else:
            proto = teacher_in_shared_space(method, torch.stack([e[y_tr == c].mean(0) for c in classes]))
        f_s = student_in_teacher_space(method, emb, ev.device)
        acc = float("nan") if f_s is None else ((f_s @ proto.t()).argmax(1).cpu() == sp.y).float().mean().item() * 100
        pick = torch.randperm(len(sp.y), generator=torch.Generator().manual_seed(0))[: ev.cfg.tsne_samples]
        e_t = table[sp.key[pick].to(table.device), 0]
        arrays = feature_dump(method, e_t, emb[pick], sp.y[pick].numpy(), groups[pick.numpy()])
    return acc, arrays
