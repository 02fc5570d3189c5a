"""Quality-based adaptive sample weights (Sec. 3.4, Eq. 11), after AdaFace's norm scaler (A7-A9 in methods/README.md)."""
from __future__ import annotations

import torch
from torch import nn

from benchmark import distributed


class QualityWeights(nn.Module):
    """w_i = w_base + clip(h (Q_i - mu) / (sigma + 1e-3), -1, 1) with EMA mu/sigma of feature norms."""

    def __init__(self, source: str = "both_mean", w_base: float = 1.0, h: float = 1 / 3,
                 momentum: float = 0.01, sigma: str = "std", clip: bool = True):
        super().__init__()
        self.source, self.w_base, self.h, self.momentum, self.sigma_kind, self.clip = source, w_base, h, momentum, sigma, clip
        for k in ("t", "s"):
            self.register_buffer(f"mu_{k}", torch.zeros(()))
            self.register_buffer(f"sigma_{k}", torch.ones(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def _z(self, q: torch.Tensor, k: str) -> torch.Tensor:
        mu, sigma = getattr(self, f"mu_{k}"), getattr(self, f"sigma_{k}")
        if self.training:
            with torch.no_grad():  # under torchrun: the statistics of the global batch, the same on every rank
                q_all = distributed.gather_cat(q)
                b_mu = q_all.mean()
                b_sigma = q_all.std() if self.sigma_kind == "std" else q_all.var()
                if not bool(self.initialised):  # first batch initialises (AdaFace's 20/100 are face-specific)
                    mu.copy_(b_mu), sigma.copy_(b_sigma)
                else:
                    mu.mul_(1 - self.momentum).add_(self.momentum * b_mu)
                    sigma.mul_(1 - self.momentum).add_(self.momentum * b_sigma)
        z = self.h * (q - mu) / (sigma + 1e-3)
        return z.clamp(-1, 1) if self.clip else z

    def forward(self, e_t: torch.Tensor, f_s: torch.Tensor) -> torch.Tensor:
        q_t = e_t.detach().norm(dim=1).clamp(0.001, 100)
        q_s = f_s.detach().norm(dim=1).clamp(0.001, 100)
        z_t, z_s = self._z(q_t, "t"), self._z(q_s, "s")
        if self.training:
            self.initialised.fill_(True)
        z = {"teacher": z_t, "student": z_s, "both_mean": (z_t + z_s) / 2, "both_min": torch.minimum(z_t, z_s)}[self.source]
        return (self.w_base + z).detach()
