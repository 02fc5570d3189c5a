"""FitNet (Romero et al. 2015), vector-teacher adaptation: mean((r(x) - E_T)^2), lambda=100 (RepDistiller)."""
from dataclasses import dataclass

import torch
from torch import nn

from benchmark.types import Term
from benchmark.fields import bounded
from benchmark.method import Hparams, Method, choice, register


@dataclass
class FitNetHparams(Hparams):
    fitnet_weight: float = bounded(100.0, 0, None)
    hint: str = choice("embedding", "stage2", help="student hint: pooled F_S, or GAP of the 2nd stage map")
    regressor_bn: bool = False  # optional BN1d after the linear regressor (no ReLU: teacher embeddings are signed)


@register("fitnet", "FitNet hint loss: linear regressor of the student feature onto E_T, MSE, lambda=100")
class FitNet(Method):
    Hparams = FitNetHparams
    search_space = {"fitnet_weight": ("log", 1.0, 1000.0)}

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        d_in = dims.student if hp.hint == "embedding" else dims.map_channels[1]
        layers = [nn.Linear(d_in, dims.teacher)] + ([nn.BatchNorm1d(dims.teacher)] if hp.regressor_bn else [])
        self.regressor = nn.Sequential(*layers)
        if hp.hint == "embedding":
            self.match_connector = self.regressor

    def terms(self, s, t, y):
        x = s.embedding if self.hp.hint == "embedding" else torch.flatten(nn.functional.adaptive_avg_pool2d(s.maps[1], 1), 1)
        err = (self.regressor(x) - t.embedding) ** 2
        return {"hint": Term(err.mean(1), self.hp.fitnet_weight)}
