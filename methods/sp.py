"""SP (Tung & Mori 2019): ||rownorm(G_T) - rownorm(G_S)||_F^2 / B^2 with G = X X^T; lambda=3000."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.types import Term
from benchmark.fields import bounded
from benchmark.method import Hparams, Method, choice, fp, register


def sp_loss(x_s: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    b = x_s.shape[0]
    x_s, x_t = fp(x_s.reshape(b, -1)), fp(x_t.reshape(b, -1))
    g_s = F.normalize(x_s @ x_s.t(), dim=1)
    g_t = F.normalize(x_t @ x_t.t(), dim=1)
    return ((g_t - g_s) ** 2).sum() / (b * b)


@dataclass
class SPHparams(Hparams):
    sp_weight: float = bounded(3000.0, 0, None)
    sp_input: str = choice("last_map", "embedding", help="student side: last stage map (reference) or pooled F_S")


@register("sp", "similarity-preserving KD on the B x B similarity of the last stage map vs E_T, lambda=3000")
class SP(Method):
    Hparams = SPHparams
    search_space = {"sp_weight": ("log", 100.0, 1e4)}

    def terms(self, s, t, y):
        x_s = s.maps[-1] if self.hp.sp_input == "last_map" else s.embedding
        return {"sp": Term(sp_loss(x_s, t.embedding), self.hp.sp_weight)}
