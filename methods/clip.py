"""CLIP loss (Radford et al. 2021; open_clip ClipLoss): symmetric InfoNCE with a learnable, clamped logit scale."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.method import Hparams, Method, Term, bounded, choice, l2n, register


@dataclass
class CLIPHparams(Hparams):
    clip_weight: float = bounded(1.0, 0, None)
    clip_targets: str = choice("diagonal", "label_aware", help="vanilla diagonal targets, or uniform over same-class columns")


@register("clip", "CLIP symmetric InfoNCE between F_S and E_T, learnable temperature init 1/0.07, clamp at 100")
class CLIP(Method):
    teacher_reads = frozenset({"embedding"})
    Hparams = CLIPHparams
    search_space = {"clip_weight": ("log", 0.1, 10.0)}

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        self.g_s = nn.Linear(dims.student, dims.teacher) if dims.student != dims.teacher else nn.Identity()
        if dims.student != dims.teacher:
            self.match_connector = self.g_s
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def terms(self, s, t, y):
        a, b = l2n(self.g_s(s.embedding)), l2n(t.embedding)
        z = self.logit_scale.exp() * a @ b.t()
        if self.hp.clip_targets == "diagonal":
            target = torch.arange(len(y), device=y.device)
            loss = 0.5 * (F.cross_entropy(z, target) + F.cross_entropy(z.t(), target))
        else:
            same = (y[:, None] == y[None, :]).to(z.dtype)
            target = same / same.sum(1, keepdim=True)
            loss = 0.5 * (F.cross_entropy(z, target) + F.cross_entropy(z.t(), target))
        return {"clip": Term(loss, self.hp.clip_weight)}

    def post_step(self):
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(100))
