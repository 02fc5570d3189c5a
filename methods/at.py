"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017), as RepDistiller's CIFAR-100 runs: beta = 1000, p = 2.

For each pair of stage maps (student stage l with teacher stage l, from the first stage on, as many pairs as
the shorter network has stages), the attention map of a [B, C, H, W] map f is
a(f) = normalise_rows(mean_c |f|^p) over the H*W positions; when the spatial sizes differ, the larger map is
average-pooled to the smaller size first. The loss is sum over pairs of mean_{b, hw} (a(f_S) - a(f_T))^2.
It needs the teacher's stage maps: on a task whose teacher is an embedding (text, faces) it is refused.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.method import Hparams, Method, Term, UsageError, bounded, register


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    return F.normalize(f.abs().pow(p).mean(1).flatten(1), dim=1)


def at_pair(f_s: torch.Tensor, f_t: torch.Tensor, p: float) -> torch.Tensor:
    """[B]: mean over positions of the squared difference of the two attention maps."""
    h_s, h_t = f_s.shape[2], f_t.shape[2]
    if h_s > h_t:
        f_s = F.adaptive_avg_pool2d(f_s, (h_t, f_t.shape[3]))
    elif h_s < h_t:
        f_t = F.adaptive_avg_pool2d(f_t, (h_s, f_s.shape[3]))
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean(1)


@dataclass
class ATHparams(Hparams):
    at_weight: float = bounded(1000.0, 0, None)
    at_p: float = bounded(2.0, 0, None, lo_open=True)


@register(
    "at",
    "attention transfer: normalised channel means of |f|^2 of every stage pair, beta=1000 (needs a "
    "teacher with stage maps: cifar100-kd)",
)
class AT(Method):
    Hparams = ATHparams
    teacher_reads = frozenset({"maps"})
    search_space = {"at_weight": ("log", 10.0, 1e4)}

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        if not dims.teacher_map_shapes:
            raise UsageError("method 'at' needs the teacher's stage maps; this task's teacher gives none")
        self.pairs = min(len(dims.map_channels), len(dims.teacher_map_shapes))

    def terms(self, s, t, y):
        loss = sum(at_pair(a, b, self.hp.at_p) for a, b in zip(s.maps[: self.pairs], t.maps[: self.pairs]))
        return {"at": Term(loss, self.hp.at_weight)}

    def run_params(self):
        return {"at_stage_pairs": self.pairs}
