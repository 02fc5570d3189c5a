"""ICKD-C (Liu et al. 2021), vector-teacher adaptation (methods/README.md): channel correlation over the batch."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.types import Term
from benchmark.fields import bounded
from benchmark.method import Hparams, Method, choice, fp, register


def ickd_batch_loss(x_s: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """(I2) G = X^T X over the batch (d x d), rows L2-normalised, ||G_S - G_T||_F^2 / d."""
    g_s = F.normalize(fp(x_s).t() @ fp(x_s), dim=1)
    g_t = F.normalize(fp(x_t).t() @ fp(x_t), dim=1)
    return ((g_s - g_t) ** 2).sum() / x_s.shape[1]


def ickd_degenerate_loss(x_s: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """(I1) per-sample G = v v^T (H=W=1), rows normalised; per-sample ||.||_F^2 / d -> [B]."""
    g_s = F.normalize(fp(x_s).unsqueeze(2) * fp(x_s).unsqueeze(1), dim=2)
    g_t = F.normalize(fp(x_t).unsqueeze(2) * fp(x_t).unsqueeze(1), dim=2)
    return ((g_s - g_t) ** 2).sum(dim=(1, 2)) / x_s.shape[1]


@dataclass
class ICKDHparams(Hparams):
    ickd_weight: float = bounded(2.5, 0, None)
    ickd_mode: str = choice("batch", "degenerate", help="I2 batch-as-spatial (recommended) or I1 H=W=1")


@register("ickd", "ICKD inter-channel correlation (batch-as-spatial), Linear+BN connector, lambda=2.5")
class ICKD(Method):
    Hparams = ICKDHparams
    search_space = {"ickd_weight": ("log", 0.1, 10.0)}

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        self.connector = nn.Sequential(nn.Linear(dims.student, dims.teacher, bias=False), nn.BatchNorm1d(dims.teacher))
        self.match_connector = self.connector

    def terms(self, s, t, y):
        x_s = self.connector(s.embedding)
        fn = ickd_batch_loss if self.hp.ickd_mode == "batch" else ickd_degenerate_loss
        return {"ickd": Term(fn(x_s, t.embedding), self.hp.ickd_weight)}
