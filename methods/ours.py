"""The paper's method (Zhao et al. 2025, "Cross-Modal Distillation for Widely Differing Modalities"), in one module.

A frozen teacher embedding E_T (Eq. 2) passes through a trainable projection head,
F_T = alpha * E_T + (1 - alpha) * MLP(E_T) (Eq. 3-4: `ProjectionHead`), and the student feature F_S is
drawn towards F_T by one of two soft constraints:

- feature level (Sec. 3.3.1): the hard distance of Eq. 5 relaxed by a margin, max(D(F_S, F_T) - m, 0)
  per sample (Eq. 6: `margin_distance`), registered as `ours_feature`;
- classifier level (Sec. 3.3.2): the student's classifier W classifies both F_S and F_T (Eq. 7-9: CE over
  the 2B rows [F_S; F_T]) plus beta times the squared logit difference (Eq. 10), registered as
  `ours_classifier`;

and, as `ours_feature_quality`, the feature-level loss weighted per sample by the feature-norm quality of
Sec. 3.4 (Eq. 11: `QualityWeights`, after AdaFace's norm scaler). The total is Eq. 1: the task loss plus
these terms. Where the paper is silent, the readings chosen and their alternatives are A1-A9 in
methods/README.md; each is a hyperparameter, recorded in every run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark import distributed
from benchmark.method import Hparams, Method, Term, bounded, choice, l2n, register


class ProjectionHead(nn.Module):
    """F_T = alpha * skip(E_T) + (1 - alpha) * MLP(E_T) (Eq. 4); skip is identity when d_out == d_T (A1)."""

    def __init__(self, d_t: int, d_out: int, alpha: float, hidden: int = 0, layers: int = 2):
        super().__init__()
        self.alpha = alpha
        hidden = hidden or d_t
        self.mlp = (
            nn.Sequential(nn.Linear(d_t, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out))
            if layers == 2
            else nn.Linear(d_t, d_out)
        )
        self.skip = nn.Identity() if d_out == d_t else nn.Linear(d_t, d_out)

    def forward(self, e_t: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.skip(e_t) + (1 - self.alpha) * self.mlp(e_t)


def alpha_path(d_t: int, d_s: int) -> str:
    """What the alpha-weighted path of the head is: the frozen E_T (the paper), or a learned map when d_T != d_S."""
    if d_t == d_s:
        return "frozen_identity"
    return f"learned_linear_{d_t}to{d_s}"


def margin_distance(
    f_s: torch.Tensor, f_t: torch.Tensor, feat_dist: str, margin: float, margin_deg: float, margin_mode: str
) -> torch.Tensor:
    """Per-sample soft-constrained distance max(D - m, 0) (Eq. 5-6); the distance D and the margin's reading: A2, A3."""
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


class QualityWeights(nn.Module):
    """w_i = w_base + clip(h (Q_i - mu) / (sigma + 1e-3), -1, 1) (Eq. 11) with EMA mu/sigma of feature norms (A7-A9)."""

    def __init__(
        self,
        source: str = "both_mean",
        w_base: float = 1.0,
        h: float = 1 / 3,
        momentum: float = 0.01,
        sigma: str = "std",
        clip: bool = True,
    ):
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


@dataclass
class OursHparams(Hparams):
    alpha: float = bounded(0.6, 0, 1)  # weight of the frozen embedding in F_T (Tables 5, 10)
    head_hidden: int = bounded(0, 0, None)  # 0: hidden size = d_T (A1 in methods/README.md)
    head_layers: int = bounded(2, 1, 2)  # 2-layer MLP (recommended) or 1 linear layer
    feat_dist: str = choice(
        "l2sq_norm_sum",
        "l2sq_raw_mean",
        "l2sq_raw_sum",
        "cos",
        help="distance D of the feature-level loss (A3 in methods/README.md; cos for speakers)",
    )
    margin: float = bounded(0.09, 0, None)  # m for the l2 distances: a squared radius r^2 (Table 12)
    margin_deg: float = bounded(30.0, 0, 180)  # angle for feat_dist=cos (Table 6)
    margin_mode: str = choice("angle", "distance", help="cos margin: R2 zero when theta<=deg, or R1 literal m=cos(deg)")
    feature_weight: float = bounded(1.0, 0, None)  # lambda_f (Eq. 1 has none: 1)


