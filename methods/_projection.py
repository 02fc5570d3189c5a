"""Pieces of the proposed method (Zhao et al. 2025, Sec. 3.2-3.3): projection head and margin distance."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.method import Hparams, Method, bounded, choice, l2n


class ProjectionHead(nn.Module):
    """F_T = alpha * skip(E_T) + (1 - alpha) * MLP(E_T); skip is identity when d_out == d_T (A1 in methods/README.md)."""

    def __init__(self, d_t: int, d_out: int, alpha: float, hidden: int = 0, layers: int = 2):
        super().__init__()
        self.alpha = alpha
        hidden = hidden or d_t
        self.mlp = (nn.Sequential(nn.Linear(d_t, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out))
                    if layers == 2 else nn.Linear(d_t, d_out))
        self.skip = nn.Identity() if d_out == d_t else nn.Linear(d_t, d_out)

    def forward(self, e_t: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.skip(e_t) + (1 - self.alpha) * self.mlp(e_t)


def alpha_path(d_t: int, d_s: int) -> str:
    """What the alpha-weighted path of the head is: the frozen E_T (the paper), or a learned map when d_T != d_S."""
    if d_t == d_s:
        return "frozen_identity"
    return f"learned_linear_{d_t}to{d_s}"


def margin_distance(f_s: torch.Tensor, f_t: torch.Tensor, feat_dist: str, margin: float,
                    margin_deg: float, margin_mode: str) -> torch.Tensor:
    """Per-sample soft-constrained distance max(D - m, 0) (Eq. 5-6), methods/README.md A2, A3."""
    if feat_dist == "cos":
        d = 1 - F.cosine_similarity(f_s, f_t, dim=1, eps=1e-8)
        theta = math.radians(margin_deg)
        m = 0.0 if margin_deg == 0 else ((1 - math.cos(theta)) if margin_mode == "angle" else math.cos(theta))
    elif feat_dist == "l2sq_norm_sum":
        d, m = ((l2n(f_s) - l2n(f_t)) ** 2).sum(1), margin
    elif feat_dist == "l2sq_raw_mean":
        d, m = ((f_s - f_t) ** 2).mean(1), margin
    else:  # l2sq_raw_sum
        d, m = ((f_s - f_t) ** 2).sum(1), margin
    return torch.clamp(d - m, min=0.0)


@dataclass
class OursHparams(Hparams):
    alpha: float = bounded(0.6, 0, 1)                 # weight of the frozen embedding in F_T (Tables 5, 10)
    head_hidden: int = bounded(0, 0, None)               # 0: hidden size = d_T (A1 in methods/README.md)
    head_layers: int = bounded(2, 1, 2)               # 2-layer MLP (recommended) or 1 linear layer
    feat_dist: str = choice("l2sq_norm_sum", "l2sq_raw_mean", "l2sq_raw_sum", "cos",
                            help="distance D of the feature-level loss (A3 in methods/README.md; cos for speakers)")
    margin: float = bounded(0.09, 0, None)               # m for the l2 distances: a squared radius r^2 (Table 12)
    margin_deg: float = bounded(30.0, 0, 180)           # angle for feat_dist=cos (Table 6)
    margin_mode: str = choice("angle", "distance", help="cos margin: R2 zero when theta<=deg, or R1 literal m=cos(deg)")
    feature_weight: float = bounded(1.0, 0, None)        # lambda_f (Eq. 1 has none: 1)


class OursBase(Method):
    """Shared by the three variants: a trainable projection head on the frozen teacher embedding."""
    Hparams = OursHparams
    search_space = {"alpha": ("float", 0.0, 1.0), "margin": ("float", 0.0, 0.25), "margin_deg": ("float", 0.0, 60.0)}

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        self.head = ProjectionHead(dims.teacher, dims.student, hp.alpha, hp.head_hidden, hp.head_layers)

    @classmethod
    def tunable(cls, hp) -> dict[str, tuple]:
        unused = "margin" if hp.feat_dist == "cos" else "margin_deg"  # one margin applies per distance
        return {k: v for k, v in cls.search_space.items() if k != unused}

    def teacher_features(self, e_t: torch.Tensor) -> torch.Tensor:
        return self.head(e_t)

    def run_params(self) -> dict:
        return {"alpha_path": alpha_path(self.dims.teacher, self.dims.student)}

    @property
    def teacher_feature_dim(self) -> int:
        return self.dims.student  # the head maps E_T into the student's space

    def teacher_reference(self, e_t: torch.Tensor) -> torch.Tensor:
        return self.head.skip(e_t)  # the frozen path of the head: E_T itself when d_S == d_T

    def feature_loss(self, s, f_t) -> torch.Tensor:
        hp = self.hp
        return margin_distance(s.embedding, f_t, hp.feat_dist, hp.margin, hp.margin_deg, hp.margin_mode)
