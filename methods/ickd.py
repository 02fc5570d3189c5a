"""ICKD-C (Liu et al. 2021), lambda = 2.5 (the official CIFAR-100 scripts).

maps (the published form, chosen when the teacher has stage maps): the student's last stage map goes through
a 1x1 conv (no bias) + BN to the teacher's channel count C_t; per sample, each network's inter-channel
correlation G = A A^T (C_t x C_t, over the spatial positions of its own map) is row-L2-normalised, and
L = sum_b ||G_S,b - G_T,b||_F^2 / (B C_t). The spatial sizes may differ (G is channel x channel).

vector (the adaptation for a teacher that is an embedding, methods/README.md): (I2) the batch plays the
spatial positions, G = X^T X over the batch (d x d) after a Linear + BN1d connector, or (I1) H = W = 1.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.method import Hparams, Method, Term, bounded, choice, form_field, form_reads, register, resolve_form


def ickd_map_loss(a_s: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """Per sample ||rownorm(A_S A_S^T) - rownorm(A_T A_T^T)||_F^2 / C over [B, C, H, W] maps -> [B]
    (its batch mean is the reference's sum / (B C))."""
    b, c = a_s.shape[:2]
    f_s, f_t = a_s.reshape(b, c, -1), a_t.reshape(b, c, -1)
    g_s = F.normalize(torch.bmm(f_s, f_s.transpose(1, 2)), dim=2)
    g_t = F.normalize(torch.bmm(f_t, f_t.transpose(1, 2)), dim=2)
    return ((g_s - g_t) ** 2).flatten(1).sum(1) / c


def ickd_batch_loss(x_s: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """(I2) G = X^T X over the batch (d x d), rows L2-normalised, ||G_S - G_T||_F^2 / d."""
    g_s = F.normalize(x_s.t() @ x_s, dim=1)
    g_t = F.normalize(x_t.t() @ x_t, dim=1)
    return ((g_s - g_t) ** 2).sum() / x_s.shape[1]


def ickd_degenerate_loss(x_s: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """(I1) per-sample G = v v^T (H=W=1), rows normalised; per-sample ||.||_F^2 / d -> [B]."""
    g_s = F.normalize(x_s.unsqueeze(2) * x_s.unsqueeze(1), dim=2)
    g_t = F.normalize(x_t.unsqueeze(2) * x_t.unsqueeze(1), dim=2)
    return ((g_s - g_t) ** 2).sum(dim=(1, 2)) / x_s.shape[1]


@dataclass
class ICKDHparams(Hparams):
    ickd_weight: float = bounded(2.5, 0, None)
    ickd_form: str = form_field()
    ickd_mode: str = choice("batch", "degenerate", help="vector form: I2 batch-as-spatial (recommended) or I1 H=W=1")


@register(
    "ickd",
    "ICKD inter-channel correlation of the last stage maps with a 1x1 conv+BN embedding (maps), or "
    "batch-as-spatial with a Linear+BN connector (vector teachers), lambda=2.5",
)
class ICKD(Method):
    Hparams = ICKDHparams
    search_space = {"ickd_weight": ("log", 0.1, 10.0)}

    @classmethod
    def reads(cls, hp, teacher_has_maps):
        return form_reads(hp.ickd_form, teacher_has_maps)

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        self.form = resolve_form("ickd", hp.ickd_form, dims)
        if self.form == "maps":
            c_t = dims.teacher_map_shapes[-1][0]
            self.connector = nn.Sequential(nn.Conv2d(dims.map_channels[-1], c_t, 1, bias=False), nn.BatchNorm2d(c_t))
            return
        self.connector = nn.Sequential(nn.Linear(dims.student, dims.teacher, bias=False), nn.BatchNorm1d(dims.teacher))
        self.match_connector = self.connector

    def terms(self, s, t, y):
        if self.form == "maps":
            return {"ickd": Term(ickd_map_loss(self.connector(s.maps[-1]), t.maps[-1]), self.hp.ickd_weight)}
        x_s = self.connector(s.embedding)
        fn = ickd_batch_loss if self.hp.ickd_mode == "batch" else ickd_degenerate_loss
        return {"ickd": Term(fn(x_s, t.embedding), self.hp.ickd_weight)}

    def run_params(self):
        return {"ickd_form": self.form}