class OursBase(Method):
    """Shared by the three variants: a trainable projection head on the frozen teacher embedding."""

    Hparams = OursHparams
    teacher_reads = frozenset({"embedding"})
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


# The three variants, registered in the order their names sort (the order of `--methods all` and of tables).


@dataclass
class ClassifierHparams(OursHparams):
    beta: float = bounded(1.0, 0, None)  # weight of the logit l2 term (1 CIFAR, 0 speaker; Table 11)
    classifier_ce: str = choice(
        "add", "replace", help="shared-classifier CE adds to the task CE, or replaces it (A4 in methods/README.md)"
    )
    with_feature_loss: bool = False  # A5 in methods/README.md: also add the margin feature loss
    shared_classifier: str = choice("raw", "cosine", help="A6 in methods/README.md: raw W F, or cosine classifier with scale 10")


@register("ours_classifier", "proposed: projection head + shared-classifier CE on [F_S; F_T] + beta * logit MSE")
class OursClassifier(OursBase):
    Hparams = ClassifierHparams
    search_space = {"alpha": ("float", 0.0, 1.0), "beta": ("float", 0.0, 3.0)}

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        if hp.shared_classifier == "cosine":
            self.cos_scale = torch.nn.Parameter(torch.tensor(10.0))

    @property
    def ce_weight(self) -> float:
        return 0.0 if self.hp.classifier_ce == "replace" else self.hp.ce_weight

    def _classify(self, s, f: torch.Tensor) -> torch.Tensor:
        if self.hp.shared_classifier == "raw":
            return s.classifier(f.to(s.embedding.dtype))
        return self.cos_scale * l2n(f) @ l2n(s.classifier.weight).t()

    def terms(self, s, t, y):
        f_t = self.head(t.embedding)
        z_s, z_t = self._classify(s, s.embedding), self._classify(s, f_t)
        out = {
            # Eq. 9: CE over the 2B rows [F_S; F_T] with labels [y; y]: each half carries weight 1/2
            "cls_ce_student": Term(F.cross_entropy(z_s, y, reduction="none"), 0.5),
            "cls_ce_teacher": Term(F.cross_entropy(z_t, y, reduction="none"), 0.5),
            "logit_mse": Term(((z_s - z_t) ** 2).mean(1), self.hp.beta),  # Eq. 10's hard logit constraint
        }
        if self.hp.with_feature_loss:
            out["feature"] = Term(self.feature_loss(s, f_t), self.hp.feature_weight)
        return out


@register("ours_feature", "proposed: projection head + soft-constrained (margin) feature-level loss")
class OursFeature(OursBase):
    def terms(self, s, t, y):
        return {"feature": Term(self.feature_loss(s, self.head(t.embedding)), self.hp.feature_weight)}


@dataclass
class QualityHparams(OursHparams):
    w_base: float = bounded(1.0, 0, None)
    quality_h: float = bounded(1 / 3, 0, None, lo_open=True)
    quality_source: str = choice(
        "both_mean", "teacher", "student", "both_min", help="whose norm is Q_i (A7 in methods/README.md)"
    )
    quality_sigma: str = choice("std", "variance", help="sigma_q (A8 in methods/README.md)")
    quality_momentum: float = bounded(0.01, 0, 1)
    quality_clip: bool = True


@register("ours_feature_quality", "proposed: margin feature loss weighted per sample by feature-norm quality")
class OursFeatureQuality(OursBase):
    Hparams = QualityHparams
    search_space = {"alpha": ("float", 0.0, 1.0), "margin": ("float", 0.0, 0.25), "quality_h": ("float", 0.1, 1.0)}

    def __init__(self, dims, hp):
        super().__init__(dims, hp)
        self.quality = QualityWeights(
            hp.quality_source, hp.w_base, hp.quality_h, hp.quality_momentum, hp.quality_sigma, hp.quality_clip
        )

    def terms(self, s, t, y):
        w = self.quality(t.embedding, s.embedding)
        return {"feature": Term(w * self.feature_loss(s, self.head(t.embedding)), self.hp.feature_weight)}
